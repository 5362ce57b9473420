"""FAULTS.md lines about training, fed to `ml-train` end to end: NaN/inf losses (a config with a
huge learning rate, and a registered model of the user's own that turns NaN after one good epoch),
resume restoring the schedule, RNG and best metric, `--fold` outside the folds, DP settings that
cannot hold, and YAML that would run code."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from helpers import assert_clean_error, assert_ok, command, env, run, show, tiny_config

from imgcls.checkpoint import load_checkpoint

pytestmark = pytest.mark.fault


def finite(ck: dict) -> bool:
    return all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())


def checkpoints(root) -> list:
    return sorted((root / 'runs').glob('*/weights/*.pt'))


# ------------------------------------------------------------------ NaN / inf loss

def test_huge_lr_stops_with_one_clear_error_after_the_bound(tmp_path, tiny_split):
    cfg = tiny_config(tmp_path, optimizer__lr=1e8, training__max_bad_steps=2,
                      training__batch_size=4)
    res = run(['ml-train', '--config', cfg], tmp_path)
    line = assert_clean_error(res, 'NaN or infinite', 'training.max_bad_steps=2', 'optimizer.lr')
    assert 'in 3 steps' in line, line
    skipped = [ln for ln in res.stderr.splitlines() if 'step skipped' in ln]
    assert [s.split('step skipped ')[1] for s in skipped] == [
        '(1 of at most 2)', '(2 of at most 2)'], show(res)   # the third is the error itself
    for ck in checkpoints(tmp_path): assert finite(load_checkpoint(ck)), ck   # none NaN


def test_weights_gone_nan_never_become_a_checkpoint(tmp_path, tiny_split):
    res = run(['ml-train', '--config', tiny_config(tmp_path), '--lr', '1e8'], tmp_path)
    assert_clean_error(res, 'NaN or infinite', 'optimizer.lr')
    for ck in checkpoints(tmp_path): assert finite(load_checkpoint(ck)), ck


# A model of the user's own, registered by a module that Python imports at start-up (a
# sitecustomize on PYTHONPATH), so the real `ml-train` command finds it: simple_cnn whose training
# outputs turn NaN after the first epoch's 3 batches (40 training images, batch 16).
PLUGIN = '''
import torch
from imgcls.models import register_model, simple_cnn


class NaNAfter(torch.nn.Module):
    def __init__(self, net, good_steps):
        super().__init__()
        self.net, self.good_steps, self.calls = net, good_steps, 0

    def forward(self, x):
        y = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls > self.good_steps: y = y * float('nan')
        return y


@register_model('nan_after_one_epoch')
def nan_after_one_epoch(num_classes, dropout=0.0):
    return NaNAfter(simple_cnn(num_classes, dropout), good_steps=3)
'''


def test_nan_loss_after_a_good_epoch_keeps_the_good_best_pt(tmp_path, tiny_split):
    plugin = tmp_path / 'plugin'
    plugin.mkdir()
    (plugin / 'sitecustomize.py').write_text(PLUGIN)
    cfg = tiny_config(tmp_path, model__custom_architecture='nan_after_one_epoch',
                      training__num_epochs=3, training__max_bad_steps=2)
    e = {**env(), 'PYTHONPATH': str(plugin)}
    res = subprocess.run([command('ml-train'), '--config', str(cfg)], cwd=tmp_path, env=e,
                         capture_output=True, text=True, timeout=600)
    assert_clean_error(res, 'the loss was NaN or infinite in 3 steps',
                       'training.max_bad_steps=2')
    assert res.stderr.count('step skipped') == 2, show(res)
    [w] = (tmp_path / 'runs').glob('*/weights')
    best, last = load_checkpoint(w / 'best.pt'), load_checkpoint(w / 'last.pt')
    assert best['epoch'] == last['epoch'] == 1 and finite(best) and finite(last)
    assert sorted(p.name for p in w.iterdir()) == ['best.pt', 'last.pt']   # no temporary file
    log = (w.parent / 'logs' / 'train.log').read_text()
    assert 'epoch 2 batch 2: loss is nan; step skipped (2 of at most 2)' in log, log
    assert 'of at most 2)' not in log.split('(2 of at most 2)')[1], log


# ------------------------------------------------------------------ resume

# `ml-train` in-process, playing parts (joined by '+'): 'stop_at_step:N' stops the run after
# optimizer step N as SIGINT does (request_stop), 'stop_after_epoch:N' after epoch N; 'worse' sets
# every weight to 0 after each step (the resumed epochs are then as bad as a model can be);
# 'hang_at_step:N' never finishes step N: it writes `hung` in the working folder, then `first`
# once a stop has been asked for, and goes on waiting; 'cpu_scaler' gives the trainer a GradScaler
# on the CPU (the trainers make one only on CUDA) whose scale doubles at every step.
SCRIPT = textwrap.dedent('''
    import sys, time, torch
    from pathlib import Path
    import imgcls.trainer
    from imgcls.cli import ml_train
    parts = dict((p.split(':') + [''])[:2] for p in sys.argv[1].split('+'))

    class Part(imgcls.trainer.Callback):
        def after_step(self, t):
            if t.global_step == int(parts.get('stop_at_step') or -1): t.request_stop()
            if t.global_step == int(parts.get('hang_at_step') or -1):
                Path('hung').touch()
                while True:
                    if t.should_stop() and not Path('first').exists(): Path('first').touch()
                    time.sleep(0.02)
            if 'worse' in parts:
                with torch.no_grad():
                    for p in t.model.parameters(): p.zero_()
        def after_epoch(self, t, row):
            if t.epoch == int(parts.get('stop_after_epoch') or -1): t.request_stop()

    orig = imgcls.trainer.BaseTrainer.__init__
    def init(self, *a, **k):
        orig(self, *a, **k); self.callbacks.append(Part())
    imgcls.trainer.BaseTrainer.__init__ = init
    if 'cpu_scaler' in parts:
        imgcls.trainer.BaseTrainer.make_scaler = lambda self: torch.amp.GradScaler(
            'cpu', init_scale=2.0 ** 4, growth_interval=1)
    sys.exit(ml_train(sys.argv[2:]))
''')


def train_with(part: str, cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', SCRIPT, part, *map(str, args)], cwd=cwd,
                          env=env(), capture_output=True, text=True, timeout=600)


def test_resume_mid_epoch_continues_schedule_rng_and_history_exactly(tmp_path, tiny_split):
    # dropout, random crops and flips use every generator; cosine schedule by the step
    cfg = tiny_config(tmp_path, deterministic=True, training__num_epochs=3,
                      training__early_stopping_patience=0, model__dropout=0.3,
                      augmentation__horizontal_flip=0.5, augmentation__random_resized_crop=True)
    assert_ok(run(['ml-train', '--config', cfg], tmp_path))
    straight = tmp_path / 'runs' / 'tiny_fold_0'
    res = train_with('stop_at_step:4', tmp_path, '--config', cfg)   # epoch 2, batch 1 of 3
    assert res.returncode == 130, show(res)
    rd = tmp_path / 'runs' / 'tiny_fold_0_2'
    stopped = load_checkpoint(rd / 'weights' / 'last.pt')
    assert (stopped['epoch'], stopped['step_in_epoch'], stopped['global_step']) == (1, 1, 4)
    assert_ok(run(['ml-train', '--config', cfg, '--resume', rd / 'weights' / 'last.pt'], tmp_path))
    a = load_checkpoint(straight / 'weights' / 'last.pt')
    b = load_checkpoint(rd / 'weights' / 'last.pt')
    assert (a['epoch'], a['global_step']) == (b['epoch'], b['global_step']) == (3, 9)
    assert a['scheduler'] == b['scheduler']
    assert a['model'].keys() == b['model'].keys()
    for k in a['model']: assert torch.equal(a['model'][k], b['model'][k]), k
    drop = lambda h: [{k: v for k, v in r.items() if k != 'time_s'} for r in h]
    assert drop(a['history']) == drop(b['history'])
    assert [r['lr'] for r in b['history']] == sorted({r['lr'] for r in b['history']},
                                                      reverse=True)   # decays, never restarts
    sa = json.loads((straight / 'summary.json').read_text())
    sb = json.loads((rd / 'summary.json').read_text())
    assert sa['test'] == sb['test'] and sa['best_epoch'] == sb['best_epoch']


def test_resume_restores_the_grad_scaler(tmp_path, tiny_split):
    "A scale that doubles each step: 9 steps in all must end at 2**(4+9) whatever the stop."
    cfg = tiny_config(tmp_path, training__num_epochs=3, training__early_stopping_patience=0)
    res = train_with('cpu_scaler+stop_at_step:4', tmp_path, '--config', cfg)
    assert res.returncode == 130, show(res)
    last = tmp_path / 'runs' / 'tiny_fold_0' / 'weights' / 'last.pt'
    assert load_checkpoint(last)['scaler']['scale'] == 2.0 ** (4 + 4)
    res = train_with('cpu_scaler', tmp_path, '--config', cfg, '--resume', last)
    assert res.returncode == 0, show(res)
    ck = load_checkpoint(last)
    assert ck['global_step'] == 9 and ck['scaler']['scale'] == 2.0 ** (4 + 9), ck['scaler']


def test_resumed_worse_epochs_never_overwrite_a_better_best_pt(tmp_path, tiny_split):
    cfg = tiny_config(tmp_path, training__num_epochs=5, training__early_stopping_patience=0)
    res = train_with('stop_after_epoch:3', tmp_path, '--config', cfg)
    assert res.returncode == 130, show(res)
    w = tmp_path / 'runs' / 'tiny_fold_0' / 'weights'
    first = load_checkpoint(w / 'best.pt')
    # the resumed epochs predict class 0 for every image: val_acc 0.1 (4 of 40), worse than best
    assert first['best_metric'] > 0.1, first['best_metric']
    res = train_with('worse', tmp_path, '--config', cfg, '--resume', w / 'last.pt')
    assert res.returncode == 0, show(res)
    best = load_checkpoint(w / 'best.pt')      # the same model and metrics (the end of a run may
    for k in ('epoch', 'best_metric', 'metrics', 'history'):   # add calibration to the file)
        assert best[k] == first[k], k
    assert best['model'].keys() == first['model'].keys()
    for k in first['model']: assert torch.equal(best['model'][k], first['model'][k]), k
    last = load_checkpoint(w / 'last.pt')
    assert last['epoch'] == 5 and [r['val_acc'] for r in last['history'][3:]] == [0.1, 0.1]
    assert (last['best_metric'], last['best_epoch']) == (first['best_metric'], first['epoch'])
    s = json.loads((w.parent / 'summary.json').read_text())
    assert s['best_epoch'] == first['epoch'] and s['best_value'] == first['best_metric']
    log = (w.parent / 'logs' / 'train.log').read_text()
    resumed = [ln for ln in log.splitlines() if 'epoch 4/5 ' in ln or 'epoch 5/5 ' in ln]
    assert len(resumed) == 2 and not [ln for ln in resumed if '*best' in ln], log


@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_a_second_signal_aborts_at_once(tmp_path, tiny_split, lost_bytes, sig, code):
    """A step that never ends: the first signal waits for it, the second one must not. The run
    starts as a background job of a shell does, with SIGINT ignored (`ml-train ... &`, CI
    runners): the second signal must still abort."""
    cfg = tiny_config(tmp_path, training__num_epochs=3)
    proc = subprocess.Popen([sys.executable, '-c', SCRIPT, 'hang_at_step:4', '--config', str(cfg)],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                            cwd=tmp_path, env=env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    w = tmp_path / 'runs' / 'tiny_fold_0' / 'weights'
    deadline = time.monotonic() + 300                  # a hang fails the test, never blocks it
    try:
        for name in ('hung', 'first'):
            while not (tmp_path / name).exists():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f'no {name} file after 300 s'
                time.sleep(0.05)
            if name == 'hung':
                lost_bytes.watch(w)                    # epoch 1's best.pt and last.pt
                proc.send_signal(sig)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == code, (proc.returncode, err)
    assert 'Traceback' not in err and 'send it again to abort at once' in err, err
    assert lost_bytes.check() == 0
    assert load_checkpoint(w / 'last.pt')['epoch'] == 1


# ------------------------------------------------------------------ --fold, DP, YAML

@pytest.mark.parametrize('fold', ['2', '7'])
def test_fold_outside_the_folds_lists_those_that_exist(tmp_path, tiny_split, fold):
    res = run(['ml-train', '--config', tiny_config(tmp_path), '--fold', fold], tmp_path)
    assert_clean_error(res, f'fold {fold} does not exist', 'folds 0, 1')
    assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('where', ['flag', 'file'])
def test_negative_fold_lists_the_folds_that_exist(tmp_path, tiny_split, where):
    # (the config loader cannot know the folds: data.fold is checked against the splits)
    if where == 'flag':
        res = run(['ml-train', '--config', tiny_config(tmp_path), '--fold', '-1'], tmp_path)
    else:
        res = run(['ml-train', '--config', tiny_config(tmp_path, data__fold=-1)], tmp_path)
    assert_clean_error(res, 'fold -1 does not exist', 'folds 0, 1')
    assert not (tmp_path / 'runs').exists()


def test_dp_delta_not_below_one_over_n_is_refused_before_any_work(tmp_path, tiny_split):
    cfg = tiny_config(tmp_path, training__trainer_type='dp')
    res = run(['ml-train', '--config', cfg, '--set', 'training.dp.target_delta=0.05'], tmp_path)
    assert_clean_error(res, 'training.dp.target_delta must be below 1/N = 0.025',
                       '40 training images', '0.05')
    assert not list((tmp_path / 'runs').glob('*/weights/*.pt'))
    for bad, needle in (('training.dp.target_epsilon=0', 'training.dp.target_epsilon'),
                        ('training.dp.target_delta=1', 'training.dp.target_delta')):
        assert_clean_error(run(['ml-train', '--config', cfg, '--set', bad], tmp_path), needle)


@pytest.mark.parametrize('where', ['file', 'override'])
def test_yaml_that_would_run_code_is_refused_by_ml_train(tmp_path, tiny_split, where):
    marker = tmp_path / 'pwned'
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    cfg = tiny_config(tmp_path)
    if where == 'file':
        cfg.write_text(cfg.read_text() + f'seed: {tag}\n')
        res = run(['ml-train', '--config', cfg], tmp_path)
        assert_clean_error(res, 'tiny_config.yaml', 'python')
    else:
        res = run(['ml-train', '--config', cfg, '--set', f'seed={tag}'], tmp_path)
        assert_clean_error(res, 'seed')
    assert not marker.exists()
    assert not (tmp_path / 'runs').exists()
