"""FAULTS.md "EXIF orientation: applied identically in training, inference and export
preprocessing". One upright scene is stored eight ways, each JPEG with the EXIF orientation (1-8)
that turns it upright again. The three preprocessing paths must give each file the same tensor,
and that tensor must be the upright scene's: the datasets of `imgcls.data` (training's base
tensors, validation's and test's transformed ones, streamed and cached),
`imgcls.inference.Predictor` and `imgcls.onnx_runtime.OnnxPredictor`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_good_class
from PIL import Image

from imgcls.checkpoint import load_checkpoint
from imgcls.config import Config
from imgcls.data import base_transform, eval_transform, get_datasets
from imgcls.export import export_onnx
from imgcls.onnx_runtime import OnnxPredictor
from imgcls.inference import Predictor
from imgcls.splits import make_splits

pytestmark = pytest.mark.fault

T = Image.Transpose
# stored = upright.transpose(STORE[k]); a viewer applying orientation k shows the upright scene
STORE = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
         6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}


def scene() -> Image.Image:
    "96x64, four flat quadrants (red, green / blue, white): any wrong turn or flip shows."
    a = np.zeros((64, 96, 3), np.uint8)
    a[:32, :48], a[:32, 48:] = (255, 0, 0), (0, 255, 0)
    a[32:, :48], a[32:, 48:] = (0, 0, 255), (255, 255, 255)
    return Image.fromarray(a)


@pytest.fixture(scope='module')
def exif_project(tmp_path_factory, _tiny_run_pristine):
    "A dataset whose class `a` holds the eight orientations, split; and the tiny run's best.pt."
    d = tmp_path_factory.mktemp('exif') / 'data' / 'exif'
    a = d / 'raw' / 'a'
    a.mkdir(parents=True)
    up = scene()
    for k, how in STORE.items():
        stored = up if how is None else up.transpose(how)
        exif = stored.getexif()
        exif[0x0112] = k
        stored.save(a / f'o{k}.jpg', quality=95, subsampling=0, exif=exif)   # 4:4:4, flat: exact
    make_good_class(d / 'raw' / 'b', 8, seed=7, w=40, h=30)
    make_splits(d / 'raw', folds=2, seed=0)
    ckpt = _tiny_run_pristine / 'runs' / 'tiny_fold_0' / 'weights' / 'best.pt'
    onnx = export_onnx(ckpt, output=d.parent / 'best.onnx')
    return dict(data=d, ckpt=ckpt, onnx=onnx)


def test_fixture_files_are_stored_turned(exif_project):
    for k in STORE:
        with Image.open(exif_project['data'] / 'raw' / 'a' / f'o{k}.jpg') as im:
            assert im.getexif().get(0x0112) == k
            assert im.size == ((96, 64) if k < 5 else (64, 96))


@pytest.mark.parametrize('cache', [False, True])
def test_training_inference_and_export_preprocess_identically(exif_project, cache):
    d = exif_project['data']
    cfg = Config(load_checkpoint(exif_project['ckpt'])['config'])
    cfg.data['data_dir'] = str(d)
    datasets = get_datasets(cfg, preload=cache)
    predictor = Predictor.from_checkpoint(exif_project['ckpt'], device='cpu')
    onnx = OnnxPredictor(exif_project['onnx'])
    tf = eval_transform(cfg)
    seen = {}
    for split, ds in datasets.items():
        for i in range(len(ds)):
            p = ds.path(i)
            if p.parent.name != 'a': continue
            base = ds.load(i)                                       # training's base tensor
            assert torch.equal(base, base_transform(predictor.load(p), predictor.resize_size)), p
            x = ds[i][0] if split != 'train' else tf(base)           # validation / test tensor
            y = predictor.preprocess(p)                             # inference
            z = torch.from_numpy(onnx.preprocess(p))                # export (NumPy + Pillow)
            assert torch.equal(x, y), p
            assert (x - z).abs().max() <= 1e-6, (p, float((x - z).abs().max()))
            seen[p.name] = x
    assert sorted(seen) == [f'o{k}.jpg' for k in STORE]
    upright = seen['o1.jpg']
    for name, x in seen.items():                                   # upright, every one of them
        assert (x - upright).abs().max() <= 1e-5, (name, float((x - upright).abs().max()))
    # and had the orientation been ignored, it would show
    turned = tf(base_transform(Image.open(d / 'raw' / 'a' / 'o6.jpg').convert('RGB'), 16))
    assert (turned - upright).abs().max() > 1


def test_predictions_agree_across_orientations_and_engines(exif_project):
    files = [exif_project['data'] / 'raw' / 'a' / f'o{k}.jpg' for k in STORE]
    p_torch = Predictor.from_checkpoint(exif_project['ckpt'], device='cpu').predict_proba(files)[1]
    p_onnx = OnnxPredictor(exif_project['onnx']).predict_proba(files)
    np.testing.assert_allclose(p_onnx, p_torch.numpy(), atol=1e-5)
    np.testing.assert_allclose(p_onnx, np.repeat(p_onnx[:1], len(files), 0), atol=1e-5)
