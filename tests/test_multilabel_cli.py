"""A multi-label folder (images below raw/, labels.csv beside it) through the console commands as a
user runs them: ml-split, the one command ml-train --data, ml-inference on the test split and on
--images, ml-export and ONNX Runtime, ml-serve, and cross-validation with --fold all."""
from __future__ import annotations
import base64
import csv
import http.client
import os
import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import (assert_clean_error, assert_ok, command, dump_dom, env, needs_chromium, run,
                     run_py)

ARTEFACTS = Path(os.environ.get('IMGCLS_TEST_ARTEFACTS', Path(__file__).parent / 'artefacts'))


def _sample(root: Path, n: int = 300, size: int = 32) -> Path:
    run_py('import sys; from imgcls.labels import make_multilabel_sample; '
           'make_multilabel_sample(sys.argv[1], n_images=int(sys.argv[2]), size=int(sys.argv[3]))',
           root, 'data/mos', str(n), str(size))
    return root / 'data' / 'mos'


def _rows(path: Path) -> dict:
    with open(path, newline='') as f: return {r['path']: r for r in csv.DictReader(f)}


def _macro_f1(truth: dict, predicted: dict, classes: list) -> float:
    "Macro-F1 of label sets (image -> set of labels), as a scorer of the CSV would compute it."
    f1 = []
    for c in classes:
        tp = sum(c in truth[k] and c in predicted[k] for k in truth)
        fp = sum(c not in truth[k] and c in predicted[k] for k in truth)
        fn = sum(c in truth[k] and c not in predicted[k] for k in truth)
        f1.append(2 * tp / max(2 * tp + fp + fn, 1))
    return sum(f1) / len(f1)


def _post(port: int, images: list) -> dict:
    "POST `images` to an ml-serve on `port` as multipart parts named `file`; its JSON answer."
    body, boundary = b'', uuid.uuid4().hex
    for im in images:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{im.name}"\r\nContent-Type: image/png\r\n\r\n').encode()
        body += im.read_bytes() + b'\r\n'
    body += f'--{boundary}--\r\n'.encode()
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    c.request('POST', '/predict', body,
              {'Content-Type': f'multipart/form-data; boundary={boundary}'})
    return json.loads(c.getresponse().read())


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "One multi-label run made by the one command, on digit mosaics (1-3 digits a picture)."
    root = tmp_path_factory.mktemp('multilabel')
    ds = _sample(root)
    res = run(['ml-train', '--data', 'data/mos', '--num_epochs', '12'], root, timeout=900)
    assert_ok(res)
    m = re.search(r'run folder: (\S+)', res.stdout)
    return root, ds, root / m.group(1), res


def test_one_command_trains_a_multilabel_folder(trained):
    root, ds, run_dir, res = trained
    assert 'multi-label' in res.stdout and 'macro-F1' in res.stdout, res.stdout
    manifest = json.loads((ds / 'splits' / 'manifest.json').read_text())
    assert manifest['multi_label'] and manifest['labels_file']['label_column'] == 'labels'
    s = json.loads((run_dir / 'summary.json').read_text())
    assert s['task'] == 'multi_label'
    for k in ('macro_f1', 'micro_f1', 'map', 'exact_match'): assert 0 <= s['test'][k] <= 1
    assert set(s['calibration']['thresholds']) == {f'd{i}' for i in range(10)}
    cfg = (root / 'configs' / 'mos_config.yaml').read_text()
    assert re.search(r'^  multi_label: true', cfg, re.M) and re.search(r'^  type: bce', cfg, re.M)
    report = (run_dir / 'logs' / 'classification_report_test.txt').read_text()
    assert 'mAP' in report and 'threshold' in report


def test_inference_csv_scores_like_the_report(trained):
    "--images gives path, predicted (space-separated) and p_<class>; scored as a user would."
    root, ds, run_dir, _ = trained
    test = [ln.split('\t') for ln in (ds / 'splits' / 'test.txt').read_text().splitlines()]
    out = root / 'preds.csv'
    assert_ok(run(['ml-inference', '--checkpoint_path', str(run_dir), '--images',
                   *[str(ds / p) for p, _ in test], '--output', str(out)], root))
    rows = _rows(out)
    head = next(csv.reader(out.open()))
    assert head[:2] == ['path', 'predicted'] and head[2:] == [f'p_d{i}' for i in range(10)]
    truth = {str(ds / p): set(labs.split()) for p, labs in test}
    pred = {k: set(r['predicted'].split()) for k, r in rows.items()}
    f1 = _macro_f1(truth, pred, [f'd{i}' for i in range(10)])
    s = json.loads((run_dir / 'summary.json').read_text())
    assert abs(f1 - s['test']['macro_f1']) < 1e-6, (f1, s['test']['macro_f1'])
    assert f1 > 0.8, f1   # 12 short epochs on 190 training images: far above chance (~0.2)
    assert_ok(res := run(['ml-inference', '--checkpoint_path', str(run_dir)], root))
    assert f"macro-F1 {s['test']['macro_f1']:.4f}" in res.stdout, res.stdout
    ev = _rows(run_dir / 'predictions_test.csv')
    assert ({Path(k).name: set(r['true'].split()) for k, r in ev.items()}
            == {Path(p).name: set(labs.split()) for p, labs in test})
    res = run(['ml-inference', '--checkpoint_path', str(run_dir), '--images', str(ds / test[0][0]),
               '--min_confidence', '0.5'], root)
    assert_clean_error(res, 'multi-label', 'thresholds')


def test_onnx_and_serve_give_the_same_label_sets(trained, tmp_path):
    root, ds, run_dir, _ = trained
    res = run(['ml-export', '--checkpoint', str(run_dir), '--comprehensive_validate',
               '--quantize', 'int8'], root, timeout=600)
    assert_ok(res)
    assert 'label-set agreement 100.00%' in res.stdout and 'test macro-F1' in res.stdout, res.stdout
    int8 = re.search(r'int8 on \d+ test images: macro-F1 fp32 ([\d.]+), int8 ([\d.]+) .*mAP fp32 '
                     r'[\d.]+, int8 [\d.]+ .*label-set agreement ([\d.]+)%', res.stdout)
    assert int8, res.stdout   # int8 is scored as a multi-label model: macro-F1, mAP, label sets
    assert float(int8.group(2)) >= float(int8.group(1)) - 0.05 and float(int8.group(3)) >= 80
    onnx = run_dir / 'weights' / 'best.onnx'
    images = sorted((ds / 'raw').glob('*.png'))[:40]
    out = tmp_path / 'p.csv'
    assert_ok(run(['ml-inference', '--checkpoint_path', str(run_dir), '--images',
                   *map(str, images), '--output', str(out)], root))
    torch_sets = {Path(k).name: r['predicted'] for k, r in _rows(out).items()}
    res = run_py('import json, sys; from imgcls.onnx_runtime import OnnxPredictor\n'
                 'p = OnnxPredictor(sys.argv[1]); print(json.dumps({"meta": p.meta, "preds": '
                 'p.predict(sys.argv[2:])}))', root, str(onnx), *map(str, images))
    assert_ok(res)
    got = json.loads(res.stdout)
    assert got['meta']['task'] == 'multi_label' and len(got['meta']['thresholds']) == 10
    assert {Path(q['path']).name: q['predicted'] for q in got['preds']} == torch_sets
    proc = subprocess.Popen([command('ml-serve'), str(onnx), '--port', '0'], cwd=root, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r'http://127\.0\.0\.1:(\d+)', proc.stdout.readline()).group(1))
        answer = _post(port, images[:5])
        c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
        c.request('GET', '/health')
        health = json.loads(c.getresponse().read())
    finally:
        proc.terminate(); proc.wait(30)
    assert health['task'] == 'multi_label'
    assert set(health['thresholds']) == set(got['meta']['classes'])
    for a in answer['predictions']:
        assert a['label'] == torch_sets[a['file']] and a['labels'] == a['label'].split()
        assert len(a['probabilities']) == 10


@needs_chromium
def test_the_page_shows_a_label_set_in_chromium(trained, tmp_path):
    "The web page, in a real browser with the network off, shows the model's label set."
    root, ds, run_dir, _ = trained
    with open(ds / 'labels.csv', newline='') as f:
        two = next(r['image'] for r in csv.DictReader(f) if len(r['labels'].split()) >= 2)
    image = ds / 'raw' / two
    proc = subprocess.Popen([command('ml-serve'), str(run_dir), '--port', '0'], cwd=root,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r'http://127\.0\.0\.1:(\d+)', proc.stdout.readline()).group(1))
        want = _post(port, [image])['predictions'][0]
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        data = 'data:image/png;base64,' + base64.b64encode(image.read_bytes()).decode()
        dom = dump_dom(f'http://127.0.0.1:{port}/?image={data}', tmp_path,
                       screenshot=ARTEFACTS / 'serve_page_multilabel.png')
    finally:
        proc.terminate(); proc.wait(30)
    shown = re.search(r'<div class="label"><b>([^<]*)</b>', dom)
    text = ', '.join(want['labels']) or 'none of the labels'
    assert shown and shown.group(1) == text, dom[-3000:]
    on = [k for k in want['top_k'] if k['class'] in want['labels']]
    assert dom.count('class="row on"') == len(on) and on   # the labels' bars, marked
    assert dom.count('class="row off"') == len(want['top_k']) - len(on)
    assert 'multi-label, 10 labels' in dom   # the model's description, from /health


def test_cross_validation_of_a_multilabel_folder(tmp_path):
    ds = _sample(tmp_path, n=160)
    assert_ok(run(['ml-split', '--raw_data', str(ds / 'raw'), '--folds', '2'], tmp_path))
    assert_ok(run(['ml-init-config', str(ds)], tmp_path))
    res = run(['ml-train', '--config', 'configs/mos_config.yaml', '--fold', 'all',
               '--num_epochs', '2'], tmp_path, timeout=900)
    assert_ok(res)
    cv = next((tmp_path / 'runs').glob('*_cv'))
    rep = json.loads((cv / 'cv_report.json').read_text())
    assert rep['folds'] == 2 and 'map' in rep['ensemble_test'] and 'map' in rep['oof']
    head = next(csv.reader((cv / 'ensemble_test_predictions.csv').open()))
    assert head[:3] == ['path', 'true', 'predicted']
    res = run(['ml-inference', '--checkpoint_path', str(cv)], tmp_path)
    assert_ok(res)
    assert f"macro-F1 {rep['ensemble_test']['macro_f1']:.4f}" in res.stdout, res.stdout
    res = run(['ml-analyze', str(cv), '--label', 'd3'], tmp_path)
    assert_ok(res)
    assert 'most missed labels' in res.stdout and 'heatmaps of d3 over' in res.stdout, res.stdout
    assert 'id="heatmaps-label">Heatmaps: d3' in (cv / 'analysis' / 'report.html').read_text()
    bad = run(['ml-analyze', str(cv), '--label', 'd11'], tmp_path)
    assert bad.returncode != 0 and "--label 'd11' is not one of the run's classes" in bad.stderr
    assert 'Traceback' not in bad.stderr
    assert 'label issue candidate(s)' in res.stdout, res.stdout
    an = json.loads((cv / 'analysis' / 'analysis.json').read_text())
    assert len(an['co_occurrence']) == 10 and set(an['per_class']['d0']) >= {'missed', 'spurious'}
    assert (cv / 'analysis' / 'label_issues.csv').read_text().startswith('path,given,predicted')


def test_labels_file_faults_are_one_line_each_and_counted(tmp_path):
    "FAULTS.md's labels-file lines: each problem one line, counted in the manifest, nothing lost."
    ds = _sample(tmp_path, n=200, size=16)
    rows = (ds / 'labels.csv').read_text().splitlines()
    (ds / 'labels.csv').write_text('picture|what\n' + '\n'.join(rows[1:]) + '\n')
    res = run(['ml-split', '--raw_data', str(ds / 'raw'), '--folds', '2'], tmp_path)
    assert_clean_error(res, 'labels.csv', 'cannot tell which column', 'picture|what')
    assert not (ds / 'splits').exists()
    (ds / 'labels.csv').write_text('\n'.join(rows[:-1] + [rows[1], 'gone.png,d1']) + '\n')
    res = run(['ml-split', '--raw_data', str(ds / 'raw'), '--folds', '2'], tmp_path)
    assert_ok(res)
    lines = [ln for ln in res.stderr.splitlines() if 'labels.csv: 1 ' in ln]
    assert len(lines) == 3, res.stderr   # the missing file, the repeat, the image with no row
    assert any('1 row(s) naming no image file: line' in ln and 'gone.png' in ln for ln in lines)
    assert any('1 repeated row(s)' in ln for ln in lines)
    assert any('1 image(s) below raw/ with no row (left out): ' + rows[-1].split(',')[0] in ln
               for ln in lines)
    m = json.loads((ds / 'splits' / 'manifest.json').read_text())
    assert m['labels_file']['counts'] == {'missing': 1, 'duplicate': 1, 'unlisted': 1,
                                          'empty': 0, 'unsafe': 0}
    # a single-label file with an empty label, said to be single-label: named, left out
    one = [(r.split(',')[0], r.split(',')[1].split()) for r in rows[1:-1]]
    (ds / 'labels.csv').write_text('image,label\n' + ''.join(
        f'{f},{labs[i % len(labs)]}\n' for i, (f, labs) in enumerate(one))
        + rows[-1].split(',')[0] + ',\n')
    before = (ds / 'labels.csv').read_bytes()
    res = run(['ml-split', '--raw_data', str(ds / 'raw'), '--folds', '2', '--force',
               '--multi_label', 'false'], tmp_path)
    assert_ok(res)
    assert 'without exactly one label in a single-label set (left out)' in res.stderr, res.stderr
    m = json.loads((ds / 'splits' / 'manifest.json').read_text())
    assert not m['multi_label'] and m['labels_file']['counts']['empty'] == 1
    assert m['n_images'] == 199
    assert (ds / 'labels.csv').read_bytes() == before   # the user's file is never rewritten
    res = run(['ml-split', '--raw_data', str(ds / 'raw'), '--multi_label', 'maybe'], tmp_path)
    assert_clean_error(res, '--multi_label must be true or false')
