"""`ml-analyze` as users run it (SPEC.md): on a run folder and on a cross-validation folder, one
self-contained HTML report and analysis.json; bad input is one clear line."""
from __future__ import annotations

import json
import re

from helpers import assert_clean_error, assert_ok, run


def test_spec_lines_write_the_report(my_project, my_cv_project):
    "The shared trained project and its cross-validation folder (conftest)."
    res = run(['ml-analyze', 'runs/my_run'], my_project)
    assert_ok(res)
    out = my_project / 'runs' / 'my_run' / 'analysis'
    assert 'test: 20 images, accuracy' in res.stdout and 'wrote' in res.stdout
    page = (out / 'report.html').read_text()
    assert 'id="top-losses"' in page and 'id="heatmaps-top-losses"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    a = json.loads((out / 'analysis.json').read_text())
    assert a['n'] == 20 and len(a['top_losses']) == 16 and a['label_issues'] is None
    losses = [r['loss'] for r in a['top_losses']]
    assert losses == sorted(losses, reverse=True)
    # a cross-validation folder: label issues from its out-of-fold predictions
    [cv] = [p for p in (my_cv_project / 'runs').iterdir() if p.name.endswith('_cv')]
    res = run(['ml-analyze', str(cv.relative_to(my_cv_project)), '--top', '4'], my_cv_project)
    assert_ok(res)
    assert 'label issue candidate(s) from the out-of-fold predictions' in res.stdout
    a = json.loads((cv / 'analysis' / 'analysis.json').read_text())
    assert a['label_issues'] is not None and len(a['label_issues']) <= 4


def test_bad_input_is_one_clear_line(tmp_path, tiny_split):
    assert_clean_error(run(['ml-analyze', 'runs/nothing'], tmp_path), 'not a run folder')
    (tmp_path / 'runs' / 'x' / 'weights').mkdir(parents=True)
    (tmp_path / 'runs' / 'x' / 'weights' / 'best.pt').write_text('not a checkpoint')
    assert_clean_error(run(['ml-analyze', 'runs/x'], tmp_path), 'runs/x/weights/best.pt')
    assert_clean_error(run(['ml-analyze', 'runs/x', '--split', 'train'], tmp_path),
                       'split must be test or val')
