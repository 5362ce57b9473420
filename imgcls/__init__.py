__version__ = "0.0.1"

# `import imgcls` stays cheap (the console commands start fast); `from imgcls import *` and
# `imgcls.NAME` import the modules on first use and give their public API (each module's __all__).
_MODULES = ['core', 'config', 'images', 'curation', 'labels', 'splits', 'data', 'checkpoint',
            'models', 'evaluation', 'training', 'multilabel', 'run_files', 'trainer', 'distributed', 'privacy', 'crossval', 'runs',
            'autoconfig', 'lr_finder', 'inference', 'onnx_runtime', 'export', 'export_checks', 'serve',
            'search_spaces', 'search', 'visualise', 'analysis']


def _public() -> dict:
    import importlib
    names = {}
    for m in _MODULES:
        mod = importlib.import_module(f'{__name__}.{m}')
        names.update({n: getattr(mod, n) for n in mod.__all__})
    return names


def __getattr__(name):
    if name.startswith('__') and name != '__all__': raise AttributeError(name)
    pub = _public()
    globals().update(pub)
    globals()['__all__'] = list(pub)
    if name == '__all__': return globals()['__all__']
    if name in pub: return pub[name]
    raise AttributeError(f"module 'imgcls' has no attribute '{name}'")
