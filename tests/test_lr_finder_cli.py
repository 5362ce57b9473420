"""`ml-lr-finder` end to end, as a user runs it: every SPEC.md line as written, the files of
`runs/lr_finder_{timestamp}/` and what they hold, and bad input refused with one clear line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import (assert_clean_error, assert_ok, assert_usage_error, fresh_copy, run, run_py,
                     tree_hash)

CONFIG = 'configs/my_dataset_config.yaml'


@pytest.fixture(scope='session')
def _project_pristine(tmp_path_factory) -> Path:
    "A project folder with data/my_dataset (10 digits a class, 16x16, 5 folds) and its config."
    from imgcls.images import make_sample_dataset
    from imgcls.splits import make_splits
    root = tmp_path_factory.mktemp('lr_project')
    raw = make_sample_dataset(root / 'data' / 'my_dataset', size=16, n_per_class=10)
    make_splits(raw, folds=5, seed=0)
    cfg = {'data': {'data_dir': 'data/my_dataset', 'image_size': 16, 'resize_size': 16,
                    'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0},
           'model': {'type': 'custom', 'custom_architecture': 'tiny_net'},
           'training': {'batch_size': 8, 'device': 'cpu'}}
    (root / 'configs').mkdir()
    (root / CONFIG).write_text(yaml.safe_dump(cfg))
    return root


@pytest.fixture
def project(tmp_path, _project_pristine) -> Path:
    "A fresh copy of the project (run commands with cwd=project)."
    return fresh_copy(_project_pristine, tmp_path / 'project')


def finder_runs(root: Path) -> list[Path]:
    return sorted((root / 'runs').glob('lr_finder_*')) if (root / 'runs').exists() else []


def check_run(rd: Path, stdout: str, **settings) -> dict:
    "The files of one finder run and their contents; returns results.json."
    for f in ('lr_plot.png', 'results.json', 'lr_finder.log'): assert (rd / f).is_file(), f
    assert (rd / 'lr_plot.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    res = json.loads((rd / 'results.json').read_text())
    s = res['settings']
    for k, v in settings.items(): assert s[k] == v, (k, s[k], v)
    lrs, losses = res['lrs'], res['losses']
    assert 2 <= len(lrs) == len(losses) == len(res['raw_losses']) <= s['num_iter']
    assert all(math.isfinite(x) for x in losses + res['raw_losses'])
    # an exponential sweep from start_lr towards end_lr
    assert math.isclose(lrs[0], s['start_lr'], rel_tol=1e-12)
    ratio = (s['end_lr'] / s['start_lr']) ** (1 / (s['num_iter'] - 1))
    for a, b in zip(lrs, lrs[1:]): assert math.isclose(b / a, ratio, rel_tol=1e-9)
    if res['stop_reason'] == 'completed':
        assert len(lrs) == s['num_iter'] and math.isclose(lrs[-1], s['end_lr'], rel_tol=1e-9)
    elif res['stop_reason'] == 'diverged':
        assert losses[-1] > s['diverge_threshold'] * min(losses)
        assert all(x <= s['diverge_threshold'] * min(losses[:i + 1])
                   for i, x in enumerate(losses[:-1]))
    # the bias-corrected moving average of the raw losses
    avg, beta = 0.0, s['beta']
    for i, (raw, sm) in enumerate(zip(res['raw_losses'], losses)):
        avg = beta * avg + (1 - beta) * raw
        assert math.isclose(sm, avg / (1 - beta ** (i + 1)), rel_tol=1e-9, abs_tol=1e-12)
    # a finite suggestion inside the swept range, printed and logged
    sug = res['suggestion']
    assert isinstance(sug, float) and math.isfinite(sug), sug
    assert s['start_lr'] <= lrs[0] <= sug <= lrs[-1] <= s['end_lr']
    assert res['suggestion_method'] in ('steepest', 'valley', 'minimum')
    assert res['suggestions'][res['suggestion_method']] == sug
    assert set(res['suggestions']) == {'steepest', 'minimum', 'valley'}
    assert f'suggested learning rate: {sug:.2e}' in stdout
    assert f'results: runs/{rd.name} ' in stdout
    assert res['model']['architecture'] == 'tiny_net' and res['model']['num_classes'] == 10
    assert res['model']['classes'] == [str(i) for i in range(10)]
    assert res['run']['config'] == CONFIG
    log = (rd / 'lr_finder.log').read_text()
    assert 'sweeping lr from' in log and 'suggested lr' in log
    return res


def test_every_spec_line(project):
    before = tree_hash(project / 'data') | tree_hash(project / 'configs')
    lines = [
        ([], dict(start_lr=1e-7, end_lr=10.0, num_iter=100, diverge_threshold=5.0, beta=0.98)),
        (['--start_lr', '1e-7', '--end_lr', '1', '--num_iter', '200'],
         dict(start_lr=1e-7, end_lr=1.0, num_iter=200)),
        (['--diverge_threshold', '2.0'], dict(diverge_threshold=2.0)),
        (['--fold', '2', '--beta', '0.95'], dict(beta=0.95)),
    ]
    seen = []
    for args, settings in lines:
        res = run(['ml-lr-finder', '--config', CONFIG, *args], project)
        assert_ok(res)
        new = [p for p in finder_runs(project) if p not in seen]
        assert len(new) == 1, new                  # one new folder a run, never a shared one
        seen += new
        out = check_run(new[0], res.stdout, **settings)
        assert out['data']['fold'] == (2 if '--fold' in args else 0)
        assert out['data']['train_images'] > 0
    assert tree_hash(project / 'data') | tree_hash(project / 'configs') == before


def test_dashed_flags_and_overrides(project):
    res = run(['ml-lr-finder', '--config', CONFIG, '--start-lr', '1e-5', '--end-lr', '10',
               '--num-iter', '30', '--diverge-threshold', '3', '--batch-size', '16',
               '--set', 'optimizer.type=adam', '--optimizer.weight_decay', '0'], project)
    assert_ok(res)
    [rd] = finder_runs(project)
    out = check_run(rd, res.stdout, start_lr=1e-5, end_lr=10.0, num_iter=30,
                    diverge_threshold=3.0)
    assert out['data']['batch_size'] == 16
    assert out['optimizer']['type'] == 'adam' and out['optimizer']['weight_decay'] == 0
    saved = yaml.safe_load((rd / 'config.yaml').read_text())
    assert saved['training']['batch_size'] == 16 and saved['optimizer']['type'] == 'adam'


IN_PROCESS = """
import contextlib, io, json, sys
from imgcls.cli import ml_lr_finder
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = ml_lr_finder(args)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


@pytest.mark.fault
def test_bad_input_is_one_clear_line_and_writes_nothing(project):
    # as a user runs them: separate processes
    cases = [
        (['--end_lr', '1e-9'], ['end_lr (1e-09) must be greater than start_lr (1e-07)']),
        (['--fold', '7'], ['fold 7 does not exist']),
    ]
    for args, needles in cases:
        assert_clean_error(run(['ml-lr-finder', '--config', CONFIG, *args], project), *needles)
    assert_clean_error(run(['ml-lr-finder', '--config', 'configs/nope.yaml'], project),
                       'configs/nope.yaml', 'no such config file')
    assert_usage_error(run(['ml-lr-finder', '--config', CONFIG, '--num_iter', 'many'], project),
                       '--num_iter', "invalid int value: 'many'")
    # the same entry point, many cases in one process (each start of torch takes seconds)
    cases = [
        (['--start_lr', '0'], ['start_lr must be a number > 0']),
        (['--num_iter', '1'], ['num_iter must be an integer >= 2']),
        (['--beta', '1'], ['beta must be >= 0 and < 1']),
        (['--diverge_threshold', '0.5'], ['diverge_threshold must be a number > 1']),
        (['--batch_size', '0'], ['training.batch_size must be >= 1, got 0']),
        (['--set', 'training.batchsize=3'],
         ["unknown key 'training.batchsize'", "did you mean 'training.batch_size'"]),
        (['--device', 'gpu0'], ["training.device 'gpu0' is not a device"]),
    ]
    res = run_py(IN_PROCESS, project, json.dumps([['--config', CONFIG, *a] for a, _ in cases]))
    assert_ok(res)
    for (args, needles), (code, err) in zip(cases, json.loads(res.stdout.splitlines()[-1])):
        lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
        assert code == 1 and len(lines) == 1 and 'Traceback' not in err, (args, code, err)
        for n in needles: assert n in lines[0], (args, n, lines[0])
    assert not (project / 'runs').exists() or not any((project / 'runs').iterdir())
