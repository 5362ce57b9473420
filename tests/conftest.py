"""Fixtures: small digit datasets (with and without splits) built once and copied per test."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import fresh_copy

# Every test sees a machine without downloaded weights, whatever this one has cached (the commands
# run as subprocesses inherit it): ml-init-config would otherwise choose fine-tuning, and
# `pretrained: true` find files. Tests that need weights make their own.
os.environ['TORCH_HOME'] = os.environ['HF_HUB_CACHE'] = str(
    Path(tempfile.gettempdir()) / 'imgcls-tests-no-weights')

# pytest-xdist runs several test files at once, and most tests start commands that train with torch,
# which takes a thread per core unless told otherwise: two workers on two cores then run four
# busy threads, and torch's threads wait for each other. Two training runs side by side on two
# cores took 830 s with two threads each against 204 s with one each (204 s is also less than
# the two run one after the other). So each worker, and every command it starts, gets its share
# of the cores; a thread count set by whoever runs the tests is kept.
_WORKERS = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
if _WORKERS > 1:
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // _WORKERS)))

TINY_PER_CLASS = 10   # 100 images: enough for 5 folds plus a test set, quick to split


@pytest.fixture(scope='session')
def _tiny_pristine(tmp_path_factory) -> Path:
    "data/tiny/raw with 10 digits a class (16x16 PNGs), no splits."
    from imgcls.images import make_sample_dataset
    root = tmp_path_factory.mktemp('tiny_pristine')
    make_sample_dataset(root / 'data' / 'tiny', size=16, n_per_class=TINY_PER_CLASS)
    return root / 'data' / 'tiny'


@pytest.fixture(scope='session')
def _tiny_split_pristine(tmp_path_factory, _tiny_pristine) -> Path:
    "The tiny dataset with 2-fold splits made by `make_splits` (seed 0)."
    from imgcls.splits import make_splits
    root = tmp_path_factory.mktemp('tiny_split_pristine')
    d = root / 'data' / 'tiny'
    shutil.copytree(_tiny_pristine, d)
    make_splits(d / 'raw', folds=2, seed=0)
    return d


@pytest.fixture
def tiny(tmp_path, _tiny_pristine) -> Path:
    "A fresh copy of the tiny dataset at `tmp_path/data/tiny` (run commands with cwd=tmp_path)."
    return fresh_copy(_tiny_pristine, tmp_path / 'data' / 'tiny')


@pytest.fixture
def tiny_split(tmp_path, _tiny_split_pristine) -> Path:
    "A fresh copy of the tiny dataset with its 2-fold splits, at `tmp_path/data/tiny`."
    return fresh_copy(_tiny_split_pristine, tmp_path / 'data' / 'tiny')


# ---------------------------------------------------------------- the fault suite's figure
#
# Tests marked `@pytest.mark.fault` feed one FAULTS.md line to imgcls. Each one run counts as a
# fault tried; one that passes counts as handled as promised (a failure, an error or an expected
# failure of a known bug does not). Fault tests report, through the `lost_bytes` fixture, the bytes
# of files written before the fault that changed or vanished. At the end of the session one line
# gives the figure: `fault suite: N faults tried, N handled as promised, 0 bytes lost`.
# The counts travel in each test's `user_properties`, so they also add up under pytest-xdist.

_FAULT_PROP, _LOST_PROP = 'imgcls_fault', 'imgcls_lost_bytes'


class LostBytes:
    """Watch files written before a fault; `check` says how many of their bytes changed or vanished
    (the size before, of each file whose content changed or that is gone) and records the number
    for the session's figure. Files added meanwhile are not losses."""

    def __init__(self, node):
        self._node, self._watched = node, {}

    def watch(self, *paths) -> dict:
        "Remember the files under each of `paths`; returns the first one's `tree_hash`."
        from helpers import tree_hash
        first = None
        for p in paths:
            p = Path(p)
            files = [p] if p.is_file() else sorted(f for f in p.rglob('*') if f.is_file())
            sizes = {('.' if f == p else f.relative_to(p).as_posix()): f.stat().st_size
                     for f in files}
            h = tree_hash(p)
            assert set(h) == set(sizes), f'{p} changed while it was being read'
            self._watched[p] = (h, sizes)
            if first is None: first = h
        return first

    def watch_snapshot(self, path, hashes: dict, sizes: dict):
        "Watch `path` as another process saw it before a fault: its `tree_hash` and file sizes."
        assert set(hashes) == set(sizes), 'a snapshot needs the hash and the size of each file'
        self._watched[Path(path)] = (dict(hashes), dict(sizes))

    def check(self, *paths) -> int:
        "Bytes lost under `paths` (default: everything watched) since `watch`; recorded, returned."
        from helpers import tree_hash
        paths = [Path(p) for p in paths] or list(self._watched)
        lost = 0
        for p in paths:
            before, sizes = self._watched.pop(p)
            after = tree_hash(p)
            lost += sum(sizes[f] for f, h in before.items() if after.get(f) != h)
        self._node.user_properties.append((_LOST_PROP, lost))
        return lost

    @property
    def pending(self) -> list:
        return list(self._watched)


@pytest.fixture
def lost_bytes(request) -> LostBytes:
    "Watch what a fault test wrote before the fault: `lost_bytes.watch(path)`, then `check()`."
    lb = LostBytes(request.node)
    yield lb
    assert not lb.pending, f'lost_bytes: watched but never checked: {lb.pending}'


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker('fault') is not None:
            item.user_properties.append((_FAULT_PROP, True))


class _FaultFigure:
    def __init__(self):
        self.tests = {}   # nodeid -> {'tried': bool, 'failed': bool, 'passed': bool}
        self.lost = 0

    def pytest_runtest_logreport(self, report):
        props = dict(report.user_properties)
        if not props.get(_FAULT_PROP): return
        t = self.tests.setdefault(report.nodeid, dict(tried=False, failed=False, passed=False))
        xfailed = hasattr(report, 'wasxfail')
        skipped = report.skipped and not xfailed          # a skip is not a fault tried
        if (report.when == 'call' and not skipped) or report.failed or xfailed:
            t['tried'] = True
        if report.failed or (report.skipped and xfailed): t['failed'] = True   # a known bug
        if report.when == 'call' and report.passed: t['passed'] = True
        if report.when == 'teardown':
            self.lost += sum(v for k, v in report.user_properties if k == _LOST_PROP)

    def line(self) -> str:
        tried = sum(t['tried'] for t in self.tests.values())
        handled = sum(t['tried'] and t['passed'] and not t['failed'] for t in self.tests.values())
        return (f'fault suite: {tried} faults tried, {handled} handled as promised, '
                f'{self.lost} bytes lost')

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.line())


def pytest_configure(config):
    if not hasattr(config, 'workerinput'):     # the controller, or a run without xdist
        config.pluginmanager.register(_FaultFigure(), 'imgcls-fault-figure')


@pytest.fixture(scope='session')
def _tiny_run_pristine(tmp_path_factory, _tiny_split_pristine) -> Path:
    "A project: data/tiny (2 folds), configs/tiny_config.yaml, and runs/tiny_fold_0 (1 epoch)."
    from helpers import assert_ok, run, tiny_config
    root = tmp_path_factory.mktemp('tiny_run')
    shutil.copytree(_tiny_split_pristine, root / 'data' / 'tiny')
    cfg = tiny_config(root, training__num_epochs=1)
    assert_ok(run(['ml-train', '--config', cfg.relative_to(root)], root))
    assert (root / 'runs' / 'tiny_fold_0' / 'weights' / 'best.pt').is_file()
    return root


@pytest.fixture
def tiny_run(tmp_path, _tiny_run_pristine) -> Path:
    "A fresh copy of the `_tiny_run_pristine` project (run commands with cwd=tiny_run)."
    return fresh_copy(_tiny_run_pristine, tmp_path / 'project')


# ---------------------------------------------------------------- trained projects, shared
#
# One trained project serves every test file that needs "a run on a small dataset" (inference,
# visualisation, analysis): trained once a session, copied fresh for each test.

MY_CONFIG = 'configs/my_dataset_config.yaml'


@pytest.fixture(scope='session')
def _my_project_pristine(tmp_path_factory) -> Path:
    """A project: data/my_dataset (10 digits a class, 16x16, 2 folds), its config in
    configs/ (tiny_net, 2 epochs, flips and random resized crops) and a run in runs/my_run."""
    import yaml
    from helpers import assert_ok, run
    from imgcls.images import make_sample_dataset
    from imgcls.splits import make_splits
    root = tmp_path_factory.mktemp('my_project')
    raw = make_sample_dataset(root / 'data' / 'my_dataset', size=16, n_per_class=10)
    make_splits(raw, folds=2, seed=0)
    cfg = {'data': {'data_dir': 'data/my_dataset', 'image_size': 16, 'resize_size': 16,
                    'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.5, 'random_resized_crop': True},
           'model': {'type': 'custom', 'custom_architecture': 'tiny_net'},
           'optimizer': {'lr': 0.05},
           'training': {'num_epochs': 2, 'batch_size': 16, 'device': 'cpu'}}
    (root / 'configs').mkdir()
    (root / MY_CONFIG).write_text(yaml.safe_dump(cfg))
    assert_ok(run(['ml-train', '--config', MY_CONFIG], root))
    [rd] = (root / 'runs').iterdir()                   # runs/my-dataset_fold_0
    rd.rename(root / 'runs' / 'my_run')
    return root


@pytest.fixture
def my_project(tmp_path, _my_project_pristine) -> Path:
    "A fresh copy of the trained project (run commands with cwd=my_project)."
    return fresh_copy(_my_project_pristine, tmp_path / 'project')


@pytest.fixture(scope='session')
def _my_cv_pristine(tmp_path_factory, _my_project_pristine) -> Path:
    "The same data and config with `ml-train --fold all` run: a CV folder of 2 fold models."
    from helpers import assert_ok, run
    root = tmp_path_factory.mktemp('my_cv')
    for d in ('data', 'configs'): shutil.copytree(_my_project_pristine / d, root / d)
    assert_ok(run(['ml-train', '--config', MY_CONFIG, '--fold', 'all'], root))
    return root


@pytest.fixture
def my_cv_project(tmp_path, _my_cv_pristine) -> Path:
    "A fresh copy of the cross-validation project."
    return fresh_copy(_my_cv_pristine, tmp_path / 'cv_project')
