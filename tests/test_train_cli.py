"""`ml-train` end to end, as a user runs it: the files a run writes, run-folder naming, bad
configs refused before any work, SIGINT/SIGTERM leaving a resumable `last.pt`, and resume."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import (assert_clean_error, assert_ok, command, env, run, show, tiny_config,
                     tree_hash)

from imgcls.checkpoint import load_checkpoint


RUN_FILES = ['config.yaml', 'weights/best.pt', 'weights/last.pt', 'logs/train.log', 'summary.json',
             'summary.txt', 'logs/classification_report_test.txt', 'logs/confusion_matrix_test.png',
             'logs/metrics_test.json']


@pytest.mark.fault
def test_a_run_writes_every_file_and_never_reuses_a_folder(tmp_path, tiny_split, lost_bytes):
    cfg = tiny_config(tmp_path)
    res = run(['ml-train', '--config', cfg, '--batch_size', '8', '--lr', '0.01'], tmp_path)
    assert_ok(res)
    rd = tmp_path / 'runs' / 'tiny_batch_8_lr_0.01_fold_0'
    for f in RUN_FILES: assert (rd / f).is_file(), f
    assert any((rd / 'tensorboard').iterdir())
    saved = yaml.safe_load((rd / 'config.yaml').read_text())
    assert (saved['training']['batch_size'], saved['optimizer']['lr']) == (8, 0.01)
    s = json.loads((rd / 'summary.json').read_text())
    assert s['epochs_run'] == 2 and s['test']['n'] == 20
    assert f"test accuracy {s['test']['acc']:.4f}" in res.stdout
    ck = load_checkpoint(rd / 'weights' / 'best.pt')
    assert ck['classes'] == [str(i) for i in range(10)]
    before = lost_bytes.watch(rd)
    res = run(['ml-train', '--config', cfg, '--batch-size', '8', '--lr', '0.01'], tmp_path)
    assert_ok(res)
    assert (tmp_path / 'runs' / 'tiny_batch_8_lr_0.01_fold_0_2' / 'weights' / 'best.pt').is_file()
    assert tree_hash(rd) == before
    assert lost_bytes.check() == 0


def test_a_run_from_the_shipped_weights_says_so_in_its_log(tmp_path, tiny_split):
    """`model.pretrained: true` for small_resnet with no weights_path: the weights imgcls ships
    (#32). ml-train logs where they came from into the run's train.log, written before the run
    folder existed (it was dropped on the command line, where the log opens with the folder)."""
    from imgcls.models import offline_weights
    cfg = tiny_config(tmp_path, training__num_epochs=1, training__limit_train_batches=2,
                      model={'type': 'custom', 'custom_architecture': 'small_resnet',
                             'pretrained': True})
    res = run(['ml-train', '--config', cfg], tmp_path)
    assert_ok(res)
    log = (tmp_path / 'runs' / 'tiny_fold_0' / 'logs' / 'train.log').read_text()
    assert f"loaded pretrained weights for small_resnet from {offline_weights('small_resnet')}" \
        in log, log
    res = run(['ml-train', '--config', tiny_config(tmp_path, model={
        'type': 'custom', 'custom_architecture': 'tiny_net', 'pretrained': True})], tmp_path)
    assert_clean_error(res, 'ships no pretrained weights for custom tiny_net')

def test_fold_and_dotted_overrides(tmp_path, tiny_split):
    cfg = tiny_config(tmp_path, training__num_epochs=1)
    res = run(['ml-train', '--config', cfg, '--fold', '1', '--set', 'optimizer.momentum=0.8',
               '--training.label_smoothing', '0.1'], tmp_path)
    # training.label_smoothing is not a key: loss.label_smoothing
    assert res.returncode == 1, show(res)
    assert_clean_error(res, "unknown key 'training.label_smoothing'",
                       "did you mean 'loss.label_smoothing'")
    res = run(['ml-train', '--config', cfg, '--fold', '1', '--set', 'optimizer.momentum=0.8',
               '--loss.label_smoothing', '0.1'], tmp_path)
    assert_ok(res)
    rd = tmp_path / 'runs' / 'tiny_momentum_0.8_label_smoothing_0.1_fold_1'
    saved = yaml.safe_load((rd / 'config.yaml').read_text())
    assert saved['data']['fold'] == 1 and saved['loss']['label_smoothing'] == 0.1


@pytest.mark.fault
def test_bad_input_is_refused_before_any_work(tmp_path, tiny_split):
    cfg = tiny_config(tmp_path)
    cases = [
        (['--fold', '2'], ['fold 2 does not exist', 'folds 0, 1']),
        (['--batch_size', '0'], ['training.batch_size must be >= 1, got 0']),
        (['--set', 'training.num_epochs=-1'], ['training.num_epochs must be >= 1']),
        (['--set', 'model.architecture=resnet19', '--set', 'model.type=base'],
         ["did you mean 'resnet18'"]),
        (['--device', 'gpu0'], ["training.device 'gpu0' is not a device"]),
    ]
    for args, needles in cases:
        res = run(['ml-train', '--config', cfg, *args], tmp_path)
        assert_clean_error(res, *needles)
    bad = tmp_path / 'configs' / 'bad.yaml'
    bad.write_text('data: {data_dir: data/tiny}\ntraining:\n  batchsize: 8\n')
    assert_clean_error(run(['ml-train', '--config', bad], tmp_path), 'bad.yaml',
                       "unknown key 'training.batchsize'", "did you mean 'training.batch_size'")
    assert_clean_error(run(['ml-train', '--config', tmp_path / 'nope.yaml'], tmp_path),
                       'no such config file')
    runs = tmp_path / 'runs'
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def _start(args, cwd):
    return subprocess.Popen([command('ml-train'), *map(str, args)], cwd=cwd, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_epoch(log: Path, epoch: int, proc, timeout=120):
    "Wait until the run's log shows `epoch` finished (or the process ends)."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and f'epoch {epoch}/' in log.read_text(): return
        if proc.poll() is not None:
            raise AssertionError(f'ml-train ended early: {proc.communicate()}')
        time.sleep(0.05)
    raise AssertionError(f'no epoch {epoch} in {log} after {timeout}s')


def _interrupt(args, cwd, log, sig, after_epoch):
    proc = _start(args, cwd)
    try:
        _wait_for_epoch(log, after_epoch, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    return proc.returncode, out, err


@pytest.mark.fault
def test_signals_save_last_pt_and_resume_continues(tmp_path, tiny_split, lost_bytes):
    cfg = tiny_config(tmp_path, training__num_epochs=500, training__early_stopping_patience=0)
    rd = tmp_path / 'runs' / 'tiny_fold_0'
    log, last = rd / 'logs' / 'train.log', rd / 'weights' / 'last.pt'
    code, out, err = _interrupt(['--config', cfg], tmp_path, log, signal.SIGINT, after_epoch=2)
    assert code == 130, (code, err)
    assert 'Traceback' not in err
    assert f'continue with --resume {last}'.replace(str(tmp_path) + '/', '') in err
    ck = load_checkpoint(last)
    first_stop = ck['epoch'] + ck['step_in_epoch'] / 100
    assert ck['epoch'] >= 2 and len(ck['history']) == ck['epoch']

    # a resume into what the checkpoint cannot follow is refused, lists the key, changes nothing
    before = lost_bytes.watch(rd / 'weights')
    assert_clean_error(run(['ml-train', '--config', cfg, '--resume', last,
                            '--set', 'model.custom_architecture=tiny_net'], tmp_path),
                       'the config differs from the run being resumed', 'cannot follow',
                       "model.custom_architecture: 'simple_cnn' -> 'tiny_net'")
    assert tree_hash(rd / 'weights') == before
    assert lost_bytes.check() == 0

    # resumed in the same folder; SIGTERM stops it again with 143
    done = ck['epoch']
    code, out, err = _interrupt(['--config', cfg, '--resume', last], tmp_path, log, signal.SIGTERM,
                                after_epoch=done + 2)
    assert code == 143, (code, err)
    ck2 = load_checkpoint(last)
    assert ck2['epoch'] + ck2['step_in_epoch'] / 100 > first_stop
    assert [h['epoch'] for h in ck2['history']] == list(range(1, ck2['epoch'] + 1))
    assert not (tmp_path / 'runs' / 'tiny_fold_0_2').exists()

    # finish it with fewer epochs than planned: the run's own config, no --config needed
    target = ck2['epoch'] + 1
    res = run(['ml-train', '--resume', last, '--num_epochs', target], tmp_path)
    assert_ok(res)
    s = json.loads((rd / 'summary.json').read_text())
    assert s['epochs_run'] == target and len(s['history']) == target
    assert f'training.num_epochs: 500 -> {target}' in log.read_text()


def test_resume_extends_a_finished_run_with_its_own_settings(tmp_path, tiny_split):
    """The run was started with flags; the resume names only what changes (more epochs, another
    learning rate), with or without --config: the run's own settings are kept, the rest applied."""
    cfg = tiny_config(tmp_path, training__num_epochs=2)
    assert_ok(run(['ml-train', '--config', cfg, '--batch_size', '8', '--lr', '0.02'], tmp_path))
    rd = tmp_path / 'runs' / 'tiny_batch_8_lr_0.02_fold_0'
    last, log = rd / 'weights' / 'last.pt', rd / 'logs' / 'train.log'
    res = run(['ml-train', '--config', cfg, '--resume', last, '--num_epochs', '3'], tmp_path)
    assert_ok(res)
    assert "continuing with the run's own config" in res.stderr
    s = json.loads((rd / 'summary.json').read_text())
    assert [h['epoch'] for h in s['history']] == [1, 2, 3] and s['epochs_run'] == 3
    assert 'resuming with changed settings: training.num_epochs: 2 -> 3' in log.read_text()
    assert load_checkpoint(last)['config']['training']['batch_size'] == 8   # kept, not the file's
    res = run(['ml-train', '--resume', last, '--num_epochs', '4', '--lr', '0.01'], tmp_path)
    assert_ok(res)
    assert ('resuming with changed settings: optimizer.lr: 0.02 -> 0.01; training.num_epochs: '
            '3 -> 4') in log.read_text()
    assert sorted(p.name for p in (tmp_path / 'runs').iterdir()) == [rd.name]
    assert_clean_error(run(['ml-train'], tmp_path), '--config is required')


@pytest.mark.fault
def test_two_runs_started_together_get_their_own_folders(tmp_path, tiny_split):
    cfg = tiny_config(tmp_path, training__num_epochs=1)
    procs = [_start(['--config', cfg], tmp_path) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    names = sorted(p.name for p in (tmp_path / 'runs').iterdir())
    assert names == ['tiny_fold_0', 'tiny_fold_0_2']
    for n in names:
        s = json.loads((tmp_path / 'runs' / n / 'summary.json').read_text())
        assert s['run_dir'].endswith(n)
        log = (tmp_path / 'runs' / n / 'logs' / 'train.log').read_text()
        assert log.count('epoch 1/1') == 1


def test_data_flag_prepares_splits_and_config_as_the_steps_would(tmp_path, tiny):
    """`ml-train --data data/NAME` on a folder with only raw/: the splits and the config it
    leaves are those `ml-split` and `ml-init-config` write, and it trains with them."""
    res = run(['ml-train', '--data', 'data/tiny', '--num_epochs', '1'], tmp_path)
    assert_ok(res)
    for said in ('no splits in data/tiny/splits: making them', 'no configs/tiny_config.yaml',
                 'run folder: runs/tiny_epochs_1_fold_0'):
        assert said in res.stdout, res.stdout
    assert json.loads((tmp_path / 'runs' / 'tiny_epochs_1_fold_0' / 'summary.json')
                      .read_text())['test']['n'] > 0
    # the step-by-step path, in a second folder with the same images
    other = tmp_path / 'steps'
    shutil.copytree(tiny, other / 'data' / 'tiny', ignore=shutil.ignore_patterns('splits'))
    assert_ok(run(['ml-split', '--raw_data', 'data/tiny/raw'], other))
    assert_ok(run(['ml-init-config', 'data/tiny'], other))
    for f in sorted((other / 'data' / 'tiny' / 'splits').glob('*.txt')):
        assert f.read_text() == (tiny / 'splits' / f.name).read_text(), f.name
    values = [yaml.safe_load(Path(d, 'configs', 'tiny_config.yaml').read_text())
              for d in (tmp_path, other)]
    assert values[0] == values[1]
    # a second time: both are found and used as they are
    res = run(['ml-train', '--data', 'tiny', '--num_epochs', '1'], tmp_path)
    assert_ok(res)
    assert 'using configs/tiny_config.yaml' in res.stdout and 'no splits' not in res.stdout
    assert_clean_error(run(['ml-train', '--data', 'data/tiny', '--config', 'x.yaml'], tmp_path),
                       'give --data, --config or --resume, not two of them')
    (tmp_path / 'loose' / 'cat').mkdir(parents=True)
    assert_clean_error(run(['ml-train', '--data', 'loose'], tmp_path), 'has no raw/ folder')
    assert_clean_error(run(['ml-train', '--data', 'nowhere'], tmp_path), 'no dataset there')


def test_data_digits_writes_the_sample_first(tmp_path):
    res = run(['ml-train', '--data', 'digits', '--num_epochs', '1'], tmp_path)
    assert_ok(res)
    assert 'data/digits: no such dataset; writing the built-in sample there' in res.stdout
    assert len(list((tmp_path / 'data' / 'digits' / 'raw').rglob('*.png'))) == 1797
    assert (tmp_path / 'configs' / 'digits_config.yaml').is_file()
    s = json.loads((tmp_path / 'runs' / 'digits_epochs_1_fold_0' / 'summary.json').read_text())
    assert s['test']['n'] == 360 and s['epochs_run'] == 1


def test_a_timm_model_trains_exports_and_predicts_the_same(tmp_path, tiny_split):
    "`model.type: timm` by name: trains, resumes, exports to ONNX with parity on the test images."
    pytest.importorskip('timm', reason="timm is not installed: pip install 'imgcls[timm]'")
    cfg = tiny_config(tmp_path, model__type='timm', model__architecture='resnet10t',
                       training__num_epochs=1)
    assert_ok(run(['ml-train', '--config', cfg], tmp_path))
    best = tmp_path / 'runs' / 'tiny_fold_0' / 'weights' / 'best.pt'
    last = best.with_name('last.pt')
    assert load_checkpoint(best)['config']['model']['type'] == 'timm'
    first = json.loads((tmp_path / 'runs' / 'tiny_fold_0' / 'summary.json').read_text())
    assert_ok(run(['ml-train', '--resume', last, '--num_epochs', 2], tmp_path))   # resumes
    s = json.loads((tmp_path / 'runs' / 'tiny_fold_0' / 'summary.json').read_text())
    assert s['epochs_run'] == 2 and [r['epoch'] for r in s['history']] == [1, 2], s['history']
    assert s['history'][0] == first['history'][0]   # epoch 1 kept as it was, not trained again
    assert load_checkpoint(last)['epoch'] == 2
    res = run(['ml-export', '--checkpoint', best, '--comprehensive-validate'], tmp_path)
    assert_ok(res)
    rep = json.loads((best.parent / 'validation_report.json').read_text())
    c = rep['comprehensive_validate']
    assert rep['passed'] and c['model']['top1_agreement'] == 1.0, c
    assert c['accuracy']['pytorch'] == c['accuracy']['onnx']
    assert_clean_error(run(['ml-train', '--config', cfg, '--set', 'model.architecture=resnet10'],
                           tmp_path), "unknown model.architecture (timm) 'resnet10'",
                       'did you mean')
