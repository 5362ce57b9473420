"""`from imgcls import *` is the whole public API: a user's script with that one import runs the
pipeline end to end (sample data, splits, config, training, inference, ONNX export and the ONNX
predictor), and the names it gets are exactly the union of the public modules' `__all__`."""
from __future__ import annotations

import json

import pytest

from helpers import assert_ok, run_py

PIPELINE = '''
import json
_before = set(globals())
from imgcls import *
star = sorted(set(globals()) - _before - {'_before'})

raw = make_sample_dataset('data/tiny', size=16, n_per_class=8)
splits = make_splits(raw, folds=2, seed=0)
cfg_path = init_config('data/tiny', out_dir='configs')
cfg = load_config(cfg_path, {'data.num_workers': 0, 'training.num_epochs': 1,
                             'training.batch_size': 8, 'training.device': 'cpu',
                             'training.trainer_type': 'standard',
                             'model.type': 'custom', 'model.custom_architecture': 'tiny_net'})
trainer = train(cfg, progress=False)
best = trainer.run_dir/'weights'/'best.pt'

items, classes = load_split('data/tiny', 'test')
images = ['data/tiny/' + p for p, _ in items]
predictor = Predictor.from_checkpoint(best)
preds = predictor.predict(images, top_k=2, progress=False)
_, pt_probs = predictor.predict_proba(images, progress=False)

onnx_path = export_onnx(best)
onnx = OnnxPredictor(onnx_path)
onnx_probs = onnx.predict_proba(images)
diff = float(abs(pt_probs.numpy() - onnx_probs).max())
agree = float((pt_probs.numpy().argmax(1) == onnx_probs.argmax(1)).mean())

print(json.dumps({
    'star': star, 'run_dir': str(trainer.run_dir), 'epochs': trainer.summary['epochs_run'],
    'test_n': trainer.summary['test']['n'], 'n_images': len(images), 'classes': classes,
    'preds': [[p['predicted'], len(p['top_k'])] for p in preds],
    'onnx': str(onnx_path), 'onnx_classes': onnx.classes, 'diff': diff, 'agree': agree}))
'''

API = '''
import importlib, json, pkgutil
import imgcls
public = [m.name for m in pkgutil.iter_modules(imgcls.__path__)
          if not m.name.startswith('_') and m.name != 'cli']
per_module = {m: list(importlib.import_module(f'imgcls.{m}').__all__) for m in public}
print(json.dumps({'modules': public, 'per_module': per_module, 'all': list(imgcls.__all__)}))
'''


def _last_json(res):
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_star_import_runs_the_whole_pipeline(tmp_path):
    res = run_py(PIPELINE, tmp_path, timeout=600)
    assert_ok(res)
    out = _last_json(res)
    assert out['run_dir'] == 'runs/tiny_fold_0' and out['epochs'] == 1
    assert out['classes'] == [str(i) for i in range(10)]
    assert out['test_n'] == out['n_images'] == 16 == len(out['preds'])   # 20% of 80
    assert all(p in out['classes'] and k == 2 for p, k in out['preds'])
    assert out['onnx'] == 'runs/tiny_fold_0/weights/best.onnx'
    assert out['onnx_classes'] == out['classes']
    assert out['agree'] == 1.0 and out['diff'] < 1e-4, out
    for f in ('config.yaml', 'summary.json', 'weights/best.pt', 'weights/best.onnx',
              'logs/train.log', 'logs/classification_report_test.txt'):
        assert (tmp_path / 'runs' / 'tiny_fold_0' / f).is_file(), f
    assert (tmp_path / 'configs' / 'tiny_config.yaml').is_file()
    # the star import gave exactly the public API
    api = _last_json(run_py(API, tmp_path))
    assert out['star'] == sorted(api['all'])


@pytest.fixture(scope='module')
def api(tmp_path_factory):
    res = run_py(API, tmp_path_factory.mktemp('api'))
    assert_ok(res)
    return _last_json(res)


def test_all_is_exactly_the_union_of_the_modules_all(api):
    union = [n for m in api['modules'] for n in api['per_module'][m]]
    assert sorted(api['all']) == sorted(set(union))
    assert len(api['all']) == len(set(api['all'])), 'a name is listed twice in imgcls.__all__'


def test_no_name_is_public_in_two_modules(api):
    "Two modules exporting one name would make `from imgcls import *` keep only the last."
    owners = {}
    for m in api['modules']:
        for n in api['per_module'][m]: owners.setdefault(n, []).append(m)
    assert {n: ms for n, ms in owners.items() if len(ms) > 1} == {}


def test_every_public_module_is_in_the_star_import(api):
    "A new module is part of `from imgcls import *` (imgcls/__init__.py `_MODULES`)."
    assert api['modules'], 'no public modules found'
    missing = [m for m in api['modules'] if not api['per_module'][m]]
    assert missing == [], f'modules with an empty __all__: {missing}'
    all_ = set(api['all'])
    assert [m for m in api['modules'] if not set(api['per_module'][m]) <= all_] == []


def test_public_names_are_public(api):
    assert [n for n in api['all'] if n.startswith('_')] == []


def test_no_public_name_shadows_a_module(api, tmp_path):
    assert sorted(set(api['all']) & set(api['modules'])) == []
    res = run_py('from imgcls import *\nimport imgcls, types\n'
                 'print(all(isinstance(getattr(imgcls, m), types.ModuleType) for m in '
                 f"{api['modules']!r}))", tmp_path)
    assert_ok(res)
    assert res.stdout.strip().splitlines()[-1] == 'True'
