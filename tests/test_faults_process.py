"""Process faults for real: a training process killed inside a checkpoint save, and a write that
fails at the kernel (RLIMIT_FSIZE, the same EFBIG/ENOSPC path as a full disk) in the middle of a
run. The previous `best.pt`/`last.pt` must survive intact, and the error must be one clear line."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import yaml
from helpers import env, run, show

from imgcls.checkpoint import load_checkpoint

CFG = {'data': {'data_dir': 'data/tiny', 'image_size': 16, 'resize_size': 16, 'num_workers': 0},
       'augmentation': {'horizontal_flip': 0.0},
       'model': {'type': 'custom', 'custom_architecture': 'simple_cnn'},
       'training': {'num_epochs': 4, 'batch_size': 16, 'device': 'cpu',
                    'early_stopping_patience': 0}}

# Runs `ml-train` in-process with a callback that arms a fault after epoch 2's checkpoints.
SCRIPT = textwrap.dedent('''
    import hashlib, json, os, resource, signal, sys
    import imgcls.core, imgcls.trainer
    from imgcls.cli import ml_train
    fault = sys.argv[1]

    class Arm(imgcls.trainer.Callback):
        def after_epoch(self, t, row):
            if t.epoch != 2: return
            w = t.run_dir / 'weights'    # what the fault must leave intact: snapshot.json
            snap = {p.name: [hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size]
                    for p in sorted(w.iterdir()) if p.is_file()}
            (t.run_dir.parent.parent / 'snapshot.json').write_text(json.dumps(snap))
            if fault == 'kill':        # die between writing the temporary file and replacing
                def _die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)
                imgcls.core.os.replace = _die
            elif fault == 'full':      # every further write beyond 64 KiB fails with EFBIG
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))

    orig = imgcls.trainer.BaseTrainer.__init__
    def init(self, *a, **k):
        orig(self, *a, **k); self.callbacks.append(Arm())
    imgcls.trainer.BaseTrainer.__init__ = init
    sys.exit(ml_train(sys.argv[2:]))
''')


def _run(tmp_path, fault):
    p = tmp_path / 'c.yaml'
    p.write_text(yaml.safe_dump(CFG))
    return subprocess.run([sys.executable, '-c', SCRIPT, fault, '--config', str(p)], cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=600)


def _weights(tmp_path):
    return tmp_path / 'runs' / 'tiny_fold_0' / 'weights'


def _watch_snapshot(tmp_path, lost_bytes):
    "Watch the weights folder as it was when the fault was armed (after epoch 2's saves)."
    snap = json.loads((tmp_path / 'snapshot.json').read_text())
    assert sorted(snap) == ['best.pt', 'last.pt'], snap
    lost_bytes.watch_snapshot(_weights(tmp_path), {k: h for k, (h, _) in snap.items()},
                              {k: n for k, (_, n) in snap.items()})


@pytest.mark.fault
def test_killed_inside_a_checkpoint_save(tmp_path, tiny_split, lost_bytes):
    res = _run(tmp_path, 'kill')
    assert res.returncode == -signal.SIGKILL, show(res)
    _watch_snapshot(tmp_path, lost_bytes)
    assert lost_bytes.check() == 0
    w = _weights(tmp_path)
    last = load_checkpoint(w / 'last.pt')          # the epoch-2 file, complete
    assert last['epoch'] == 2 and len(last['history']) == 2
    assert load_checkpoint(w / 'best.pt')['epoch'] <= 2
    # resume continues from the intact file; it also clears the temporary file the kill left

    res = run(['ml-train', '--config', tmp_path / 'c.yaml', '--resume', w / 'last.pt'], tmp_path)
    assert res.returncode == 0, show(res)
    assert load_checkpoint(w / 'last.pt')['epoch'] == 4
    assert not list(w.glob('.*.tmp')), list(w.iterdir())


@pytest.mark.fault
def test_write_fails_mid_run_like_a_full_disk(tmp_path, tiny_split, lost_bytes):
    res = _run(tmp_path, 'full')
    _watch_snapshot(tmp_path, lost_bytes)
    assert lost_bytes.check() == 0
    assert res.returncode == 1, show(res)
    assert 'Traceback' not in res.stderr, show(res)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith('error: ')]
    assert len(errors) == 1 and 'could not save the checkpoint' in errors[0], show(res)
    assert 'the previous file is unchanged' in errors[0]
    w = _weights(tmp_path)
    assert load_checkpoint(w / 'last.pt')['epoch'] == 2
    assert load_checkpoint(w / 'best.pt')['epoch'] <= 2
    assert not list(w.glob('.*.tmp')), list(w.iterdir())
