"""FAULTS.md "Export": the exported graph is the bare network in `eval()` mode (dropout and batch
statistics never leak into it, whatever wraps the model), and the batch axis is checked at batch 1
and batch N: a model whose export bakes in its batch size is refused with one clear line."""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_clean_error, assert_ok, command, env, run, show

from imgcls.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.fault

BEST = 'runs/tiny_fold_0/weights/best.pt'

# A model of the user's own, registered at start-up (sitecustomize on PYTHONPATH) so the real
# commands find it: simple_cnn whose output is reshaped by the batch size read as a Python int,
# which the exporter bakes into the graph (it traces at batch 2).
PLUGIN = '''
import torch
from imgcls.models import register_model, simple_cnn


class FixedBatch(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.net = simple_cnn(num_classes)

    def forward(self, x):
        y = self.net(x)
        return y.reshape(int(y.shape[0]), -1)


@register_model('fixed_batch_net')
def fixed_batch_net(num_classes, dropout=0.0):
    return FixedBatch(num_classes)
'''

MAKE_CKPT = '''
import sys
from imgcls.checkpoint import load_checkpoint, save_checkpoint
from imgcls.config import Config
from imgcls.models import get_model
ck = load_checkpoint(sys.argv[1])
cfg = Config(ck['config'])
cfg.model['custom_architecture'] = 'fixed_batch_net'
net = get_model(cfg, len(ck['classes']))
save_checkpoint(sys.argv[2], {**ck, 'config': cfg.to_dict(), 'model': net.state_dict()})
'''


@pytest.fixture
def fixed_batch(tiny_run):
    "(run a command with the plugin, the fixed-batch checkpoint's path relative to the project)"
    plugin = tiny_run / 'plugin'
    plugin.mkdir()
    (plugin / 'sitecustomize.py').write_text(PLUGIN)
    e = {**env(), 'PYTHONPATH': str(plugin)}

    def cmd(*args):
        return subprocess.run([command(args[0]) if args[0].startswith('ml-') else args[0],
                               *map(str, args[1:])], cwd=tiny_run, env=e, capture_output=True,
                              text=True, timeout=600)
    ck = 'runs/fixed/weights/best.pt'
    (tiny_run / ck).parent.mkdir(parents=True)
    res = cmd(sys.executable, '-c', MAKE_CKPT, BEST, ck)
    assert res.returncode == 0, show(res)
    return cmd, ck


def test_validate_refuses_a_batch_axis_baked_in(tiny_run, fixed_batch, lost_bytes):
    cmd, ck = fixed_batch
    lost_bytes.watch(tiny_run / 'runs')
    res = cmd('ml-export', '--checkpoint', ck, '--validate')
    assert_clean_error(res, ck, 'batch axis is fixed', 'not written')
    out = tiny_run / ck
    assert not out.with_suffix('.onnx').exists()
    rep = json.loads((out.parent / 'validation_report.json').read_text())
    assert not rep['passed'] and not rep['written'] and 'batch axis' in rep['failures'][0]
    assert lost_bytes.check() == 0


def test_plain_export_never_writes_a_fixed_batch_axis(tiny_run, fixed_batch):
    cmd, ck = fixed_batch
    res = cmd('ml-export', '--checkpoint', ck)
    out = (tiny_run / ck).with_suffix('.onnx')
    if res.returncode == 0:   # written: it must then run at batch 1 and batch N
        s = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
        for n in (1, 5):
            y = s.run(None, {'input': np.zeros((n, 3, 16, 16), np.float32)})[0]
            assert y.shape == (n, 10), (n, y.shape)
    else:
        assert_clean_error(res, ck, 'batch')
        assert not out.exists()


def test_dropout_and_batch_statistics_never_reach_the_onnx_file(tiny_run):
    "best.pt rebuilt with dropout 0.5 (no weights of its own): exported in eval() mode or it shows."
    ck = load_checkpoint(tiny_run / BEST)
    ck['config']['model']['dropout'] = 0.5
    dst = tiny_run / 'runs' / 'dropout' / 'weights' / 'best.pt'
    save_checkpoint(dst, ck)
    res = run(['ml-export', '--checkpoint', dst, '--validate', '--comprehensive-validate'],
              tiny_run)
    assert_ok(res)
    c = json.loads((dst.parent / 'validation_report.json').read_text())['comprehensive_validate']
    assert c['model']['top1_agreement'] == 1.0 and c['model']['max_abs_diff'] <= 1e-4, c
    from imgcls.models import model_from_checkpoint
    model, _ = model_from_checkpoint(dst)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())
    s = ort.InferenceSession(str(dst.with_suffix('.onnx')), providers=['CPUExecutionProvider'])
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad(): want = model.eval()(x).numpy()
    for n in (1, 6):   # the same logits alone and in a batch, run after run
        for _ in range(2):
            np.testing.assert_allclose(s.run(None, {'input': x[:n].numpy()})[0], want[:n],
                                       atol=1e-4)


def _exports_as_the_bare_eval_network(wrap):
    from opacus.validators import ModuleValidator

    from imgcls.export import model_to_onnx
    from imgcls.models import simple_cnn
    torch.manual_seed(0)
    net = ModuleValidator.fix(simple_cnn(4, dropout=0.5))     # GroupNorm, as Opacus trains it
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad(): want = net.eval()(x).numpy()
    w = wrap(copy.deepcopy(net)).train()                      # as training leaves it
    data = model_to_onnx(w, (16, 16))
    s = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    for n in (1, 5):
        np.testing.assert_allclose(s.run(None, {'input': x[:n].numpy()})[0], want[:n], atol=1e-4)
    names = [i.name for i in onnx.load_from_string(data).graph.initializer]
    assert not [n for n in names if n.startswith(('module.', '_module.', '_orig_mod.'))], names


WRAPPERS = {'DataParallel': torch.nn.DataParallel, 'torch.compile': torch.compile,
            'DataParallel(DataParallel)': lambda m: torch.nn.DataParallel(torch.nn.DataParallel(m))}


@pytest.mark.parametrize('wrapper', list(WRAPPERS))
def test_wrapped_training_mode_models_export_as_the_bare_eval_network(wrapper):
    _exports_as_the_bare_eval_network(WRAPPERS[wrapper])


@pytest.mark.parametrize('outer', ['GradSampleModule', 'DataParallel(GradSampleModule)'])
def test_opacus_wrapped_models_export_as_the_bare_eval_network(outer):
    from opacus import GradSampleModule
    wrap = (GradSampleModule if outer == 'GradSampleModule'
            else lambda m: torch.nn.DataParallel(GradSampleModule(m)))
    _exports_as_the_bare_eval_network(wrap)
