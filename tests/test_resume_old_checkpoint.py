"""A run stopped by an imgcls from before the training loop became callbacks (#34) resumes with
this one, and ends as that run would have without the stop.

`tests/data/checkpoint_before_callbacks/last.pt` was written by main at commit d00b4f1: a
deterministic `tiny_net` run with a moving average of the weights, on the built-in digits (20 an
image class, splits of seed 0, 16 px), stopped by SIGINT after step 2 of epoch 2 of 2.
`straight_final.pt` holds the final weights of the same run without the stop, by the same code on
the same machine. On that machine the resumed run ends with exactly those weights; on a CPU whose
float arithmetic differs in the last bits they stay within a tolerance far below what a resume that
lost any state (the optimizer's momentum, the position in the epoch, the schedule, the average,
the random generators) leaves: see `test_the_tolerance_tells_a_broken_resume`."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from imgcls.checkpoint import load_checkpoint
from imgcls.config import Config
from imgcls.images import make_sample_dataset
from imgcls.splits import make_splits
from imgcls.trainer import train

OLD = Path(__file__).parent / 'data' / 'checkpoint_before_callbacks'


DAMAGE = {   # a resume that loses part of the state: what the tolerance must tell from a good one
    'rng': lambda ck: ck.update(rng=None),                          # other augmentation, dropout
    'momentum': lambda ck: ck['optimizer'].update(state={}),        # a fresh optimizer's
    'position': lambda ck: ck.update(step_in_epoch=0, partial=None),  # epoch 2 from its start
}


def _resume(tmp_path: Path, damage: str | None = None):
    raw = make_sample_dataset(tmp_path / 'digits', n_per_class=20)
    make_splits(raw, folds=2, seed=0)
    weights = tmp_path / 'runs' / 'digits_fold_0' / 'weights'
    weights.mkdir(parents=True)
    ck = load_checkpoint(OLD / 'last.pt')
    if damage is not None:
        DAMAGE[damage](ck)
        torch.save(ck, weights / 'last.pt')
    else: shutil.copy(OLD / 'last.pt', weights / 'last.pt')
    cfg = Config(ck['config'])
    cfg.data['data_dir'] = str(raw.parent)
    cfg.output['runs_dir'] = str(tmp_path / 'runs')
    return ck, train(cfg, resume=weights / 'last.pt', force_resume=True, progress=False)


def _gap(trainer) -> float:
    a = torch.load(OLD / 'straight_final.pt', weights_only=True)
    b = load_checkpoint(trainer.run_dir / 'weights' / 'last.pt')['model']
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_an_old_checkpoint_resumes_to_the_run_it_would_have_been(tmp_path):
    ck, t = _resume(tmp_path)
    assert (ck['epoch'], ck['step_in_epoch']) == (1, 2)           # stopped inside epoch 2
    assert t.summary['epochs_run'] == 2 and len(t.history) == 2
    assert t.history[0] == ck['history'][0]                      # the old epoch kept as it was
    assert t.global_step == 2 * t.steps_per_epoch
    assert _gap(t) < 1e-4, _gap(t)


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_the_tolerance_tells_a_broken_resume(tmp_path, damage):
    "The same resume with a part of its state lost ends more than 10x the tolerance away."
    _, t = _resume(tmp_path, damage)
    assert _gap(t) > 1e-3, (damage, _gap(t))
