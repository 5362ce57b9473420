#!/usr/bin/env bash
# Run a Python command on an emulated x86 CPU with AVX2 only (no AVX512, no VNNI, no native
# bfloat16), whatever CPU this is, e.g. the quick notebook pass or one notebook:
#   tools/avx2_emulated.sh nbdev-test --n-workers 2 --cell-timeout 0 --file-re '^12a_export\.ipynb$'
#   tools/avx2_emulated.sh python -c 'import imgcls.core as c; print(c.describe_cpu())'
# Needs QEMU 7.2 or newer in user mode (Debian 12: apt-get install qemu-user); about 20x slower.
# Commands it starts as new programs (subprocesses) run on the real CPU, not the emulated one.
set -euo pipefail
[ $# -gt 0 ] || { sed -n '2,8p' "$0"; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
py=$(command -v python)
case "$1" in python|python3) shift; set -- "$py" "$@" ;; *) set -- "$py" "$(command -v "$1")" "${@:2}" ;; esac
# numpy's own AVX2+ kernels crash QEMU 7.2 (its sort); torch and ONNX Runtime keep their AVX2 ones
export NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR"
export PYTHONPATH="$here/avx2_site${PYTHONPATH:+:$PYTHONPATH}"
exec qemu-x86_64 -cpu Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid "$@"
