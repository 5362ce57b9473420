"""The whole workflow on the damaged dataset, as a user runs it: `ml-init-config`, `ml-split`,
`ml-train`, `ml-inference` (test set, odd-mode images, a folder holding broken files) and
`ml-export --validate --comprehensive-validate`. Every command exits 0 with no traceback; the
broken files are listed by path, the good and odd-mode ones used, the hidden ones ignored."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_ok, make_damaged_dataset, run, show

pytestmark = pytest.mark.fault

BAD_WHY = {'raw/a/truncated.jpg': 'truncated', 'raw/a/zero.jpg': 'empty',
           'raw/a/text.jpg': 'not an image', 'raw/a/bomb.png': 'decompression bomb'}
ODD = ['raw/a/cmyk.jpg', 'raw/a/palette.png', 'raw/a/gray16.png', 'raw/a/exif.jpg']
# small and the same on any machine, whatever ml-init-config picks for this one
TINY = ['--num_epochs', '2', '--device', 'cpu', '--num_workers', '0',
        '--set', 'model.type=custom', '--set', 'model.custom_architecture=tiny_net',
        '--set', 'data.image_size=16', '--set', 'data.resize_size=16']


@pytest.fixture(scope='module')
def workflow(tmp_path_factory) -> dict:
    "Every command of the workflow, run once in order on data/bad; their results."
    cwd = tmp_path_factory.mktemp('damaged_workflow')
    files = make_damaged_dataset(cwd / 'data' / 'bad')
    out = dict(cwd=cwd, data=cwd / 'data' / 'bad', files=files)
    out['init'] = run(['ml-init-config', 'data/bad'], cwd)
    out['split'] = run(['ml-split', '--raw_data', 'data/bad/raw', '--folds', 2], cwd)
    out['train'] = run(['ml-train', '--config', 'configs/bad_config.yaml', *TINY], cwd)
    best = next(iter(sorted((cwd / 'runs').glob('*/weights/best.pt'))), None)
    out['best'] = best.relative_to(cwd).as_posix() if best else 'runs/none/weights/best.pt'
    out['evaluate'] = run(['ml-inference', '--checkpoint_path', out['best']], cwd)
    out['odd'] = run(['ml-inference', '--checkpoint_path', out['best'], '--images',
                      *[f'data/bad/{p}' for p in ODD]], cwd)
    out['folder'] = run(['ml-inference', '--checkpoint_path', out['best'], '--images',
                         'data/bad/raw/a', '--skip_bad', '--format', 'json'], cwd)
    out['export'] = run(['ml-export', '--checkpoint', out['best'], '--validate',
                         '--comprehensive-validate'], cwd)
    return out


STEPS = ['init', 'split', 'train', 'evaluate', 'odd', 'folder', 'export']


@pytest.mark.parametrize('step', STEPS)
def test_every_command_exits_0_without_a_traceback(workflow, step):
    assert_ok(workflow[step])


def test_split_lists_the_bad_files_and_uses_the_rest(workflow):
    res = workflow['split']
    for path, why in BAD_WHY.items():
        lines = [ln for ln in res.stderr.splitlines() if path in ln]
        assert len(lines) == 1 and why in lines[0], (path, show(res))
    for p in workflow['files']['ignored']: assert p not in res.stdout + res.stderr, p
    sd = workflow['data'] / 'splits'
    listed = {ln for f in sd.glob('*.txt') for ln in f.read_text().split()}
    assert listed == workflow['files']['good'] | workflow['files']['odd']


def test_training_used_the_odd_mode_images(workflow):
    rd = Path(workflow['cwd'] / workflow['best']).parent.parent
    s = json.loads((rd / 'summary.json').read_text())
    assert s['epochs_run'] == 2 and s['test']['n'] == len(
        (workflow['data'] / 'splits' / 'test.txt').read_text().split())
    m = json.loads((workflow['data'] / 'splits' / 'manifest.json').read_text())
    assert m['n_images'] == 20 and len(m['rejected']) == 4
    assert f"test accuracy {s['test']['acc']:.4f}" in workflow['evaluate'].stdout


def test_odd_mode_images_are_predicted_as_export_predicts_them(workflow):
    from imgcls.onnx_runtime import OnnxPredictor
    rows = list(csv.DictReader(io.StringIO(workflow['odd'].stdout)))
    assert [r['path'] for r in rows] == [f'data/bad/{p}' for p in ODD]
    onnx = OnnxPredictor((workflow['cwd'] / workflow['best']).with_suffix('.onnx'))
    probs = onnx.predict_proba([workflow['data'] / p for p in ODD])
    for r, p in zip(rows, probs):
        assert r['predicted'] == onnx.classes[int(p.argmax())], r
        assert abs(float(r['probability']) - float(p.max())) < 1e-5, (r, p)


def test_a_folder_with_broken_files_is_predicted_with_them_listed(workflow):
    res = workflow['folder']
    out = json.loads(res.stdout)
    predicted = {p['path'] for p in out['predictions']}
    a = {p for p in workflow['files']['good'] | workflow['files']['odd'] if p.startswith('raw/a/')}
    assert predicted == {f'data/bad/{p}' for p in a}
    assert sorted(s['path'] for s in out['skipped']) == sorted(f'data/bad/{p}' for p in BAD_WHY)
    for p in BAD_WHY: assert f'data/bad/{p}' in res.stderr, (p, show(res))
    assert 'skipped 4 unreadable image(s)' in res.stderr
    assert '.hidden' not in res.stdout + res.stderr and '.DS_Store' not in res.stdout


def test_export_validates_against_pytorch_on_the_test_images(workflow):
    w = (workflow['cwd'] / workflow['best']).parent
    rep = json.loads((w / 'validation_report.json').read_text())
    assert rep['passed'] and rep['written'], rep['failures']
    assert [r['batch'] for r in rep['validate']['runs']] == [1, 16]
    c = rep['comprehensive_validate']
    assert c['images'] == json.loads((w.parent / 'summary.json').read_text())['test']['n']
    assert c['model']['top1_agreement'] == 1.0 and c['pipeline']['top1_agreement'] == 1.0
    assert np.isfinite(c['model']['max_abs_diff'])
