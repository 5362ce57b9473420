"""`ml-search` end to end: every SPEC.md line, each sampler and pruner on a tiny search, resume,
failing trials, `best_config.yaml` through `ml-train`, an unreachable storage, two workers on one
PostgreSQL study, and a killed worker's trial failed by heartbeat and retried."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import assert_clean_error, assert_ok, command, env, run, show

optuna = pytest.importorskip('optuna')
from imgcls.search import load_search_study, run_search  # noqa: E402

PG_URL = os.environ.get('IMGCLS_TEST_POSTGRES_URL')
needs_pg = pytest.mark.skipif(not PG_URL, reason='IMGCLS_TEST_POSTGRES_URL is not set (source '
                                                  '.ci/services.sh to start PostgreSQL)')
SPACE = {'optimizer.lr': {'type': 'loguniform', 'low': 0.01, 'high': 0.3},
         'training.batch_size': {'type': 'categorical', 'choices': [8, 16]}}


def write_config(tmp_path, name='tiny_config.yaml', **search) -> Path:
    "A tiny config for the tiny dataset with a search section (no storage: the default)."
    s = {'study_name': 'tiny_search', 'n_trials': 1, 'sampler': {'type': 'RandomSampler'},
         'pruner': {'type': 'MedianPruner', 'n_startup_trials': 1, 'n_warmup_steps': 1},
         'search_space': SPACE}
    s.update(search)
    cfg = {'data': {'data_dir': 'data/tiny', 'image_size': 16, 'resize_size': 16,
                    'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0, 'random_resized_crop': False},
           'model': {'type': 'custom', 'custom_architecture': 'simple_cnn'},
           'optimizer': {'lr': 0.05},
           'training': {'num_epochs': 2, 'batch_size': 16, 'device': 'cpu'},
           'search': s}
    p = tmp_path / 'configs' / name
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(cfg))
    return p


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


def trial_json(study_dir: Path, n: int) -> dict:
    return json.loads((study_dir / f'trial_{n}' / 'trial.json').read_text())


def check_trial_folders(study, study_dir: Path):
    "Each trial has its own consistent folder, whatever its state."
    for t in study.trials:
        if t.state.name in ('RUNNING', 'WAITING'): continue
        rd = study_dir / f'trial_{t.number}'
        assert Path(t.user_attrs['run_dir']) == rd.resolve()
        tj = trial_json(study_dir, t.number)
        assert (tj['number'], tj['state'], tj['params']) == (t.number, t.state.name, t.params)
        assert (rd / 'config.yaml').is_file() and (rd / 'logs' / 'train.log').is_file()
        assert any((rd / 'tensorboard').iterdir())
        if t.state.name == 'COMPLETE':
            assert (rd / 'summary.json').is_file() and (rd / 'weights' / 'best.pt').is_file()
            assert tj['value'] == t.value
        if t.state.name == 'PRUNED':
            assert (rd / 'weights' / 'last.pt').is_file() and not (rd / 'summary.json').exists()
            assert tj['pruned_at_epoch'] == max(t.intermediate_values) == len(tj['history'])


# ------------------------------------------------------------------- the SPEC.md lines

def test_spec_lines_resume_study_name_and_best_config(tmp_path, tiny_split, monkeypatch):
    cfg = write_config(tmp_path)
    # ml-search --config configs/my_dataset_config.yaml --n-trials 50   (with 2 trials here)
    res = run(['ml-search', '--config', cfg, '--n-trials', '2'], tmp_path)
    assert_ok(res)
    sd = tmp_path / 'runs' / 'optuna_studies' / 'tiny_search'
    assert (tmp_path / 'runs' / 'optuna_studies' / 'optuna_studies.db').is_file()
    assert 'use PostgreSQL' in res.stderr            # the SQLite note
    assert 'study tiny_search: 2 trials' in res.stdout and 'best trial' in res.stdout
    assert (sd / 'search.log').is_file() and (sd / 'best_config.yaml').is_file()
    # without --resume an existing study is refused, before any training
    before = sorted(p.name for p in sd.iterdir())
    res = run(['ml-search', '--config', cfg, '--n-trials', '1'], tmp_path)
    assert_clean_error(res, "study 'tiny_search' already exists", '--resume')
    assert sorted(p.name for p in sd.iterdir()) == before
    # ml-search --config configs/my_dataset_config.yaml --resume   (search.n_trials: 1 more)
    res = run(['ml-search', '--config', cfg, '--resume'], tmp_path)
    assert_ok(res)
    assert 'study tiny_search: 3 trials' in res.stdout
    # ml-search --config configs/my_dataset_config.yaml --study-name custom_study
    res = run(['ml-search', '--config', cfg, '--study-name', 'custom_study'], tmp_path)
    assert_ok(res)
    assert (tmp_path / 'runs/optuna_studies/custom_study/trial_0/trial.json').is_file()
    res = run(['ml-search', '--config', cfg, '--study_name', 'custom_study', '--resume',
               '--n_trials', '1'], tmp_path)
    assert_ok(res)

    monkeypatch.chdir(tmp_path)   # as ml-visualise --mode search --study-name finds it
    study = load_search_study('tiny_search')
    assert len(study.trials) == 3 and set(states(study)) <= {'COMPLETE', 'PRUNED'}
    assert len(load_search_study('custom_study').trials) == 2
    check_trial_folders(study, sd)
    assert study.user_attrs['metric'] == 'val_acc'

    # best_config.yaml: the best trial's values, accepted by ml-train as it is
    best = yaml.safe_load((sd / 'best_config.yaml').read_text())
    assert best['optimizer']['lr'] == study.best_params['optimizer.lr']
    assert best['training']['batch_size'] == study.best_params['training.batch_size']
    res = run(['ml-train', '--config', sd / 'best_config.yaml'], tmp_path)
    assert_ok(res)
    saved = yaml.safe_load((tmp_path / 'runs' / 'tiny_fold_0' / 'config.yaml').read_text())
    assert saved['optimizer']['lr'] == study.best_params['optimizer.lr']


def test_init_config_optuna_section_works_unchanged(tmp_path, tiny_split, monkeypatch):
    res = run(['ml-init-config', 'data/tiny', '--optuna'], tmp_path)
    assert_ok(res)
    cfg = tmp_path / 'configs' / 'tiny_config.yaml'
    res = run(['ml-search', '--config', cfg, '--n-trials', '2', '--num_epochs', '1',
               '--num_workers', '0'], tmp_path)
    assert_ok(res)
    assert (tmp_path / 'runs' / 'optuna_studies' / 'tiny.db').is_file()  # its storage
    monkeypatch.chdir(tmp_path)
    study = load_search_study('tiny_search')      # found in runs/optuna_studies/*.db by name
    assert len(study.trials) == 2 and 'COMPLETE' in states(study)
    assert set(study.best_params) == {'optimizer.lr', 'training.batch_size',   # AdamW's space
                                      'optimizer.weight_decay', 'loss.label_smoothing'}
    assert len(load_search_study(cfg).trials) == 2


# ------------------------------------------------------------------- samplers and pruners

SAMPLERS = [{'type': 'TPESampler', 'n_startup_trials': 2}, {'type': 'RandomSampler', 'seed': 1},
            {'type': 'CmaEsSampler'},
            {'type': 'GridSampler', 'search_space': {'optimizer.lr': [0.05, 0.2]}}]


@pytest.mark.parametrize('sampler', SAMPLERS, ids=[s['type'] for s in SAMPLERS])
def test_each_sampler(tmp_path, tiny_split, monkeypatch, sampler):
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path, sampler=sampler, n_trials=3)
    study = run_search(cfg, progress=False)
    assert len(study.trials) == 3 and set(states(study)) <= {'COMPLETE', 'PRUNED'}
    check_trial_folders(study, tmp_path / 'runs/optuna_studies/tiny_search')
    for t in study.trials:
        assert 0.01 <= t.params['optimizer.lr'] <= 0.3
        assert t.params['training.batch_size'] in (8, 16)
    if sampler['type'] == 'GridSampler':
        assert len({tuple(t.params.values()) for t in study.trials}) == 3   # no point twice


PRUNERS = [{'type': 'MedianPruner', 'n_startup_trials': 1, 'n_warmup_steps': 1},
           {'type': 'PercentilePruner', 'percentile': 50.0, 'n_startup_trials': 1,
            'n_warmup_steps': 1},
           {'type': 'HyperbandPruner', 'min_resource': 1, 'reduction_factor': 2},
           {'type': 'NopPruner'}]


@pytest.mark.parametrize('pruner', PRUNERS, ids=[p['type'] for p in PRUNERS])
def test_each_pruner(tmp_path, tiny_split, monkeypatch, pruner):
    "Trial 0 learns; trial 1's learning rate is far too small: behind after epoch 1 of 2."
    monkeypatch.chdir(tmp_path)
    space = {'optimizer.lr': {'type': 'loguniform', 'low': 1e-7, 'high': 0.3}}
    cfg = write_config(tmp_path, pruner=pruner, n_trials=2, search_space=space,
                       metric='val_loss', direction='minimize')
    Path('runs/optuna_studies').mkdir(parents=True, exist_ok=True)
    st = optuna.storages.RDBStorage('sqlite:///runs/optuna_studies/optuna_studies.db')
    pre = optuna.create_study(study_name='tiny_search', storage=st, direction='minimize')
    pre.enqueue_trial({'optimizer.lr': 0.3})
    pre.enqueue_trial({'optimizer.lr': 1e-7})
    study = run_search(cfg, resume=True, progress=False)
    assert len(study.trials) == 2 and set(states(study)) <= {'COMPLETE', 'PRUNED'}
    check_trial_folders(study, tmp_path / 'runs/optuna_studies/tiny_search')
    for t in study.trials:   # every epoch trained was reported, numbered as in the logs
        tj = trial_json(tmp_path / 'runs/optuna_studies/tiny_search', t.number)
        assert sorted(t.intermediate_values) == [r['epoch'] for r in tj['history']]
        assert [t.intermediate_values[r['epoch']] for r in tj['history']] == \
            [r['val_loss'] for r in tj['history']]
    assert states(study)[0] == 'COMPLETE'
    if pruner['type'] in ('MedianPruner', 'PercentilePruner'):
        assert states(study)[1] == 'PRUNED'        # behind trial 0 after its warm-up epoch
        assert trial_json(tmp_path / 'runs/optuna_studies/tiny_search', 1)['pruned_at_epoch'] == 1
    if pruner['type'] == 'NopPruner': assert states(study) == ['COMPLETE'] * 2


# ------------------------------------------------------------------- failures

@pytest.mark.fault
def test_failing_trials_are_fail_and_the_search_goes_on(tmp_path, tiny_split, monkeypatch):
    space = {'optimizer.lr': {'type': 'categorical', 'choices': [1.0e+30, 0.1]}}
    cfg = write_config(tmp_path, sampler={'type': 'GridSampler'}, search_space=space,
                       n_trials=2)
    res = run(['ml-search', '--config', cfg], tmp_path)
    assert_ok(res)
    assert 'NaN or infinite' in res.stderr
    monkeypatch.chdir(tmp_path)
    study = load_search_study(cfg)
    by_lr = {t.params['optimizer.lr']: t for t in study.trials}
    assert by_lr[1e30].state.name == 'FAIL' and by_lr[0.1].state.name == 'COMPLETE'
    sd = tmp_path / 'runs/optuna_studies/tiny_search'
    tj = trial_json(sd, by_lr[1e30].number)
    assert tj['state'] == 'FAIL' and 'NaN or infinite' in tj['error']
    assert 'optimizer' in yaml.safe_load((sd / 'best_config.yaml').read_text())
    assert yaml.safe_load((sd / 'best_config.yaml').read_text())['optimizer']['lr'] == 0.1
    # a search where no trial completes is an error
    cfg = write_config(tmp_path, name='bad.yaml', study_name='all_bad',
                       search_space={'optimizer.lr': {'type': 'categorical', 'choices': [1e30]}})
    res = run(['ml-search', '--config', cfg], tmp_path)
    assert_clean_error(res, "no trial of study 'all_bad' has completed")
    assert states(load_search_study('all_bad')) == ['FAIL']


@pytest.mark.fault
def test_nan_metric_is_fail_not_complete(tmp_path, tiny_split, monkeypatch):
    from imgcls.training import Callback

    class NaNMetric(Callback):
        def after_epoch(self, trainer, row): row['val_acc'] = float('nan')
    monkeypatch.chdir(tmp_path)
    cfg = write_config(tmp_path, pruner={'type': 'NopPruner'})
    with pytest.raises(Exception, match="no trial of study 'tiny_search' has completed"):
        run_search(cfg, callbacks=[NaNMetric()], progress=False)
    study = load_search_study(cfg)
    assert states(study) == ['FAIL'] and study.trials[0].user_attrs['error'] == 'val_acc is nan'


@pytest.mark.fault
def test_bad_search_sections_are_refused_before_training(tmp_path, tiny_split):
    cases = [({'search_space': {'optimizer.lrr': {'type': 'uniform', 'low': 0.1, 'high': 1}}},
              ["unknown key 'optimizer.lrr'", "did you mean 'optimizer.lr'?"]),
             ({'sampler': {'type': 'TPESampler', 'n_startup_trails': 3}},
              ["TPESampler takes no 'n_startup_trails'"]),
             ({'metric': 'val_loss'}, ['search.direction maximize does not suit search.metric '
                                       'val_loss', 'set search.direction: minimize'])]
    for search, needles in cases:
        cfg = write_config(tmp_path, **search)
        res = run(['ml-search', '--config', cfg], tmp_path)
        assert_clean_error(res, 'tiny_config.yaml', *needles)
        assert not (tmp_path / 'runs').exists()


@pytest.mark.fault
@pytest.mark.parametrize('secret, url, shown', [   # nothing listens on port 9
    ('s3cret-pw', 'postgresql+psycopg2://imgcls:s3cret-pw@127.0.0.1:9/imgcls',
     'postgresql+psycopg2://imgcls:***@127.0.0.1:9/imgcls'),
    ('se/cret', 'postgresql+psycopg2://imgcls:se/cret@127.0.0.1:9/imgcls',
     'postgresql+psycopg2://imgcls:***@127.0.0.1:9/imgcls'),
    ('cret', 'postgresql+psycopg2://imgcls:s@cret@127.0.0.1:9/imgcls',   # told to write %40
     'postgresql+psycopg2://imgcls:***@127.0.0.1:9/imgcls: the password holds @'),
    ('hunter22', 'postgresql+psycopg2://imgcls@127.0.0.1:9/imgcls?password=hunter22',
     'postgresql+psycopg2://imgcls@127.0.0.1:9/imgcls?password=***'),
], ids=['plain', 'slash', 'at-sign', 'query'])
def test_unreachable_storage_is_one_clear_line_with_the_password_masked(tmp_path, tiny_split,
                                                                         secret, url, shown):
    cfg = write_config(tmp_path)
    res = run(['ml-search', '--config', cfg, '--storage', url], tmp_path)
    line = assert_clean_error(res, shown)
    assert 'nothing was trained' in line or 'must write as %40' in line, line
    assert secret not in res.stdout + res.stderr, line
    assert not (tmp_path / 'runs').exists()


# ------------------------------------------------------------------- several workers

def _popen(args, cwd) -> subprocess.Popen:
    return subprocess.Popen([command(args[0]), *map(str, args[1:])], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout=600) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


STORAGES = ['sqlite', pytest.param('postgresql', marks=needs_pg)]


@pytest.mark.fault
@pytest.mark.parametrize('kind', STORAGES)
def test_two_workers_share_one_study(tmp_path, tiny_split, kind):
    "Two ml-search processes on one study (PostgreSQL, or SQLite for a few on one machine)."
    name = f'two_workers_{uuid.uuid4().hex[:10]}'
    storage = PG_URL if kind == 'postgresql' else 'sqlite:///two.db'
    cfg = write_config(tmp_path, study_name=name)
    args = ['ml-search', '--config', cfg, '--storage', storage, '--resume', '--n-trials', '3']
    workers = [_popen(args, tmp_path) for _ in range(2)]
    results = [_finish(w) for w in workers]
    for r in results: assert_ok(r)
    try:
        study = load_search_study(name, storage=storage, runs_dir=tmp_path / 'runs')
        assert len(study.trials) == 6, [show(r) for r in results]
        assert set(states(study)) <= {'COMPLETE', 'PRUNED'}
        assert sorted(t.number for t in study.trials) == list(range(6))
        sd = tmp_path / 'runs' / 'optuna_studies' / name
        assert sorted(p.name for p in sd.iterdir() if p.name.startswith('trial_')) == \
            sorted(f'trial_{i}' for i in range(6))                  # no trial run twice
        check_trial_folders(study, sd)
        pids = {str(w.pid) for w in workers}
        per = {}
        for t in study.trials:
            pid = t.user_attrs['worker'].rsplit(':', 1)[1]
            assert pid in pids and trial_json(sd, t.number)['worker'] == t.user_attrs['worker']
            per[pid] = per.get(pid, 0) + 1
        assert per == {p: 3 for p in pids}                        # each ran its own 3 trials
        assert (sd / 'best_config.yaml').is_file()
    finally:
        if kind == 'postgresql': optuna.delete_study(study_name=name, storage=PG_URL)


@pytest.mark.fault
@pytest.mark.parametrize('kind', STORAGES)
def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(tmp_path, tiny_split, kind):
    name = f'heartbeat_{uuid.uuid4().hex[:10]}'
    storage = PG_URL if kind == 'postgresql' else 'sqlite:///hb.db'
    cfg = write_config(tmp_path, study_name=name, pruner={'type': 'NopPruner'})
    hb = ['--storage', storage, '--study-name', name, '--heartbeat-interval', '1',
          '--grace-period', '2', '--n-trials', '1']
    a = _popen(['ml-search', '--config', cfg, *hb, '--num_epochs', '500'], tmp_path)
    log = tmp_path / 'runs' / 'optuna_studies' / name / 'trial_0' / 'logs' / 'train.log'
    deadline = time.monotonic() + 300
    while not (log.is_file() and 'epoch 1/500' in log.read_text()):
        assert a.poll() is None, show(_finish(a))
        assert time.monotonic() < deadline, 'worker A never finished an epoch'
        time.sleep(0.2)
    a.kill()                                                   # SIGKILL mid-trial
    a.wait()
    try:
        study = load_search_study(name, storage=storage, runs_dir=tmp_path / 'runs')
        assert states(study) == ['RUNNING']                   # nobody has noticed yet
        time.sleep(3)                                          # > grace period without heartbeat
        res = run(['ml-search', '--config', cfg, *hb, '--resume', '--num_epochs', '2'], tmp_path)
        assert_ok(res)
        assert 'trial 0: its worker stopped sending heartbeats' in res.stderr
        study = load_search_study(name, storage=storage, runs_dir=tmp_path / 'runs')
        assert states(study) == ['FAIL', 'COMPLETE']
        t0, t1 = study.trials
        assert t1.system_attrs['failed_trial'] == 0 and t1.params == t0.params   # the retry
        sd = tmp_path / 'runs' / 'optuna_studies' / name
        assert trial_json(sd, 0)['state'] == 'FAIL'
        assert 'no heartbeat' in trial_json(sd, 0)['error']
        assert trial_json(sd, 1)['retry_of'] == 0
    finally:
        if kind == 'postgresql': optuna.delete_study(study_name=name, storage=PG_URL)
