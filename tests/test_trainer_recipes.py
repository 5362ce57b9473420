"""Every trainer with every recipe `ml-init-config` can write (#35): a user who switches a written
config to another `training.trainer_type` (the guide's way to turn on differential privacy, say)
gets a run, not a refusal of a key the recipe set. Recipes: a small set trained from scratch
(`epoch_repeats` > 1), a mid-sized one (one pass an epoch, the full-pass plan), fine-tuning found
ImageNet weights (frozen epochs, a body rate), and a small set of 96 px pictures started from the
`small_resnet` weights imgcls ships (#32: TrivialAugment, pretrained with no weights_path). Each
is trained for two steps on a small real dataset, in this process (accelerate runs as one
process)."""
from __future__ import annotations

import pytest
import torch

from imgcls.autoconfig import recipe
from imgcls.config import load_config
from imgcls.models import offline_weights
from imgcls.trainer import train

TRAINERS = ('standard', 'mixed_precision', 'accelerate', 'dp')
MACHINE = {'cuda': False, 'cpus': 2, 'bf16': False, 'pretrained': None}


def _info(n_images, side, classes=10):
    return {'classes': [str(i) for i in range(classes)], 'counts': {},
            'n_images': n_images, 'median_size': (side, side), 'imbalance': 1.0}


@pytest.fixture(scope='module')
def resnet18_weights(tmp_path_factory):
    "ImageNet-shaped resnet18 weights (random, no download) where `find_pretrained` would look."
    import torchvision
    p = tmp_path_factory.mktemp('weights') / 'resnet18-f37072fd.pth'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), p)
    return p


def _recipes(weights):
    ft = {**MACHINE,
          'pretrained': {'type': 'base', 'architecture': 'resnet18', 'path': str(weights)}}
    return {'small-from-scratch': recipe(_info(180, 64, 3), MACHINE),
            'mid-sized': recipe(_info(10_000, 28), MACHINE),
            'fine-tune': recipe(_info(400, 96, 3), ft),
            'offline-start': recipe(_info(180, 96, 3), {**MACHINE, 'offline': offline_weights(
                'small_resnet')})}


@pytest.mark.fault
@pytest.mark.parametrize('trainer', TRAINERS)
@pytest.mark.parametrize('kind', ['small-from-scratch', 'mid-sized', 'fine-tune',
                                  'offline-start'])
def test_every_trainer_takes_every_written_recipe(tiny_split, tmp_path, resnet18_weights, kind,
                                                  trainer):
    values = {k: v for k, (v, _) in _recipes(resnet18_weights)[kind].items()}
    if kind == 'small-from-scratch': assert values['training.epoch_repeats'] > 1, values
    if kind == 'fine-tune': assert values['training.freeze_epochs'] >= 1, values
    if kind == 'offline-start':
        assert values['model.pretrained'] and values['augmentation.policy'] == 'trivial', values
    ov = {**values, 'data.data_dir': str(tiny_split), 'data.num_workers': 0,
          'training.trainer_type': trainer, 'training.num_epochs': 1,
          'training.limit_train_batches': 2, 'training.device': 'cpu',
          'output.runs_dir': str(tmp_path / 'runs')}
    if trainer == 'dp': ov['training.dp.target_delta'] = 1e-3   # below 1/N for the 64 images
    t = train(load_config(None, ov), progress=False)
    s = t.summary
    assert s['epochs_run'] == 1 and s['test']['n'] > 0, s
    # every step planned ran: two, or one where the recipe's batch holds the whole small set
    assert t.global_step == t.n_batches == min(2, t.n_batches) >= 1, (kind, trainer, t.global_step)
    if trainer == 'dp': assert s['epsilon'] > 0, s
