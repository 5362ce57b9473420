"""`ml-export` end to end, as a user runs it: every SPEC.md `ml-export` line on tiny trained runs,
the opset and input size read back from the file, ONNX Runtime against PyTorch on the run's real
test images, the ONNX-only predictor, checkpoints of each trainer, and corrupt checkpoints alone
and in a glob batch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from helpers import assert_clean_error, assert_ok, error_lines, run, run_py, show

RUN, MP_RUN, ACC_RUN = 'runs/standard', 'runs/mixed_precision', 'runs/accelerate'
RUNS = (RUN, MP_RUN, ACC_RUN)


def write_config(root: Path) -> Path:
    cfg = {'data': {'data_dir': 'data/tiny', 'image_size': 16, 'resize_size': 16, 'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0},
           'model': {'type': 'custom', 'custom_architecture': 'simple_cnn'},
           'optimizer': {'lr': 0.05},
           'training': {'num_epochs': 2, 'batch_size': 16, 'device': 'cpu'}}
    p = root / 'configs' / 'tiny_config.yaml'
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope='module')
def _trained(tmp_path_factory, _tiny_split_pristine) -> Path:
    """A project folder with the tiny dataset and runs of the standard, mixed-precision and
    accelerate (one process) trainers."""
    root = tmp_path_factory.mktemp('export_project')
    shutil.copytree(_tiny_split_pristine, root / 'data' / 'tiny')
    cfg = write_config(root)
    for r in RUNS:
        t = r.split('/')[1]
        train_and_rename(root, cfg, r, *([] if t == 'standard' else
                                         ['--training.trainer_type', t, '--num_epochs', '1']))
    return root


def train_and_rename(root: Path, cfg, dest: str, *args):
    "Run ml-train and move its new run folder to `dest` (run names are not this file's concern)."
    runs = root / 'runs'
    before = set(runs.iterdir()) if runs.exists() else set()
    assert_ok(run(['ml-train', '--config', cfg, *args], root))
    (new,) = set(runs.iterdir()) - before
    new.rename(root / dest)
    assert (root / dest / 'weights' / 'best.pt').is_file(), dest


@pytest.fixture
def project(tmp_path, _trained) -> Path:
    "A fresh copy of the trained project (run commands with cwd=project)."
    d = tmp_path / 'project'
    shutil.copytree(_trained, d)
    return d


def meta_of(path) -> dict:
    from imgcls.export import parse_metadata
    return parse_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])


def torch_test_logits(root: Path, ckpt: Path):
    "PyTorch logits and labels of the run's test split, and the test image paths."
    from imgcls.config import Config
    from imgcls.data import get_datasets
    from imgcls.evaluation import predict
    from imgcls.models import model_from_checkpoint
    model, ck = model_from_checkpoint(ckpt)
    cfg = Config(ck['config'])
    cfg.data['data_dir'] = str(root / cfg.data.data_dir)
    ds = get_datasets(cfg, splits=('test',), preload=False)['test']
    logits, labels = predict(model, torch.utils.data.DataLoader(ds, batch_size=7))
    return logits.numpy(), labels.numpy(), ds, [ds.path(i) for i in range(len(ds))]


# ------------------------------------------------------------------ the SPEC.md lines

def test_export_writes_onnx_beside_the_checkpoint(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt'], project)
    assert_ok(res)
    out = ck.with_suffix('.onnx')
    assert out.is_file() and f'wrote {RUN}/weights/best.onnx' in res.stdout
    assert not (ck.parent / 'validation_report.json').exists()  # no check asked for
    m = meta_of(out)
    assert m['classes'] == [str(i) for i in range(10)] and m['input_size'] == [16, 16]
    assert (m['architecture'], m['model_type'], m['opset']) == ('simple_cnn', 'custom', 18)
    assert m['mean'] == [0.485, 0.456, 0.406] and m['std'] == [0.229, 0.224, 0.225]
    assert m['resize_size'] == 16 and m['imgcls_version'] and m['trainer_type'] == 'standard'
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    s = session(out)
    for n in (1, 5):
        y = s.run(None, {'input': np.zeros((n, 3, 16, 16), np.float32)})[0]
        assert y.shape == (n, 10)


def test_validate_and_benchmark(project):
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--validate', '--benchmark'],
              project)
    assert_ok(res)
    assert 'onnx.checker ok' in res.stdout and 'batch 16 -> (16, 10)' in res.stdout
    assert 'PyTorch eager' in res.stdout and 'ONNX Runtime' in res.stdout
    assert 'batch 1 latency, median (ms)' in res.stdout and 'throughput' in res.stdout
    rep = json.loads((project / RUN / 'weights' / 'validation_report.json').read_text())
    assert rep['passed'] and rep['written'] and rep['onnx'] == f'{RUN}/weights/best.onnx'
    assert [r['batch'] for r in rep['validate']['runs']] == [1, 16]
    b = rep['benchmark']
    assert (b['iters'], b['warmup'], b['batch_size']) == (20, 3, 16)
    for engine in ('pytorch', 'onnxruntime'):
        assert set(b[engine]) == {'latency_ms_median', 'latency_ms_p95', 'throughput_ips'}
        assert all(v > 0 for v in b[engine].values())
    # iterations are configurable, with either spelling
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--benchmark',
               '--bench-iters', '4', '--bench_warmup', '0', '--batch-size', '3',
               '--bench-threads', '1'], project)
    assert_ok(res)
    b = json.loads((project / RUN / 'weights' / 'validation_report.json').read_text())['benchmark']
    assert (b['iters'], b['warmup'], b['batch_size'], b['iters_batch']) == (4, 0, 3, 3)
    assert b['threads'] == 1 and 'benchmark: cpu, 1 thread(s)' in res.stdout


def test_comprehensive_validate_compares_on_real_test_images(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--comprehensive-validate'],
              project)
    assert_ok(res)
    assert 'comprehensive-validate (model): 20 test images' in res.stdout
    rep = json.loads((ck.parent / 'validation_report.json').read_text())
    c = rep['comprehensive_validate']
    assert rep['passed'] and c['passed'] and c['images'] == 20
    assert c['model']['top1_agreement'] == 1.0 and c['pipeline']['top1_agreement'] == 1.0
    assert c['model']['max_abs_diff'] <= 1e-4 and c['pipeline']['max_abs_input_diff'] == 0.0
    assert c['accuracy']['pytorch'] == c['accuracy']['onnx']
    # our own comparison, independent of the module's: PyTorch vs ONNX Runtime on the test split
    logits, labels, ds, _ = torch_test_logits(project, ck)
    x = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    y = session(ck.with_suffix('.onnx')).run(None, {'input': x})[0]
    np.testing.assert_allclose(y, logits, atol=1e-4, rtol=0)
    assert (y.argmax(1) == logits.argmax(1)).all()
    # the other spelling works too
    assert_ok(run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt',
                   '--comprehensive_validate', '--max_images', '5'], project))
    assert json.loads((ck.parent / 'validation_report.json').read_text())[
        'comprehensive_validate']['images'] == 5


def test_glob_batch_exports_every_run(project):
    res = run(['ml-export', '--checkpoint', 'runs/*/weights/best.pt', '--validate'], project)
    assert_ok(res)
    for r in RUNS:
        assert (project / r / 'weights' / 'best.onnx').is_file(), show(res)
        rep = json.loads((project / r / 'weights' / 'validation_report.json').read_text())
        assert rep['passed'] and rep['written']
    s = json.loads((project / 'runs' / 'export_summary.json').read_text())
    assert (s['exported'], s['failed']) == (3, 0)
    assert 'summary: 3 of 3 checkpoint(s) exported' in res.stdout
    # each trainer's checkpoint exports, and the file says which trainer made it
    for r, t in zip(RUNS, ('standard', 'mixed_precision', 'accelerate')):
        assert meta_of(project / r / 'weights' / 'best.onnx')['trainer_type'] == t


def test_output_and_opset_14(project):
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--output', 'model.onnx',
               '--opset', '14'], project)
    assert_ok(res)
    out = project / 'model.onnx'
    assert out.is_file() and not (project / RUN / 'weights' / 'best.onnx').exists()
    proto = onnx.load(str(out))
    assert {o.domain: o.version for o in proto.opset_import}[''] == 14
    assert meta_of(out)['opset'] == 14
    onnx.checker.check_model(proto)
    y = session(out).run(None, {'input': np.zeros((3, 3, 16, 16), np.float32)})[0]
    assert y.shape == (3, 10)


def test_input_size_is_honoured(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--input_size', '224', '224'],
              project)
    assert_ok(res)
    out = ck.with_suffix('.onnx')
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert meta_of(out)['input_size'] == [224, 224] and meta_of(out)['resize_size'] == 224
    y = session(out).run(None, {'input': np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert y.shape == (2, 10)
    # non-square, the other spelling, checked on the real test images
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--input-size', '24', '20',
               '--output', 'wide.onnx', '--comprehensive-validate'], project)
    assert_ok(res)
    assert meta_of(project / 'wide.onnx')['input_size'] == [24, 20]
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--input_size', '224'],
              project)
    assert_clean_error(res, 'input_size takes two whole numbers', 'got 224')


# ------------------------------------------------------------------ faults

@pytest.mark.fault
def test_corrupt_checkpoint_is_one_clear_error(project):
    ck = project / RUN / 'weights' / 'best.pt'
    ck.write_bytes(ck.read_bytes()[:2000])
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--validate'], project)
    assert_clean_error(res, f'{RUN}/weights/best.pt', 'corrupt checkpoint')
    assert not ck.with_suffix('.onnx').exists()
    res = run(['ml-export', '--checkpoint', 'runs/nope/weights/best.pt'], project)
    assert_clean_error(res, 'runs/nope/weights/best.pt', 'no such checkpoint')
    res = run(['ml-export', '--checkpoint', 'nowhere/*/best.pt'], project)
    assert_clean_error(res, 'no checkpoint matches nowhere/*/best.pt')


@pytest.mark.fault
def test_glob_batch_goes_on_past_a_corrupt_checkpoint(project):
    bad = project / 'runs' / 'broken' / 'weights' / 'best.pt'
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b'PK\x03\x04 not really a zip')
    res = run(['ml-export', '--checkpoint', 'runs/*/weights/best.pt', '--validate'], project)
    assert res.returncode == 1, show(res)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)
    errs = error_lines(res)
    assert len(errs) == 1 and 'runs/broken/weights/best.pt' in errs[0], show(res)
    assert 'corrupt checkpoint' in errs[0]
    for r in RUNS: assert (project / r / 'weights' / 'best.onnx').is_file(), show(res)
    assert not bad.with_suffix('.onnx').exists()
    s = json.loads((project / 'runs' / 'export_summary.json').read_text())
    assert (s['exported'], s['failed']) == (3, 1)
    assert 'summary: 3 of 4 checkpoint(s) exported' in res.stdout and 'FAILED' in res.stdout
    res = run(['ml-export', '--checkpoint', 'runs/*/weights/best.pt', '--output', 'one.onnx'],
              project)
    assert_clean_error(res, '--output names one file', 'matches 4 checkpoints')


TAMPER = '''
import sys, onnx
import imgcls.export as E
from onnx import numpy_helper
export = E.model_to_onnx
def tampered(*a, **k):
    m = onnx.load_from_string(export(*a, **k))
    t = next(t for t in m.graph.initializer if tuple(t.dims) == (10,))
    w = numpy_helper.to_array(t).copy(); w[0] += 100.0
    t.CopyFrom(numpy_helper.from_array(w, t.name))
    return m.SerializeToString()
E.model_to_onnx = tampered
sys.exit(E.ml_export(sys.argv[1:]))
'''


@pytest.mark.fault
def test_a_mismatch_fails_comprehensive_validate_with_the_numbers(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run_py(TAMPER, project, '--checkpoint', f'{RUN}/weights/best.pt',
                 '--comprehensive-validate')
    line = assert_clean_error(res, 'max |logit difference|', '> atol 0.0001', 'top-1 agreement',
                              'not written', 'validation_report.json')
    assert f'{RUN}/weights/best.pt' in line
    assert not ck.with_suffix('.onnx').exists()
    rep = json.loads((ck.parent / 'validation_report.json').read_text())
    c = rep['comprehensive_validate']
    assert not rep['passed'] and not rep['written'] and c['model']['max_abs_diff'] > 50
    assert c['model']['top1_agreement'] < 0.99 and len(rep['failures']) == 4


@pytest.mark.fault
def test_bad_thresholds_are_refused(project):
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--comprehensive-validate',
               '--min_agreement', '1.5'], project)
    assert_clean_error(res, 'min_agreement must be between 0 and 1, got 1.5')


# ------------------------------------------------------------------ wrapped trainers' checkpoints

DP_CKPT = '''
import sys, torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from imgcls.checkpoint import load_checkpoint
from imgcls.config import Config
from imgcls.models import get_model
ck = load_checkpoint(sys.argv[1])
torch.manual_seed(0)
net = ModuleValidator.fix(get_model(Config(ck['config']), len(ck['classes'])))
for p in net.parameters(): p.data.normal_(0, 0.3)
ck['model'] = GradSampleModule(net).state_dict()  # keys start with _module.
ck['trainer_type'] = 'dp'
torch.save(ck, sys.argv[2])
ddp = {f'module.{k}': v for k, v in load_checkpoint(sys.argv[1])['model'].items()}
torch.save({**load_checkpoint(sys.argv[1]), 'model': ddp, 'trainer_type': 'accelerate'},
           sys.argv[3])
'''


@pytest.mark.fault
def test_dp_and_ddp_shaped_checkpoints_export(project):
    pytest.importorskip('opacus')
    w = project / RUN / 'weights'
    dp, ddp = project / 'runs' / 'dp_shaped' / 'weights', project / 'runs' / 'ddp' / 'weights'
    dp.mkdir(parents=True); ddp.mkdir(parents=True)
    assert_ok(run_py(DP_CKPT, project, w / 'best.pt', dp / 'best.pt', ddp / 'best.pt'))
    for d in (dp, ddp):
        res = run(['ml-export', '--checkpoint', d / 'best.pt', '--validate',
                   '--comprehensive-validate', '--data_dir', 'data/tiny'], project)
        assert_ok(res)
        c = json.loads((d / 'validation_report.json').read_text())['comprehensive_validate']
        assert c['model']['top1_agreement'] == 1.0, c
    # the DP network (GroupNorm) is what was exported, not the plain one (BatchNorm)
    ops = {n.op_type for n in onnx.load(str(dp / 'best.onnx')).graph.node}
    assert 'BatchNormalization' not in ops, ops


def test_a_dp_run_exports(project):
    import importlib.util
    pytest.importorskip('opacus')
    if importlib.util.find_spec('imgcls.privacy') is None: pytest.skip('no dp trainer here')
    train_and_rename(project, 'configs/tiny_config.yaml', 'runs/dp', '--training.trainer_type',
                     'dp', '--num_epochs', '1')
    ck = 'runs/dp/weights/best.pt'
    assert_ok(run(['ml-export', '--checkpoint', ck, '--validate', '--comprehensive-validate'],
                  project))
    rep = json.loads((project / ck).with_name('validation_report.json').read_text())
    assert rep['passed'] and rep['export']['trainer_type'] == 'dp'
    assert rep['comprehensive_validate']['model']['top1_agreement'] == 1.0


# ------------------------------------------------------------------ the ONNX-only predictor

def test_onnx_predictor_agrees_with_pytorch_on_the_test_split(project):
    from imgcls.export import OnnxPredictor
    ck = project / RUN / 'weights' / 'best.pt'
    assert_ok(run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt'], project))
    logits, labels, _, paths = torch_test_logits(project, ck)
    pred = OnnxPredictor(ck.with_suffix('.onnx'))
    probs = pred.predict_proba(paths, batch_size=6)
    from imgcls.checkpoint import load_checkpoint
    t = load_checkpoint(ck)['temperature']   # probabilities are calibrated by the temperature
    np.testing.assert_allclose(probs, (torch.from_numpy(logits) / t).softmax(1).numpy(), atol=1e-5)
    assert (probs.argmax(1) == logits.argmax(1)).all()
    assert [r['predicted'] for r in pred.predict(paths)] == [str(i) for i in logits.argmax(1)]
    # and it runs where torch cannot be imported
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from imgcls.export import OnnxPredictor\n"
            "p = OnnxPredictor(sys.argv[1]).predict_proba(sys.argv[2:])\n"
            "print(json.dumps(p.tolist()))")
    res = run_py(code, project, ck.with_suffix('.onnx'), *paths)
    assert_ok(res)
    np.testing.assert_allclose(np.array(json.loads(res.stdout)), probs, atol=1e-7)


def test_help_names_every_flag_in_both_spellings(project):
    res = run(['ml-export', '--help'], project)
    assert_ok(res)
    for flag in ('--comprehensive-validate', '--comprehensive_validate', '--input_size',
                 '--input-size', '--opset', '--output', '--benchmark', '--validate'):
        assert flag in res.stdout, flag
