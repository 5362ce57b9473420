"""FAULTS.md "Checkpoints", through the commands that read one: `ml-train --resume`, `ml-inference`
and `ml-export`. Truncated, empty, foreign and code-carrying files are one clear error with the
path (the code never runs: loading is `weights_only=True`, with no fallback); weights of another
architecture or class count list the keys that do not fit; nothing already written changes."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import assert_clean_error, run, run_py, show

import imgcls
from imgcls.checkpoint import load_checkpoint
from imgcls.config import load_config
from imgcls.models import get_model

pytestmark = pytest.mark.fault

BEST, LAST = 'runs/tiny_fold_0/weights/best.pt', 'runs/tiny_fold_0/weights/last.pt'
CONFIG = 'configs/tiny_config.yaml'


class _RunsCode:
    "Unpickling this calls open(path, 'w'): a file appears if a loader ever runs pickled code."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (open, (self.path, 'w'))


def damaged_checkpoints(project: Path) -> dict:
    "{kind: (relative path, words the error must hold)} of broken files beside a good run."
    good = (project / BEST).read_bytes()
    bad = project / 'bad'
    bad.mkdir()
    (bad / 'truncated.pt').write_bytes(good[:2000])
    (bad / 'empty.pt').write_bytes(b'')
    (bad / 'text.pt').write_text('this is not a checkpoint\n')
    (bad / 'zip.pt').write_bytes(b'PK\x03\x04 not really a zip')
    torch.save({'weights': torch.zeros(2)}, bad / 'foreign.pt')
    torch.save({**load_checkpoint(project / BEST), 'extra': _RunsCode(project / 'pwned')},
               bad / 'runs_code.pt')
    out = {k: (f'bad/{k}.pt', ['corrupt checkpoint'])
           for k in ('truncated', 'empty', 'text', 'zip', 'runs_code')}
    out['foreign'] = ('bad/foreign.pt', ['not an imgcls checkpoint'])
    return out


COMMANDS = {
    'ml-train --resume': ('imgcls.cli', 'ml_train', ['--config', CONFIG, '--resume']),
    'ml-inference': ('imgcls.cli', 'ml_inference', ['--checkpoint_path']),
    'ml-export': ('imgcls.cli', 'ml_export', ['--validate', '--checkpoint']),
}

# Many calls of one command's entry point (what its console script runs) in one process: torch
# is imported once. Prints [exit code, stdout, stderr] for each argument list.
IN_PROCESS = '''
import contextlib, importlib, io, json, sys
module, name, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
main = getattr(importlib.import_module(module), name)
out = []
for args in cases:
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        code = main(args)
    out.append([code, std.getvalue(), err.getvalue()])
print(json.dumps(out))
'''


def run_cases(project, command: str, cases: list) -> list:
    module, name, _ = COMMANDS[command]
    res = run_py(IN_PROCESS, project, module, name, json.dumps(cases))
    assert res.returncode == 0, show(res)
    return json.loads(res.stdout.splitlines()[-1])


def one_clear_line(code, err, *needles) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert code == 1 and len(lines) == 1 and 'Traceback' not in err, (code, err)
    for n in needles: assert n in lines[0], (n, lines[0])
    return lines[0]



def refuses_each(project, lost_bytes, command, bad: dict, after_path: str = ''):
    "`command` on each bad checkpoint (`{name: (path, needles)}`): one clear line, with the path."
    lost_bytes.watch(project / 'runs', project / 'bad')
    flags = COMMANDS[command][2]
    results = run_cases(project, command, [[*flags, path] for path, _ in bad.values()])
    for (path, needles), (code, _, err) in zip(bad.values(), results):
        one_clear_line(code, err, f'{path}{after_path}', *needles)

@pytest.mark.parametrize('command', list(COMMANDS))
def test_damaged_checkpoints_are_one_clear_error_with_the_path(tiny_run, lost_bytes, command):
    refuses_each(tiny_run, lost_bytes, command, damaged_checkpoints(tiny_run), ': ')
    assert not (tiny_run / 'pwned').exists(), 'a checkpoint ran code while loading'
    assert not list((tiny_run / 'bad').glob('*.onnx'))
    assert not (tiny_run / 'runs' / 'tiny_fold_0_2').exists()
    assert lost_bytes.check() == 0


def test_code_in_a_checkpoint_never_runs_through_the_real_commands(tiny_run, lost_bytes):
    bad = damaged_checkpoints(tiny_run)
    path = bad['runs_code'][0]
    lost_bytes.watch(tiny_run / 'runs')
    for args in (['ml-train', '--config', CONFIG, '--resume', path],
                 ['ml-inference', '--checkpoint_path', path, '--images', 'data/tiny/raw/1'],
                 ['ml-export', '--checkpoint', path]):
        # the whole warning, not cut before it: loading it fully could run code
        line = assert_clean_error(run(args, tiny_run), f'{path}: corrupt checkpoint, not loaded')
        assert 'GLOBAL' in line and 'could run code' in line and 'trust' in line, line
        assert not (tiny_run / 'pwned').exists(), args
    assert lost_bytes.check() == 0


def _package_calls(attr: str) -> list:
    "Every call `<something>.{attr}(...)` in the imgcls package's modules: (file, line, node)."
    out = []
    for f in sorted(Path(imgcls.__file__).parent.glob('*.py')):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == attr):
                out.append((f.name, node.lineno, node))
    return out


def test_every_load_in_the_package_is_safe_with_no_fallback():
    def kw(node, name):
        return next((k.value for k in node.keywords if k.arg == name), None)
    loads = [c for c in _package_calls('load')
             if isinstance(c[2].func.value, ast.Name) and c[2].func.value.id == 'torch']
    assert loads, 'no torch.load found: the check looks in the wrong place'
    for f, line, node in loads:
        wo = kw(node, 'weights_only')
        assert isinstance(wo, ast.Constant) and wo.value is True, f'{f}:{line}: torch.load'
    for f, line, node in _package_calls('load'):
        if isinstance(node.func.value, ast.Name) and node.func.value.id == 'yaml':
            loader = kw(node, 'Loader')
            assert isinstance(loader, ast.Name) and loader.id == '_Loader', f'{f}:{line}'
    from imgcls.config import _Loader
    assert issubclass(_Loader, yaml.SafeLoader)
    for attr in ('unsafe_load', 'full_load', 'load_all', 'unsafe_load_all', 'loads'):
        for f, line, node in _package_calls(attr):
            assert getattr(node.func.value, 'id', None) not in ('yaml', 'pickle'), f'{f}:{line}'
    for f in Path(imgcls.__file__).parent.glob('*.py'):
        text = f.read_text()
        assert 'weights_only=False' not in text.replace(' ', ''), f
        assert 'LOAD_TRUNCATED_IMAGES=True' not in text.replace(' ', ''), f


# ------------------------------------------------------------------ weights that do not fit

def misfit_checkpoints(project: Path) -> dict:
    "best.pt with tiny_net's weights (its config says simple_cnn), and with 3 class names, not 10."
    ck = load_checkpoint(project / BEST)
    tiny = get_model(load_config(None, {'model.type': 'custom',
                                        'model.custom_architecture': 'tiny_net'}), 10)
    (project / 'bad').mkdir(exist_ok=True)
    torch.save({**ck, 'model': tiny.state_dict()}, project / 'bad' / 'other_arch.pt')
    torch.save({**ck, 'classes': ['a', 'b', 'c']}, project / 'bad' / 'other_classes.pt')
    own = list(ck['model'])
    missing = [k for k in own if k not in tiny.state_dict()]
    unexpected = [k for k in tiny.state_dict() if k not in ck['model']]
    head = next(k for k in reversed(own) if k.endswith('weight'))
    n_in = tuple(ck['model'][head].shape)[1:]
    return {'other_arch': ('bad/other_arch.pt',
                           ['does not fit the model', f'missing keys: {missing[0]}',
                            f'unexpected keys: {unexpected[0]}']),
            'other_classes': ('bad/other_classes.pt',
                              ['does not fit the model', 'shapes differ',
                               f'{head}: checkpoint {(10, *n_in)} vs model {(3, *n_in)}'])}


@pytest.mark.parametrize('command', ['ml-inference', 'ml-export'])
def test_weights_of_another_model_list_the_keys(tiny_run, lost_bytes, command):
    refuses_each(tiny_run, lost_bytes, command, misfit_checkpoints(tiny_run))
    assert not list((tiny_run / 'bad').glob('*.onnx'))
    assert lost_bytes.check() == 0


def test_resume_into_another_architecture_lists_the_keys(tiny_run, lost_bytes):
    lost_bytes.watch(tiny_run / 'runs')
    res = run(['ml-train', '--config', CONFIG, '--resume', LAST, '--force_resume',
               '--set', 'model.custom_architecture=tiny_net', '--num_epochs', '2'], tiny_run)
    assert_clean_error(res, LAST, 'does not fit the model', 'missing keys: ', 'unexpected keys: ')
    assert lost_bytes.check() == 0
    assert sorted(p.name for p in (tiny_run / 'runs').iterdir()) == ['tiny_fold_0']


# ------------------------------------------------------------------ DDP and Opacus prefixes

def test_ddp_and_opacus_prefixes_are_normalised_by_inference(tiny_run):
    ck = load_checkpoint(tiny_run / BEST)
    for prefix in ('module.', '_module.', 'module._module.'):
        torch.save({**ck, 'model': {prefix + k: v for k, v in ck['model'].items()}},
                   tiny_run / f'{prefix.strip(".").replace(".", "_")}.pt')
    names = ['runs/tiny_fold_0/weights/best.pt', 'module.pt', '_module.pt', 'module__module.pt']
    results = run_cases(tiny_run, 'ml-inference', [
        ['--checkpoint_path', n, '--images', 'data/tiny/raw/3', '--top_k', '10'] for n in names])
    for n, (code, _, err) in zip(names, results):
        assert code == 0 and 'Traceback' not in err, (n, err)
    assert len({out for _, out, _ in results}) == 1    # the same predictions, to the digit
