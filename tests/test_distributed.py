"""`trainer_type: accelerate` with two CPU processes over gloo, launched as users launch it:
one run folder, metrics over exactly the validation set, and a checkpoint that any process loads."""
from __future__ import annotations

import json
import os
import socket
import subprocess

import yaml
from helpers import command, env, show

from imgcls.checkpoint import load_checkpoint
from imgcls.config import Config
from imgcls.data import get_dataloaders, get_datasets
from imgcls.evaluation import evaluate
from imgcls.models import model_from_checkpoint
from imgcls.splits import load_split


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _accelerate_config(tmp_path, num_epochs: int, batch_size: int, recipe: bool = False):
    """A config for the tiny dataset (`tiny_split`) with `trainer_type: accelerate`, on CPU;
    `recipe`: with model EMA, MixUp, test-time augmentation and two passes an epoch as well."""
    cfg = {'data': {'data_dir': 'data/tiny', 'image_size': 16, 'resize_size': 16, 'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0, **({'mixup': 0.2} if recipe else {})},
           'model': {'type': 'custom', 'custom_architecture': 'simple_cnn'},
           'optimizer': {'lr': 0.05},
           'training': {'trainer_type': 'accelerate', 'num_epochs': num_epochs,
                        'batch_size': batch_size, 'device': 'cpu',
                        **({'ema_decay': 0.9, 'epoch_repeats': 2} if recipe else {})},
           **({'evaluation': {'tta': True}} if recipe else {})}
    p = tmp_path / 'tiny_config.yaml'
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_two_cpu_processes_over_gloo(tmp_path, tiny_split):
    p = _accelerate_config(tmp_path, num_epochs=2, batch_size=8, recipe=True)
    e = {**env(), 'ACCELERATE_USE_CPU': '1', 'OMP_NUM_THREADS': '1'}
    args = [command('accelerate'), 'launch', '--multi_gpu', '--num_processes', '2',
            '--main_process_port', str(_free_port()), '--no_python', command('ml-train'),
            '--config', str(p)]
    res = subprocess.run(args, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, show(res)
    assert 'Traceback' not in res.stderr, show(res)
    runs = sorted(os.listdir(tmp_path / 'runs'))
    assert runs == ['tiny_fold_0'], runs
    rd = tmp_path / 'runs' / 'tiny_fold_0'
    log = (rd / 'logs' / 'train.log').read_text()
    assert 'accelerate: 2 process(es)' in log, log
    assert log.count('epoch 1/2') == 1 and log.count('epoch 2/2') == 1, log
    s = json.loads((rd / 'summary.json').read_text())
    assert s['val']['n'] == 40 and s['test']['n'] == 20, s   # every image once, no padding repeats
    assert s['test_tta']['n'] == 20 and all('ema_val_acc' in h for h in s['history']), s
    assert s['best_weights'] in ('model', 'ema'), s
    # epoch_repeats 2: each process takes its half of two passes an epoch, batches of 8
    n_train = len(load_split(tmp_path / 'data' / 'tiny', 'train', fold=0)[0])
    last = load_checkpoint(rd / 'weights' / 'last.pt')
    assert last['global_step'] == 2 * -(-2 * n_train // (8 * 2)), (last['global_step'], n_train)
    assert sum(map(sum, json.loads((rd / 'logs' / 'metrics_val.json').read_text())
                   ['confusion_matrix'])) == 40
    # the checkpoint loads in one process and gives the same test accuracy
    model, ck = model_from_checkpoint(rd / 'weights' / 'best.pt')
    c = Config(ck['config'])
    c.data['data_dir'] = str(tmp_path / 'data' / 'tiny')
    dls = get_dataloaders(c, get_datasets(c, splits=('test',)))
    m, _, _ = evaluate(model, dls['test'], ck['classes'])
    assert abs(m['acc'] - s['test']['acc']) < 1e-9, (m['acc'], s['test'])


_STOP_SCRIPT = '''
import sys
from imgcls.config import load_config
from imgcls.trainer import get_trainer
from imgcls.training import Callback, TrainingInterrupted

class StopOnRankZero(Callback):
    "What a signal to one process does: rank 0 asks to stop at step 2 of epoch 2."
    def after_step(self, t):
        if t.accelerator.is_main_process and t.epoch == 1 and t.step_in_epoch == 2:
            t.request_stop()

cfg = load_config(sys.argv[1])
try: get_trainer(cfg, callbacks=[StopOnRankZero()], progress=False).fit()
except TrainingInterrupted: sys.exit(130)
'''


def test_two_process_run_stopped_mid_epoch_resumes_in_one_process(tmp_path, tiny_split):
    "Resume across a change in the number of processes: stopped with 2, finished with 1."
    p = _accelerate_config(tmp_path, num_epochs=3, batch_size=4)
    script = tmp_path / 'stop_early.py'
    script.write_text(_STOP_SCRIPT)
    e = {**env(), 'ACCELERATE_USE_CPU': '1', 'OMP_NUM_THREADS': '1'}
    args = [command('accelerate'), 'launch', '--multi_gpu', '--num_processes', '2',
            '--main_process_port', str(_free_port()), str(script), str(p)]
    res = subprocess.run(args, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0, show(res)          # both processes stopped, as agreed
    rd = tmp_path / 'runs' / 'tiny_fold_0'
    assert sorted(os.listdir(tmp_path / 'runs')) == ['tiny_fold_0']
    last = rd / 'weights' / 'last.pt'
    assert last.exists(), show(res)
    import torch
    ck = torch.load(last, weights_only=True)
    assert (ck['num_processes'], ck['epoch'], ck['step_in_epoch']) == (2, 1, 2), \
        {k: ck.get(k) for k in ('num_processes', 'epoch', 'step_in_epoch')}
    # one process, no launcher: epoch 2 starts again, the run finishes over the whole val set
    res = subprocess.run([command('ml-train'), '--config', str(p), '--resume', str(last)],
                         cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, show(res)
    assert 'stopped mid-epoch with 2 process(es) and resumes with 1: epoch 2 starts again' in (
        res.stdout + res.stderr), show(res)
    s = json.loads((rd / 'summary.json').read_text())
    assert s['epochs_run'] == 3 and s['val']['n'] == 40 and s['test']['n'] == 20, s
    assert [h['epoch'] for h in s['history']] == [1, 2, 3], s['history']


_FINE_TUNE_SCRIPT = '''
import json, sys
import torch
from imgcls.config import load_config
from imgcls.trainer import get_trainer
from imgcls.training import Callback

class BodySums(Callback):
    "Each process writes its own view of the body after each epoch."
    def before_fit(self, t): self.rows = [self.sums(t)]
    def after_epoch(self, t, m):
        self.rows.append(self.sums(t))
        rank = t.accelerator.process_index
        with open(sys.argv[2] + f'.{rank}.json', 'w') as f: json.dump(self.rows, f)
    @staticmethod
    def sums(t):
        sd = t.unwrapped_model.state_dict()
        return {k: float(v.double().sum()) for k, v in sd.items() if v.is_floating_point()}

get_trainer(load_config(sys.argv[1]), callbacks=[BodySums()], progress=False).fit()
'''


def test_two_process_fine_tuning_freezes_then_trains_the_body_in_step(tmp_path, tiny_split):
    """Freeze epochs under DDP: the body stays as loaded (weights and BatchNorm statistics) in both
    processes, the head learns, then the body learns, the two processes always agreeing."""
    import torch

    from imgcls.config import load_config
    from imgcls.models import get_model, head_names
    p = _accelerate_config(tmp_path, num_epochs=2, batch_size=4)
    cfg = yaml.safe_load(p.read_text())
    pre = tmp_path / 'pretrained.pt'
    torch.manual_seed(1)
    net = get_model(load_config(None, {'model.type': 'custom',
                                       'model.custom_architecture': 'simple_cnn'}), 2)
    torch.save(net.state_dict(), pre)
    head = set(head_names(net, 2))
    cfg['model'].update(pretrained=True, weights_path=str(pre))
    cfg['training']['freeze_epochs'] = 1
    cfg['optimizer']['backbone_lr_mult'] = 0.1
    p.write_text(yaml.safe_dump(cfg))
    script = tmp_path / 'fine_tune.py'
    script.write_text(_FINE_TUNE_SCRIPT)
    e = {**env(), 'ACCELERATE_USE_CPU': '1', 'OMP_NUM_THREADS': '1'}
    args = [command('accelerate'), 'launch', '--multi_gpu', '--num_processes', '2',
            '--main_process_port', str(_free_port()), str(script), str(p),
            str(tmp_path / 'sums')]
    res = subprocess.run(args, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, show(res)
    ranks = [json.loads((tmp_path / f'sums.{r}.json').read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]                       # the processes never disagree
    start, after1, after2 = ranks[0]
    loaded = {k: float(v.double().sum()) for k, v in net.state_dict().items()
              if v.is_floating_point()}
    body = [k for k in start if k not in head]
    assert any('running_mean' in k for k in body), body
    assert all(start[k] == loaded[k] == after1[k] for k in body)   # frozen: exactly as loaded
    assert any(start[k] != after1[k] for k in head)                 # the head learnt
    assert any(after1[k] != after2[k] for k in body)                # then the body did
    log = (tmp_path / 'runs' / 'tiny_fold_0' / 'logs' / 'train.log').read_text()
    assert 'the body is unfrozen' in log, log
    # a linear probe: the body is left out of DDP for good (no gradient computed or reduced)
    cfg['training'].update(freeze_epochs=0, mode='linear_probe', num_epochs=1)
    cfg['output'] = {'runs_dir': 'probe_runs'}
    p.write_text(yaml.safe_dump(cfg))
    args[-1] = str(tmp_path / 'probe')
    res = subprocess.run(args, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and 'Traceback' not in res.stderr, show(res)
    ranks = [json.loads((tmp_path / f'probe.{r}.json').read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    start, after = ranks[0]
    assert all(start[k] == loaded[k] == after[k] for k in body)
    assert any(start[k] != after[k] for k in head)
