"""What `pip install imgcls` from a wheel gets: the package data a source checkout has beside the
code. Without the shipped weights, `ml-init-config` would quietly fall back to training from
scratch on a machine that installed from PyPI (#32), so the wheel is built and opened here."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_config_template_and_the_pretrained_weights(tmp_path):
    # from a copy without build/ and *.egg-info/: their file lists would fill in what
    # pyproject.toml's package-data leaves out, and PyPI's build has neither
    src = tmp_path / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'build', '*.egg-info', '_docs', '_proc', '__pycache__', '.nbsrc'))
    res = subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(src), '--no-deps',
                          '--no-build-isolation', '-w', str(tmp_path / 'dist'), '-q'],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    wheel, = (tmp_path / 'dist').glob('imgcls-*.whl')
    with zipfile.ZipFile(wheel) as z: names = set(z.namelist())
    for f in ('imgcls/config_template.yaml', 'imgcls/weights/small_resnet_formula64.pt'):
        assert f in names, (f, sorted(n for n in names if not n.endswith('.py')))
        with zipfile.ZipFile(wheel) as z: assert z.read(f) == (ROOT / f).read_bytes(), f
