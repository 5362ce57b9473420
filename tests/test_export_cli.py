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
from helpers import assert_clean_error, assert_ok, error_lines, fresh_copy, run, run_py, show

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
    return fresh_copy(_trained, tmp_path / 'project')


def meta_of(path) -> dict:
    from imgcls.onnx_runtime import parse_metadata
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
import imgcls.export_checks as E  # export_checkpoint converts with the model_to_onnx it imported
from imgcls.cli import ml_export
from onnx import numpy_helper
export = E.model_to_onnx
def tampered(*a, **k):
    m = onnx.load_from_string(export(*a, **k))
    t = next(t for t in m.graph.initializer if tuple(t.dims) == (10,))
    w = numpy_helper.to_array(t).copy(); w[0] += 100.0
    t.CopyFrom(numpy_helper.from_array(w, t.name))
    return m.SerializeToString()
E.model_to_onnx = tampered
sys.exit(ml_export(sys.argv[1:]))
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
ck['dp'] = {'accountant': {}, 'epsilon': 1.0, 'delta': 1e-5, 'noise_multiplier': 1.0}  # DP's own
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
    from imgcls.onnx_runtime import OnnxPredictor
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
            "from imgcls.onnx_runtime import OnnxPredictor\n"
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


def test_help_names_the_deployment_flags(project):
    res = run(['ml-export', '--help'], project)
    assert_ok(res)
    for flag in ('--with-preprocessing', '--with_preprocessing', '--quantize', '--calib_images',
                 '--calib-images', '--int8_range', '--int8-range'):
        assert flag in res.stdout, flag
    assert 'CV folder' in res.stdout


# ------------------------------------------------------------------ --with-preprocessing

def decoded(path) -> np.ndarray:
    "What a deployment feeds: the file decoded to upright uint8 RGB, not resized."
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))


def make_big_jpeg_dataset(root: Path) -> Path:
    """data/big: the digits at 28 px, stored as JPEGs turned a quarter left with the EXIF tag
    that turns them upright, split in 2 folds: every file is turned and downscaled."""
    from PIL import Image
    from imgcls.images import make_sample_dataset
    from imgcls.splits import make_splits
    raw = make_sample_dataset(root / 'data' / 'big', size=28, n_per_class=6)
    for f in sorted(raw.rglob('*.png')):
        im = Image.open(f).convert('RGB').rotate(90, expand=True)
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(f.with_suffix('.jpg'), quality=95, exif=exif)
        f.unlink()
    make_splits(raw, folds=2, seed=0)
    return raw.parent


def test_with_preprocessing_takes_decoded_uint8_images(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--with-preprocessing',
               '--validate', '--comprehensive-validate'], project)
    assert_ok(res)
    assert 'uint8 images (batch, height, width, 3)' in res.stdout, show(res)
    assert 'preprocessing parity on 20 raw test images' in res.stdout, show(res)
    assert 'top-1 agreement 100.00%' in res.stdout, show(res)
    out = ck.with_suffix('.onnx')
    (inp,) = session(out).get_inputs()
    assert (inp.name, inp.type, inp.shape) == ('image', 'tensor(uint8)',
                                               ['batch', 'height', 'width', 3])
    m = meta_of(out)
    assert m['input_name'] == 'image' and m['input_layout'].startswith('NHWC uint8')
    assert m['classes'] == [str(i) for i in range(10)] and 'temperature' in m
    # our own check: ONNX Runtime on the decoded files gives PyTorch's classes
    logits, _, _, paths = torch_test_logits(project, ck)
    s = session(out)
    y = np.concatenate([s.run(None, {'image': decoded(p)[None]})[0] for p in paths])
    np.testing.assert_allclose(y, logits, atol=1e-4, rtol=0)
    # the ONNX-only predictor feeds it decoded images, where torch cannot be imported
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from imgcls.onnx_runtime import OnnxPredictor\n"
            "print(json.dumps(OnnxPredictor(sys.argv[1]).logits(sys.argv[2:]).tolist()))")
    res = run_py(code, project, out, *paths)
    assert_ok(res)
    np.testing.assert_allclose(np.array(json.loads(res.stdout)), y, atol=1e-6)
    rep = json.loads((ck.parent / 'validation_report.json').read_text())
    pp = rep['preprocessing_parity']
    assert pp['top1_agreement'] == 1.0 and pp['images'] == 20 and rep['passed']
    assert rep['validate']['input_type'] == 'uint8'
    # images that need resizing: 28 px JPEGs with an EXIF rotation
    make_big_jpeg_dataset(project)
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--with-preprocessing',
               '--data_dir', 'data/big', '--output', 'big.onnx'], project)
    assert_ok(res)
    pp = json.loads((project / 'validation_report.json').read_text())['preprocessing_parity']
    assert pp['images'] >= 10 and pp['top1_agreement'] >= 0.9, pp
    assert pp['max_input_diff_grey_levels'] <= 1.0 + 1e-3, pp
    assert f"top-1 agreement {pp['top1_agreement']:.2%}" in res.stdout


@pytest.mark.fault
def test_with_preprocessing_without_test_images_or_at_an_old_opset(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--with-preprocessing',
               '--data_dir', 'nowhere'], project)
    assert_ok(res)  # the file is written; the parity check says it was skipped and why
    assert 'preprocessing parity: skipped' in res.stdout, show(res)
    assert 'test images are not found' in res.stdout and '--data_dir' in res.stdout
    assert session(ck.with_suffix('.onnx')).get_inputs()[0].type == 'tensor(uint8)'
    ck.with_suffix('.onnx').unlink()
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--with-preprocessing',
               '--opset', '14'], project)
    assert_clean_error(res, '--with-preprocessing needs opset 18 or later', 'got --opset 14')
    assert not ck.with_suffix('.onnx').exists()


# ------------------------------------------------------------------ --quantize int8

def test_quantize_int8_writes_a_calibrated_copy_and_reports_it(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int8',
               '--calib_images', '32', '--bench_iters', '5', '--bench_warmup', '1',
               '--bench_threads', '1', '--batch_size', '8'], project)
    assert_ok(res)
    q = ck.with_name('best.int8.onnx')
    assert q.is_file() and ck.with_suffix('.onnx').is_file()
    assert f'wrote {RUN}/weights/best.int8.onnx (int8)' in res.stdout, show(res)
    assert 'int8 on 20 test images: accuracy fp32' in res.stdout, show(res)
    assert 'int8 speed-up' in res.stdout and 'calibrated on 32 training images' in res.stdout
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops, ops
    assert 'int8 static QDQ' in meta_of(q)['quantization']
    # 7-bit weights by default, said in the output, the metadata and the report, with the CPU
    assert 'int8 weights: 7-bit (--int8_range reduced' in res.stdout, show(res)
    assert meta_of(q)['int8_range'] == 'reduced' and '7-bit' in meta_of(q)['quantization']
    assert max(int(np.abs(w).max()) for w in int8_weights(q)) <= 64
    # our own comparison: fp32 vs int8 on the test images, fed through ONNX Runtime
    _, labels, ds, _ = torch_test_logits(project, ck)
    x = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    a = session(ck.with_suffix('.onnx')).run(None, {'input': x})[0]
    b = session(q).run(None, {'input': x})[0]
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.8
    rep = json.loads((ck.parent / 'validation_report.json').read_text())['quantize']
    assert rep['written'] and rep['calibration_images'] == 32 and rep['images'] == 20
    from imgcls.core import cpu_features
    assert rep['int8_range'] == 'reduced' and rep['cpu']['vnni'] == cpu_features()['vnni']
    assert f"(CPU: {rep['cpu']['description']})" in res.stdout
    assert rep['accuracy']['fp32'] == (a.argmax(1) == labels).mean()
    sp = rep['speed']
    assert (sp['iters'], sp['batch_size'], sp['threads']) == (5, 8, 1)
    for k in ('fp32', 'int8'): assert sp[k]['latency_ms_median'] > 0 and sp[k]['throughput_ips'] > 0


def int8_weights(path) -> list:
    "The int8 weight tensors of a QDQ model (the int8 initializers DequantizeLinear reads)."
    from onnx import numpy_helper
    g = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    return [inits[n.input[0]] for n in g.node if n.op_type == 'DequantizeLinear'
            and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]


def test_int8_range_full_is_8_bit_and_warns_where_the_cpu_has_no_vnni(project):
    from imgcls.onnx_runtime import int8_full_range_safe
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int8',
               '--int8_range', 'full', '--calib_images', '16', '--bench_iters', '3',
               '--bench_warmup', '0'], project)
    assert_ok(res)
    q = ck.with_name('best.int8.onnx')
    assert meta_of(q)['int8_range'] == 'full' and '8-bit' in meta_of(q)['quantization']
    assert max(int(np.abs(w).max()) for w in int8_weights(q)) == 127
    assert 'int8 weights: 8-bit (--int8_range full' in res.stdout, show(res)
    warned = 'no VNNI' in res.stderr and '--int8_range reduced' in res.stderr
    assert warned == (not int8_full_range_safe()), show(res)  # this CPU decides


def test_quantize_with_preprocessing_makes_two_uint8_files(project):
    ck = project / RUN / 'weights' / 'best.pt'
    assert_ok(run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int8',
                   '--with-preprocessing', '--calib-images', '16', '--bench-iters', '3',
                   '--bench-warmup', '0'], project))
    _, _, _, paths = torch_test_logits(project, ck)
    outs = []
    for f in ('best.onnx', 'best.int8.onnx'):
        s = session(ck.with_name(f))
        assert s.get_inputs()[0].type == 'tensor(uint8)', f
        outs.append(np.concatenate([s.run(None, {'image': decoded(p)[None]})[0] for p in paths]))
    assert (outs[0].argmax(1) == outs[1].argmax(1)).mean() >= 0.8


@pytest.mark.fault
def test_bad_quantize_requests_are_one_clear_line(project):
    ck = project / RUN / 'weights' / 'best.pt'
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int4'],
              project)
    assert_clean_error(res, '--quantize takes int8', "got 'int4'")
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int8',
               '--calib_images', '0'], project)
    assert_clean_error(res, 'calib_images must be >= 1, got 0')
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int8',
               '--int8_range', '7bit'], project)
    assert_clean_error(res, '--int8_range takes reduced', "got '7bit'")
    res = run(['ml-export', '--checkpoint', f'{RUN}/weights/best.pt', '--quantize', 'int8',
               '--data_dir', 'nowhere'], project)
    assert_clean_error(res, "int8 calibration needs the run's training images", 'not written')
    assert not ck.with_suffix('.onnx').exists() and not ck.with_name('best.int8.onnx').exists()


# ------------------------------------------------------------------ fold ensembles

@pytest.fixture(scope='module')
def _cv_trained(tmp_path_factory, _trained) -> Path:
    "The trained project with a cross-validation folder (`ml-train --fold all`, 2 fold models)."
    root = tmp_path_factory.mktemp('export_cv') / 'project'
    shutil.copytree(_trained, root)
    assert_ok(run(['ml-train', '--config', 'configs/tiny_config.yaml', '--fold', 'all',
                   '--num_epochs', '1'], root))
    return root


@pytest.fixture
def cv_project(tmp_path, _cv_trained) -> Path:
    "A fresh copy of the project with its cross-validation folder."
    return fresh_copy(_cv_trained, tmp_path / 'project')


def test_cv_folder_exports_one_ensemble_graph(cv_project):
    project = cv_project
    [cv] = [p for p in (project / 'runs').iterdir() if (p / 'cv_report.json').is_file()]
    rel = cv.relative_to(project)
    res = run(['ml-export', '--checkpoint', rel, '--validate', '--comprehensive-validate'],
              project)
    assert_ok(res)
    out = cv / 'ensemble.onnx'
    assert out.is_file() and f'wrote {rel}/ensemble.onnx' in res.stdout, show(res)
    assert 'ensemble of 2 folds' in res.stdout
    m = meta_of(out)
    assert (m['folds'], m['temperature'], m['checkpoint']) == (2, 1.0, str(rel))
    rep = json.loads((cv / 'validation_report.json').read_text())
    assert rep['passed'] and rep['comprehensive_validate']['model']['top1_agreement'] == 1.0
    # the file's probabilities are the cross-validation report's soft vote on the test set
    import csv
    rows = list(csv.DictReader((cv / 'ensemble_test_predictions.csv').open()))
    from imgcls.onnx_runtime import OnnxPredictor
    pred = OnnxPredictor(out)
    p = pred.predict_proba([project / 'data' / 'tiny' / r['path'] for r in rows])
    ref = np.array([[float(r[f'p_{c}']) for c in pred.classes] for r in rows])
    np.testing.assert_allclose(p, ref, atol=1e-5)
    # a glob may name CV folders; a run folder stands for its best.pt; another folder is refused
    res = run(['ml-export', '--checkpoint', 'runs/*_cv', '--output', 'elsewhere.onnx'], project)
    assert_ok(res)
    assert (project / 'elsewhere.onnx').is_file()
    assert_ok(run(['ml-export', '--checkpoint', RUN], project))
    assert (project / RUN / 'weights' / 'best.onnx').is_file()
    res = run(['ml-export', '--checkpoint', 'data'], project)
    assert_clean_error(res, 'data', 'not a run folder (no weights/best.pt)')


@pytest.mark.fault
def test_cv_folder_with_a_missing_fold_is_one_clear_line(cv_project):
    project = cv_project
    [cv] = [p for p in (project / 'runs').iterdir() if (p / 'cv_report.json').is_file()]
    [gone] = list(cv.glob('*fold_1/weights/best.pt'))
    gone.unlink()
    res = run(['ml-export', '--checkpoint', cv.relative_to(project)], project)
    assert_clean_error(res, 'fold checkpoint(s) missing', 'fold_1')
    assert not (cv / 'ensemble.onnx').exists()


# ------------------------------------------------------------------ progress bars

def run_on_a_terminal(args: list, cwd) -> tuple[int, str, str]:
    "Run a command with its standard error on a pseudo-terminal: (status, stdout, terminal text)."
    import os
    import pty
    import subprocess
    from helpers import command, env
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 100, 0, 0))  # 100 columns
    p = subprocess.Popen([command(args[0]), *map(str, args[1:])], cwd=cwd, env=env(),
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try: data = os.read(master, 65536)
        except OSError: break  # EIO: the child closed the terminal
        if not data: break
        chunks.append(data)
    out = p.stdout.read()
    p.wait(timeout=300)
    os.close(master)
    return p.returncode, out, b''.join(chunks).decode(errors='replace')


def test_progress_bars_on_a_terminal_and_none_in_logs(project):
    args = ['ml-export', '--checkpoint', 'runs/*/weights/best.pt', '--benchmark',
            '--bench_iters', '4', '--bench_warmup', '1', '--batch_size', '2']
    status, out, term = run_on_a_terminal(args, project)
    assert status == 0, (out, term)
    assert 'exporting' in term and '/3' in term, term          # the batch's bar
    assert 'benchmark pytorch, batch 1' in term and 'benchmark onnxruntime' in term, term
    assert 'summary: 3 of 3 checkpoint(s) exported' in out
    # not a terminal (a CI log): the same command draws no bar
    res = run(args, project)
    assert_ok(res)
    assert 'exporting' not in res.stderr and 'benchmark pytorch' not in res.stderr, show(res)
    assert '|' not in res.stderr, show(res)
