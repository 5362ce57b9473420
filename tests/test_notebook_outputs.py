"""README's Python quickstart executed in a real Jupyter kernel (nbclient, as Jupyter runs a
notebook), then read from the saved .ipynb outputs, as the user would see them: training shows one
epoch table that fills in place (not a line an epoch), and a clean run writes nothing to stderr,
which a notebook paints red. (nbdev-test runs notebooks in-process, where none of this shows.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat', reason='nbclient is in the dev extra')
nbclient = pytest.importorskip('nbclient', reason='nbclient is in the dev extra')

ROOT = Path(__file__).resolve().parents[1]


def _python_quickstart() -> list[str]:
    readme = (ROOT / 'README.md').read_text()
    section = readme.split('## Quickstart from Python', 1)[1].split('\n## ', 1)[0]
    return re.findall(r'```python\n(.*?)\n```', section, re.S)


@pytest.fixture(scope='module')
def executed(tmp_path_factory):
    cells = _python_quickstart()
    assert len(cells) == 3 and 'train(cfg' in cells[2], cells
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata['kernelspec'] = dict(name='python3', display_name='Python 3', language='python')
    d = tmp_path_factory.mktemp('nb')
    nbclient.NotebookClient(nb, timeout=900, kernel_name='python3',
                            resources={'metadata': {'path': str(d)}}).execute()
    nbformat.write(nb, d / 'quickstart.ipynb')   # what a user would open
    return nbformat.read(d / 'quickstart.ipynb', as_version=4), d


def _stderr(cell) -> str:
    return ''.join(o.get('text', '') for o in cell.outputs
                   if o.output_type == 'stream' and o.name == 'stderr')


def test_training_shows_one_epoch_table_that_filled_in_place(executed):
    nb, _ = executed
    cell = nb.cells[2]
    tables = [o for o in cell.outputs if 'imgcls-table' in o.get('data', {}).get('text/html', '')]
    assert len(tables) == 1, cell.outputs               # one output, updated: not one per epoch
    html = tables[0]['data']['text/html']
    rows = re.findall(r'<tr><td>(\d+)/3</td>', html)
    assert rows == ['1', '2', '3'], html                 # the 3 epochs the quickstart asks for
    assert '<th>val_acc</th>' in html and '<th>train_loss</th>' in html, html
    text = ''.join(o.get('text', '') for o in cell.outputs if o.output_type == 'stream')
    assert not re.search(r'^epoch \d+/3', text, re.M), text   # the lines went to the table
    assert "'acc'" in text                               # print(trainer.summary['test'])


def test_a_clean_run_writes_nothing_to_stderr(executed):
    nb, d = executed
    for i, cell in enumerate(nb.cells):
        errors = [o for o in cell.outputs if o.output_type == 'error']
        assert not errors, (i, errors)
        err = _stderr(cell)
        if i == 0:   # the sample's one warning, if any: two near-identical 8x8 digits, one line
            assert len(err.splitlines()) <= 1 and (not err or 'near-identical' in err), err
        else: assert err == '', (i, err)
    log = next((d / 'runs').glob('digits*/logs/train.log')).read_text()
    assert len(re.findall(r'INFO epoch \d+/3 ', log)) == 3, log   # the log file keeps the lines
