"""`ml-inference` end to end, as a user runs it: the SPEC.md line as written (test-set report,
confusion matrix, predictions CSV in the run folder), predictions for files, folders and globs
that match a direct model call, the fold ensemble of a cross-validation folder, `unknown` below
--min_confidence, and bad input refused with one clear line."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from helpers import (assert_clean_error, assert_ok, assert_usage_error, run, run_py, show,
                     tree_hash)

BEST = 'runs/my_run/weights/best.pt'
CLASSES = [str(i) for i in range(10)]


@pytest.fixture
def project(my_project) -> Path:
    "The shared trained project (conftest): data/my_dataset, its config, runs/my_run."
    return my_project


def direct(project: Path, paths: list, tta: bool = False):
    "Class probabilities of a direct model call: model_from_checkpoint + validation preprocessing."
    import torch

    from imgcls.config import Config
    from imgcls.data import base_transform, eval_transform
    from imgcls.evaluation import tta_views
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
        views = tta_views(cfg).values() if tta else [lambda v: v]  # this run: original and zoom
        p = sum((model(v(x)) / t).softmax(1) for v in views) / len(views)
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
from imgcls.cli import ml_inference
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


# ------------------------------------------------------------------ fold ensembles

@pytest.fixture
def cv_project(my_cv_project) -> Path:
    "The shared project with `ml-train --fold all` run (conftest): 2 fold models."
    return my_cv_project


def _cv_dir(project: Path) -> Path:
    [cv] = [p for p in (project / 'runs').iterdir() if (p / 'cv_report.json').is_file()]
    return cv


def _probs(row: dict) -> list[float]:
    return [float(row[f'p_{c}']) for c in CLASSES]


def test_cv_folder_evaluates_the_fold_ensemble_as_the_cv_report_does(cv_project):
    cv = _cv_dir(cv_project)
    report = json.loads((cv / 'cv_report.json').read_text())
    before = tree_hash(cv)
    res = run(['ml-inference', '--checkpoint_path', cv.relative_to(cv_project)], cv_project)
    assert_ok(res)
    acc = report['ensemble_test']['acc']
    assert f'test accuracy {acc:.4f}' in res.stdout, show(res)
    assert '(soft vote of 2 fold models)' in res.stdout, show(res)
    metrics = json.loads((cv / 'logs' / 'metrics_test.json').read_text())
    assert metrics['acc'] == acc and metrics['ensemble_of'] == 2
    assert abs(metrics['loss'] - report['ensemble_test']['loss']) < 1e-5
    # the report's files are untouched; the evaluation's are added beside them
    after = tree_hash(cv)
    assert {k: v for k, v in after.items() if k in before} == before
    new = set(after) - set(before)
    assert {'predictions_test.csv', 'logs/classification_report_test.txt',
            'logs/confusion_matrix_test.png', 'logs/metrics_test.json'} <= new, new
    assert all(f == 'predictions_test.csv' or f.startswith('logs/') and '_test.' in f
               for f in new), new
    rows = list(csv.DictReader((cv / 'predictions_test.csv').open()))
    ref = list(csv.DictReader((cv / 'ensemble_test_predictions.csv').open()))
    assert [r['path'] for r in rows] == [f'data/my_dataset/{r["path"]}' for r in ref]
    for r, e in zip(rows, ref):
        assert max(abs(a - b) for a, b in zip(_probs(r), _probs(e))) < 1e-5, (r, e)
        assert r['predicted'] == e['predicted']
    assert sum(r['true'] == r['predicted'] for r in rows) / len(rows) == acc


def test_cv_folder_predicts_images_with_the_soft_vote(cv_project):
    cv = _cv_dir(cv_project)
    ref = list(csv.DictReader((cv / 'ensemble_test_predictions.csv').open()))[:6]
    images = [f'data/my_dataset/{r["path"]}' for r in ref]
    res = run(['ml-inference', '--checkpoint_path', cv.relative_to(cv_project), '--images',
               *images, '--top_k', '10', '--format', 'json'], cv_project)
    assert_ok(res)
    out = json.loads(res.stdout)
    assert out['ensemble_of'] == 2 and out['classes'] == CLASSES
    for pred, e in zip(out['predictions'], ref):
        got = {t['class']: t['probability'] for t in pred['top_k']}
        assert max(abs(got[c] - p) for c, p in zip(CLASSES, _probs(e))) < 1e-5, (pred, e)
        assert pred['predicted'] == e['predicted']


# ------------------------------------------------------------------ --min_confidence

def test_min_confidence_evaluation_reports_coverage_and_selective_accuracy(project):
    rd = project / 'runs' / 'my_run'
    assert_ok(run(['ml-inference', '--checkpoint_path', BEST], project))   # no threshold
    rows = list(csv.DictReader((rd / 'predictions_test.csv').open()))
    conf = sorted(float(r['probability']) for r in rows)
    p = round(conf[len(conf) // 2], 3)                                 # about half answered
    before = tree_hash(rd)
    res = run(['ml-inference', '--checkpoint_path', BEST, '--min_confidence', p], project)
    assert_ok(res)
    label = f'test_conf_{p:g}'
    answered = [r for r in rows if float(r['probability']) >= p]
    n, k = len(rows), len(answered)
    acc = sum(r['true'] == r['predicted'] for r in answered) / k
    assert 0 < k < n
    line = (f'at min_confidence {p:g}: {n - k} of {n} test images unknown, coverage {k / n:.4f}, '
            f'accuracy on the {k} answered {acc:.4f}')
    assert line in res.stdout.splitlines(), show(res)
    sel = json.loads((rd / 'logs' / f'metrics_{label}.json').read_text())['selective']
    assert (sel['answered'], sel['unknown'], sel['coverage']) == (k, n - k, k / n)
    assert abs(sel['acc'] - acc) < 1e-9
    out = list(csv.DictReader((rd / f'predictions_{label}.csv').open()))
    assert [r['predicted'] for r in out] == [
        r['predicted'] if float(r['probability']) >= p else 'unknown' for r in rows]
    assert [_probs(r) for r in out] == [_probs(r) for r in rows]          # nothing lost
    after = tree_hash(rd)
    assert {k: v for k, v in after.items() if k in before} == before      # the run's own kept


def test_min_confidence_images_unknown_keeps_the_top_k(project):
    raw = 'data/my_dataset/raw'
    plain = run(['ml-inference', '--checkpoint_path', BEST, '--images', raw, '--top_k', '3',
                 '--format', 'json'], project)
    assert_ok(plain)
    preds = json.loads(plain.stdout)['predictions']
    conf = sorted(q['probability'] for q in preds)
    p = round(conf[len(conf) // 2], 3)
    res = run(['ml-inference', '--checkpoint_path', BEST, '--images', raw, '--top_k', '3',
               '--format', 'json', '--min-confidence', p, '--output', 'out.json'], project)
    assert_ok(res)
    out = json.loads((project / 'out.json').read_text())
    assert out['min_confidence'] == p
    n_unknown = 0
    for q, o in zip(preds, out['predictions']):
        assert (o['path'], o['top_k'], o['probability']) == (q['path'], q['top_k'],
                                                              q['probability'])
        sure = q['probability'] >= p
        assert o['predicted'] == (q['predicted'] if sure else 'unknown'), (q, o)
        n_unknown += not sure
    assert 0 < n_unknown < len(preds)
    assert f'{n_unknown} of {len(preds)} image(s) below --min_confidence {p:g}' in res.stderr
    # CSV: predicted says unknown, class_1 and probability keep the top class
    res = run(['ml-inference', '--checkpoint_path', BEST, '--images', raw, '--top_k', '3',
               '--min_confidence', p], project)
    assert_ok(res)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r['predicted'] for r in rows] == [o['predicted'] for o in out['predictions']]
    assert [r['class_1'] for r in rows] == [q['top_k'][0]['class'] for q in preds]


@pytest.mark.fault
def test_bad_min_confidence_and_cv_folders_are_one_clear_line(cv_project, lost_bytes):
    cv = _cv_dir(cv_project)
    before = lost_bytes.watch(cv)
    rel = cv.relative_to(cv_project).as_posix()
    assert_usage_error(run(['ml-inference', '--checkpoint_path', rel, '--min_confidence', 'high'],
                           cv_project), '--min_confidence')
    cases = [
        (['--checkpoint_path', rel, '--min_confidence', '1'],
         ['--min_confidence must be a probability in [0, 1)', 'got 1.0']),
        (['--checkpoint_path', rel, '--min_confidence', '-0.2', '--images', 'data'],
         ['--min_confidence must be a probability in [0, 1)', 'got -0.2']),
        (['--checkpoint_path', 'runs'], ['runs: not a run folder', 'RUN/weights/best.pt']),
    ]
    res = run_py(IN_PROCESS, cv_project, json.dumps([a for a, _ in cases]))
    assert_ok(res)
    for (args, needles), (code, _, err) in zip(cases, json.loads(res.stdout.splitlines()[-1])):
        _one_error_line(code, err, needles, args)
    assert tree_hash(cv) == before
    assert lost_bytes.check() == 0
    # a fold model gone: named, nothing written
    best1 = next(cv.glob('*_fold_1')) / 'weights' / 'best.pt'
    best1.rename(best1.with_name('moved.pt'))
    res = run(['ml-inference', '--checkpoint_path', rel], cv_project)
    assert_clean_error(res, 'fold checkpoint(s) missing', 'best.pt')
    assert not (cv / 'predictions_test.csv').exists()
