"""The training-speed benchmark of the README runs and prints its table (a small run: this checks
that the command works, not how fast anything is; timings are never asserted). What it measures
depends on the CPU: mixed precision only where bfloat16 is native, so the test reads the
capability and asserts the row or the line that says why it was left out."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import env, show

ROOT = Path(__file__).resolve().parent.parent
ROWS = ('limit', 'torchvision', 'imgcls standard', 'imgcls streaming')
MP = 'imgcls mixed_precision'


def test_train_speed_benchmark_prints_every_row(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'train_speed.py'),
                          '--data', str(tmp_path), '--images', '48', '--size', '32',
                          '--batch', '8', '--epochs', '2'],
                         capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, show(res)
    for name in ROWS:
        m = re.search(rf'^{re.escape(name)}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+(\d+)$',
                      res.stdout, re.M)
        assert m, f'no table row for {name}\n{show(res)}'
        assert all(float(v) > 0 for v in m.groups()), m.group(0)
    assert re.search(r'^limit\s+\S+\s+\S+\s+1\.00\s+', res.stdout, re.M), res.stdout
    from imgcls.training import cpu_supports_bf16
    if cpu_supports_bf16():  # native bf16: measured and compared with standard
        assert re.search(rf'^{MP}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+x\s+\d+$', res.stdout, re.M)
        assert 'mixed precision vs standard (steady): ' in res.stdout
    else:  # emulated: left out, with the reason, and nothing compared
        assert re.search(rf'^{MP}\s+left out: this CPU .*no native bfloat16', res.stdout, re.M), \
            res.stdout
        assert 'mixed precision vs standard' not in res.stdout
    # the generated dataset is real JPEGs with a 1-fold split
    data = tmp_path / 'bench_48'
    assert len(list((data / 'raw').rglob('*.jpg'))) == 48
    assert (data / 'splits' / 'fold_0_train.txt').is_file()
