"""Every console command's `--help` answers at once: nothing heavy (torch, torchvision,
scikit-learn, ONNX, ONNX Runtime, Optuna, matplotlib, TensorBoard) is imported before the flags are
parsed. Each installed console script runs with `--help` in a fresh interpreter, as the shell runs
it, and the check is what it imported (`sys.modules` once argparse has printed the help and
exited), never a timing."""
from __future__ import annotations

import json
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from helpers import command, run_py, show

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['scripts']
HEAVY = ['torch', 'torchvision', 'sklearn', 'onnx', 'onnxruntime', 'optuna', 'matplotlib',
         'tensorboard']
MARK = '@@heavy imports: '

# Runs console script argv[1] as its own process would (`__main__`, argv [script, '--help']), then
# prints which of the packages in argv[2] it imported (a submodule counts as its package) and
# exits with the script's status.
WRAPPER = '''
import json, runpy, sys
script, heavy = sys.argv[1], json.loads(sys.argv[2])
sys.argv = [script, '--help']
try:
    runpy.run_path(script, run_name='__main__')
    code = 0
except SystemExit as e:
    code = e.code
top = {name.partition('.')[0] for name in list(sys.modules)}
sys.stdout.flush()
print(MARK + json.dumps(sorted(top & set(heavy))), flush=True)
sys.exit(code)
'''.replace('MARK', repr(MARK))


def help_run(script, cwd) -> tuple[str, list[str], object]:
    "Run console script `script` with --help in `cwd`: (its output, heavy packages loaded, result)."
    res = run_py(WRAPPER, cwd, script, json.dumps(HEAVY), timeout=120)
    assert res.returncode == 0, show(res)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)
    printed, mark, loaded = res.stdout.rpartition(MARK)
    assert mark, show(res)
    return printed, json.loads(loaded), res


def test_eleven_commands_and_the_install_matches_pyproject():
    "A stale install (pyproject.toml changed since `pip install -e .`) would test old commands."
    assert len(SCRIPTS) == 11 and all(k.startswith('ml-') for k in SCRIPTS), SCRIPTS
    installed = {ep.name: ep.value for ep in entry_points(group='console_scripts')
                 if ep.name in SCRIPTS}
    assert installed == SCRIPTS, 'installed console scripts differ: run `pip install -e .`'


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_help_imports_nothing_heavy(name, tmp_path):
    printed, loaded, res = help_run(command(name), tmp_path)
    assert printed.startswith(f'usage: {name} '), show(res)
    assert '-h, --help' in printed and '--debug' in printed, show(res)
    assert loaded == [], f'`{name} --help` imported {loaded} before parsing its flags'


def test_the_check_catches_a_command_that_imports_torch(tmp_path):
    """Not vacuous: `ml-inference` as it was before issue #17 (its entry point in
    imgcls.inference, which imports torch at the top) prints its help but is caught."""
    script = tmp_path / 'ml-inference'
    script.write_text('import sys\nimport imgcls.inference\nfrom imgcls.cli import ml_inference\n'
                      "if __name__ == '__main__':\n    sys.exit(ml_inference())\n")
    printed, loaded, res = help_run(script, tmp_path)
    assert printed.startswith('usage: ml-inference '), show(res)
    assert 'torch' in loaded, loaded
