"""Loaded by tools/avx2_emulated.sh: under qemu-user, /proc/cpuinfo is the host's, so imgcls reads
the emulated CPU's features from CPUID (torch's own checks), as torch and ONNX Runtime do."""
try:
    import imgcls.core as _core
    _core._cpuinfo_flags = lambda: None
    _core.cpu_features.cache_clear()
except ImportError:
    pass
