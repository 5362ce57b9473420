"""README's shell quickstart, run as written: the fenced bash blocks under "Quickstart from the
shell" are pasted into bash in an empty folder (with this environment's commands on PATH), each
in its own folder, and must train the model README describes. (The Python quickstart is
`nbs/index.ipynb` itself, which nbdev-test runs.)"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import env, show

ROOT = Path(__file__).resolve().parents[1]


def _quickstart_blocks() -> list[str]:
    readme = (ROOT / 'README.md').read_text()
    section = readme.split('## Quickstart from the shell', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```bash\n(.*?)\n```', section, re.S)


def test_the_quickstart_has_the_one_command_and_the_steps():
    blocks = _quickstart_blocks()
    assert [b.split()[0] for b in blocks] == ['ml-train', 'ml-sample-data'], blocks
    assert 'ml-train --data digits' in blocks[0]


@pytest.mark.parametrize('which', [0, 1], ids=['one command', 'step by step'])
def test_readme_quickstart_runs_as_written(tmp_path, which):
    block = _quickstart_blocks()[which]
    res = subprocess.run(['bash', '-euo', 'pipefail', '-c', block], cwd=tmp_path,
                         capture_output=True, text=True, env=env(), timeout=1200)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, show(res)
    [summary] = (tmp_path / 'runs').glob('digits*/summary.json')
    s = json.loads(summary.read_text())
    assert s['run_dir'] == 'runs/digits_fold_0', s['run_dir']   # the folder README names
    assert s['test']['n'] == 360 and s['test']['acc'] >= 0.98, s['test']  # README: about 99.6%
    assert (tmp_path / 'configs' / 'digits_config.yaml').is_file()
