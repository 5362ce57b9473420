"""`ml-inference` end to end, as a user runs it: the SPEC.md line as written (test-set report,
confusion matrix, predictions CSV in the run folder), predictions for files, folders and globs
that match a direct model call, and bad input refused with one clear line."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import (assert_clean_error, assert_ok, assert_usage_error, run, run_py, show,
                     tree_hash)

BEST = 'runs/my_run/weights/best.pt'
CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope='session')
def _trained_pristine(tmp_path_factory) -> Path:
    "A project with data/my_dataset (2 folds), its config, and a trained run in runs/my_run."
    from imgcls.images import make_sample_dataset
    from imgcls.splits import make_splits
    root = tmp_path_factory.mktemp('inference_project')
    raw = make_sample_dataset(root / 'data' / 'my_dataset', size=16, n_per_class=10)
    make_splits(raw, folds=2, seed=0)
    cfg = {'data': {'data_dir': 'data/my_dataset', 'image_size': 16, 'resize_size': 16,
                    'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0},
           'model': {'type': 'custom', 'custom_architecture': 'tiny_net'},
           'optimizer': {'lr': 0.05},
           'training': {'num_epochs': 2, 'batch_size': 16, 'device': 'cpu'}}
    (root / 'configs').mkdir()
    (root / 'configs' / 'my_dataset_config.yaml').write_text(yaml.safe_dump(cfg))
    res = run(['ml-train', '--config', 'configs/my_dataset_config.yaml'], root)
    assert_ok(res)
    [rd] = (root / 'runs').iterdir()                   # runs/my-dataset_fold_0
    rd.rename(root / 'runs' / 'my_run')
    return root


@pytest.fixture
def project(tmp_path, _trained_pristine) -> Path:
    d = tmp_path / 'project'
    shutil.copytree(_trained_pristine, d)
    return d


def direct(project: Path, paths: list, tta: bool = False):
    "Class probabilities of a direct model call: model_from_checkpoint + validation preprocessing."
    import torch

    from imgcls.config import Config
    from imgcls.data import base_transform, eval_transform
    from imgcls.images import load_image
    from imgcls.models import model_from_checkpoint
    model, ck = model_from_checkpoint(project / BEST)
    cfg = Config(ck['config'])
    tf = eval_transform(cfg)
    x = torch.stack([tf(base_transform(load_image(project / p, cfg.data.resize_size),
                                       cfg.data.resize_size))
                     for p in paths])
    t = ck.get('temperature', 1.0)   # the predictor reports temperature-calibrated probabilities
    with torch.no_grad():
        p = (model(x) / t).softmax(1)
        if tta: p = (p + (model(x.flip(-1)) / t).softmax(1)) / 2
    assert ck['classes'] == CLASSES
    return p


def test_spec_line_evaluates_the_test_split(project):
    rd = project / 'runs' / 'my_run'
    report = (rd / 'logs' / 'classification_report_test.txt').read_text()
    summary = json.loads((rd / 'summary.json').read_text())
    res = run(['ml-inference', '--checkpoint_path', BEST], project)
    assert_ok(res)
    acc = summary['test']['acc']
    assert f'test accuracy {acc:.4f}' in res.stdout, show(res)
    # the report training wrote, written again with the same content; the confusion matrix
    assert (rd / 'logs' / 'classification_report_test.txt').read_text() == report
    assert (rd / 'logs' / 'confusion_matrix_test.png').read_bytes()[:4] == b'\x89PNG'
    assert json.loads((rd / 'logs' / 'metrics_test.json').read_text())['acc'] == acc
    # predictions: one row a test image, in the order of the test index
    rows = list(csv.DictReader((rd / 'predictions_test.csv').open()))
    assert list(rows[0]) == ['path', 'true', 'predicted', 'probability'] + [
        f'p_{c}' for c in CLASSES]
    test_index = (project / 'data/my_dataset/splits/test.txt').read_text().split()
    assert [r['path'] for r in rows] == [f'data/my_dataset/{t}' for t in test_index]
    assert [r['true'] for r in rows] == [t.split('/')[1] for t in test_index]
    assert sum(r['true'] == r['predicted'] for r in rows) / len(rows) == acc
    probs = direct(project, [r['path'] for r in rows])
    for r, p in zip(rows, probs):
        got = [float(r[f'p_{c}']) for c in CLASSES]
        assert max(abs(a - b) for a, b in zip(got, p.tolist())) < 1e-5, (r, p)
        assert r['predicted'] == CLASSES[int(p.argmax())]
        assert abs(float(r['probability']) - float(p.max())) < 1e-5


def test_predictions_for_files_folders_and_globs(project):
    raw = 'data/my_dataset/raw'
    one = sorted(p.name for p in (project / raw / '5').iterdir())[0]
    res = run(['ml-inference', '--checkpoint-path', BEST, '--images', f'{raw}/3', f'{raw}/4/*.png',
               f'{raw}/5/{one}', f'{raw}/3/*.png', '--top_k', '3'], project)
    assert_ok(res)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    in3 = sorted(f'{raw}/3/{p.name}' for p in (project / raw / '3').iterdir())
    in4 = sorted(f'{raw}/4/{p.name}' for p in (project / raw / '4').iterdir())
    expected_paths = in3 + in4 + [f'{raw}/5/{one}']       # repeats (3/*.png) dropped
    assert [r['path'] for r in rows] == expected_paths
    assert list(rows[0]) == ['path', 'predicted', 'probability', 'class_1', 'probability_1',
                             'class_2', 'probability_2', 'class_3', 'probability_3']
    probs = direct(project, expected_paths)
    for r, p in zip(rows, probs):
        vals, idx = p.topk(3)
        assert [r[f'class_{i}'] for i in (1, 2, 3)] == [CLASSES[j] for j in idx.tolist()]
        for i, v in zip((1, 2, 3), vals.tolist()):
            assert abs(float(r[f'probability_{i}']) - v) < 1e-5
        assert r['predicted'] == r['class_1']

    # JSON to a file, with test-time augmentation, in small batches
    res = run(['ml-inference', '--checkpoint_path', BEST, '--images', f'{raw}/7', '--tta',
               '--format', 'json', '--output', 'preds/out.json', '--batch-size', '3',
               '--top-k', '20'], project)
    assert_ok(res)
    assert res.stdout.strip() == 'wrote 10 predictions to preds/out.json'
    out = json.loads((project / 'preds' / 'out.json').read_text())
    assert out['tta'] is True and out['classes'] == CLASSES and out['top_k'] == 10
    assert out['skipped'] == []
    paths = [p['path'] for p in out['predictions']]
    probs = direct(project, paths, tta=True)
    for pred, p in zip(out['predictions'], probs):
        got = {t['class']: t['probability'] for t in pred['top_k']}
        assert len(got) == 10
        assert max(abs(got[c] - v) for c, v in zip(CLASSES, p.tolist())) < 1e-5
        assert pred['predicted'] == CLASSES[int(p.argmax())]


IN_PROCESS = """
import contextlib, io, json, sys
from imgcls.inference import ml_inference
out = []
for args in json.loads(sys.argv[1]):
    err, std = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        code = ml_inference(args)
    out.append([code, std.getvalue(), err.getvalue()])
print(json.dumps(out))
"""


def _one_error_line(code, err, needles, what):
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert code == 1 and len(lines) == 1 and 'Traceback' not in err, (what, code, err)
    for n in needles: assert n in lines[0], (what, n, lines[0])


@pytest.mark.fault
def test_bad_input_is_one_clear_line(project, lost_bytes):
    rd = project / 'runs' / 'my_run'
    before = lost_bytes.watch(rd)
    (project / 'broken.pt').write_bytes((project / BEST).read_bytes()[:5000])
    bad = project / 'bad'
    bad.mkdir()
    shutil.copy(next((project / 'data/my_dataset/raw/1').iterdir()), bad / 'ok.png')
    (bad / 'text.png').write_text('not a PNG')
    (project / 'empty').mkdir()
    # as a user runs them: separate processes
    assert_clean_error(run(['ml-inference', '--checkpoint_path', 'runs/nope/weights/best.pt'],
                           project), 'runs/nope/weights/best.pt: no such checkpoint')
    assert_clean_error(run(['ml-inference', '--checkpoint_path', 'broken.pt', '--images', 'bad'],
                           project), 'broken.pt: corrupt checkpoint')
    assert_clean_error(run(['ml-inference', '--checkpoint_path', BEST, '--images', 'bad'],
                           project), 'bad/text.png: cannot read this image')
    assert_usage_error(run(['ml-inference', '--images', 'bad'], project), '--checkpoint_path')
    # many cases through the same entry point in one process (each start of torch takes seconds)
    import torch
    torch.save({'weights': torch.zeros(2)}, project / 'foreign.pt')
    cases = [
        (['--checkpoint_path', 'foreign.pt'], ['foreign.pt: not an imgcls checkpoint']),
        (['--checkpoint_path', BEST, '--images', 'nowhere/*.jpg'],
         ['nowhere/*.jpg: no image file matches this pattern']),
        (['--checkpoint_path', BEST, '--images', 'missing.png'],
         ['missing.png: no such file or folder']),
        (['--checkpoint_path', BEST, '--images', 'empty'],
         ['empty: no image files in this folder']),
        (['--checkpoint_path', BEST, '--images', 'bad', '--format', 'xml'],
         ["--format must be csv or json, got 'xml'"]),
        (['--checkpoint_path', BEST, '--images', 'bad', '--top_k', '0'],
         ['--top_k must be >= 1, got 0']),
        (['--checkpoint_path', BEST, '--split', 'train'], ["split must be test or val"]),
        (['--checkpoint_path', BEST, '--device', 'gpu0'], ["'gpu0' is not a device"]),
    ]
    res = run_py(IN_PROCESS, project, json.dumps([a for a, _ in cases]))
    assert_ok(res)
    for (args, needles), (code, _, err) in zip(cases, json.loads(res.stdout.splitlines()[-1])):
        _one_error_line(code, err, needles, args)
    assert tree_hash(rd) == before                      # nothing in the run was touched
    assert lost_bytes.check() == 0

    # --skip_bad predicts the rest and says what it skipped
    res = run_py(IN_PROCESS, project, json.dumps(
        [['--checkpoint_path', BEST, '--images', 'bad', '--skip_bad', '--format', 'json']]))
    assert_ok(res)
    [(code, out, err)] = json.loads(res.stdout.splitlines()[-1])
    assert code == 0 and 'skipped 1 unreadable image(s)' in err, err
    out = json.loads(out)
    assert [p['path'] for p in out['predictions']] == ['bad/ok.png']
    assert out['skipped'][0]['path'] == 'bad/text.png'


@pytest.mark.fault
def test_a_moved_dataset_is_found_with_data_dir(project):
    shutil.move(project / 'data', project / 'elsewhere')
    rd = project / 'runs' / 'my_run'
    before = tree_hash(rd)
    res = run_py(IN_PROCESS, project, json.dumps([
        ['--checkpoint_path', BEST],
        ['--checkpoint_path', BEST, '--data_dir', 'nowhere'],
        ['--checkpoint_path', BEST, '--data-dir', 'elsewhere/my_dataset', '--split', 'val'],
    ]))
    assert_ok(res)
    (c1, _, e1), (c2, _, e2), (c3, o3, e3) = json.loads(res.stdout.splitlines()[-1])
    _one_error_line(c1, e1, ["data/my_dataset: the run's dataset (data.data_dir) is not here",
                             '--data_dir'], 'moved')
    _one_error_line(c2, e2, ['nowhere: no such dataset folder'], 'nowhere')
    assert c3 == 0 and o3.startswith('val accuracy '), (c3, o3, e3)
    after = tree_hash(rd)
    assert set(after) - set(before) == {'predictions_val.csv'}
    # training's own val report, written again with the same content
    report = 'logs/classification_report_val.txt'
    assert after[report] == before[report]
    rows = list(csv.DictReader((rd / 'predictions_val.csv').open()))
    assert rows and all(r['path'].startswith('elsewhere/my_dataset/raw/') for r in rows)
