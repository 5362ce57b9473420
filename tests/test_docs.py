"""The documentation site and README: the Quarto config and the sidebar list every notebook and
nothing else, README.md is index.ipynb, every console command is documented, the configuration
reference covers exactly the template's keys, and the docs notebooks export nothing."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / 'nbs'
DOCS_NBS = ['index.ipynb', '15_config_reference.ipynb', 'tutorials/01_own_images.ipynb',
            'tutorials/02_crossval_search.ipynb', 'tutorials/03_production.ipynb',
            'tutorials/05_multilabel.ipynb']


def _yaml(name: str) -> dict:
    return yaml.safe_load((NBS / name).read_text())


def _notebooks() -> list[str]:
    "Every notebook of the site: nbs/**/*.ipynb, except names or folders starting with _ or ."
    out = []
    for p in NBS.rglob('*.ipynb'):
        rel = p.relative_to(NBS)
        if any(part.startswith(('_', '.')) for part in rel.parts): continue
        out.append(rel.as_posix())
    return sorted(out)


def _entries(items) -> list[str]:
    "The files a Quarto sidebar `contents` list names, sections included, in order."
    out = []
    for it in items or []:
        if isinstance(it, str): out.append(it)
        elif isinstance(it, dict):
            if it.get('href'): out.append(it['href'])
            if it.get('file'): out.append(it['file'])
            out += _entries(it.get('contents'))
        else: raise AssertionError(f'sidebar.yml: unexpected entry {it!r}')
    return out


def _cells(nb_path: Path) -> list[dict]:
    return json.loads(nb_path.read_text())['cells']


def _src(cell: dict) -> str:
    return ''.join(cell['source'])


def _pyproject() -> dict:
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())


def _html_name(nb: str) -> str:
    "The page nbdev makes of notebook `nb` (numeric prefix dropped, as nbdev's nbpath2html)."
    p = Path(nb)
    return p.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', p.name.lower())).with_suffix('.html') \
        .as_posix()


# --- Quarto configuration ---

def test_quarto_yml_is_nbdev3_website():
    q = _yaml('_quarto.yml')
    assert q['project']['type'] == 'website'
    assert set(q['metadata-files']) >= {'nbdev.yml', 'sidebar.yml'}
    for f in q['metadata-files']: assert (NBS / f).is_file(), f
    html = q['format']['html']
    assert (NBS / html['css']).is_file()
    assert q['website']['navbar']['search'] is True
    # the sidebar's contents come from sidebar.yml alone (custom_sidebar), not from _quarto.yml
    assert 'contents' not in q['website'].get('sidebar', {})
    assert _pyproject()['tool']['nbdev']['custom_sidebar'] is True


def test_nbdev_yml_matches_pyproject():
    n, cfg = _yaml('nbdev.yml'), _pyproject()
    assert n['project']['output-dir'] == cfg['tool']['nbdev']['doc_path']
    assert n['website']['title'] == cfg['tool']['nbdev']['title']


def test_sidebar_lists_every_notebook_and_only_existing_files():
    sb = _yaml('sidebar.yml')
    listed = _entries(sb['website']['sidebar']['contents'])
    dupes = sorted({f for f in listed if listed.count(f) > 1})
    assert dupes == [], f'sidebar.yml lists these more than once: {dupes}'
    missing = [f for f in listed if not (NBS / f).is_file()]
    assert missing == [], f'sidebar.yml lists files that do not exist in nbs/: {missing}'
    unlisted = sorted(set(_notebooks()) - set(listed))
    assert unlisted == [], f'notebooks missing from nbs/sidebar.yml: {unlisted}'
    assert listed[0] == 'index.ipynb', 'the sidebar starts with the home page'


def test_sidebar_sections_have_titles_and_contents():
    for it in _yaml('sidebar.yml')['website']['sidebar']['contents']:
        if isinstance(it, dict):
            assert it.get('section') and it.get('contents'), it


def test_sidebar_check_catches_a_missing_notebook(tmp_path):
    "The check above is not vacuous: a new notebook that the sidebar misses is found."
    extra = NBS / 'tutorials' / 'zz_unlisted_probe.ipynb'
    assert not extra.exists()
    listed = _entries(_yaml('sidebar.yml')['website']['sidebar']['contents'])
    found = sorted(set(_notebooks() + ['tutorials/zz_unlisted_probe.ipynb']) - set(listed))
    assert found == ['tutorials/zz_unlisted_probe.ipynb']
    assert _entries([{'section': 's', 'contents': ['a.ipynb', {'href': 'b.ipynb'}]}]) == \
        ['a.ipynb', 'b.ipynb']


# --- README ---

def _make_readme():
    spec = importlib.util.spec_from_file_location('make_readme', ROOT / 'tools' / 'make_readme.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_is_generated_from_index():
    text = _make_readme().render()
    assert (ROOT / 'README.md').read_text() == text, \
        'README.md is out of date with nbs/index.ipynb: run `python tools/make_readme.py`'


def test_readme_links_to_docs_pages_are_absolute_and_name_existing_pages():
    "On GitHub and PyPI a relative `cli.html` link is dead: README links point at the docs site."
    readme = (ROOT / 'README.md').read_text()
    base = _make_readme().docs_url().rstrip('/') + '/'
    assert base.startswith('https://'), base
    links = re.findall(r'\]\(([^)\s]+)\)', readme)
    assert not [u for u in links if u.endswith('.html') or '.html#' in u
                if not u.startswith(('http://', 'https://'))], links
    pages = {_html_name(nb) for nb in _notebooks()}
    ours = [u[len(base):].split('#')[0] for u in links if u.startswith(base)]
    assert ours and not set(ours) - pages, set(ours) - pages


def test_readme_keeps_the_ci_blocks():
    readme = (ROOT / 'README.md').read_text()
    for m in ('install', 'test'):
        assert re.search(rf'<!-- ci:{m} -->\n```bash\n.+?\n```', readme, re.S), m


# --- console commands ---

def _commands() -> dict:
    return {k: v for k, v in _pyproject()['project']['scripts'].items() if k.startswith('ml-')}


_HELP = re.compile(r'^cli_help\((ml_\w+)\)', re.M)


def _help_cells() -> dict:
    "Command name -> notebook, for the cells that print a command's --help in the docs."
    out = {}
    for nb in _notebooks():
        for c in _cells(NBS / nb):
            if c['cell_type'] != 'code': continue
            src = _src(c)
            for m in _HELP.finditer(src):
                # run when the docs are built (help is never pasted in), and never skipped
                assert '#| exec_doc' in src and 'eval: false' not in src, (nb, src)
                out[m.group(1).replace('_', '-')] = nb
    return out


def test_every_command_is_in_the_readme_and_has_its_help_in_the_docs():
    readme = (ROOT / 'README.md').read_text()
    cmds = _commands()
    assert len(cmds) >= 9
    helps = _help_cells()
    for name in cmds:
        assert re.search(rf'(?<![\w-]){re.escape(name)}(?![\w-])', readme), \
            f'{name} is not mentioned in README.md (nbs/index.ipynb)'
        assert name in helps, f'no notebook shows `{name} --help` (an exec_doc cli_help cell)'


def test_index_links_every_command_to_its_page():
    "The index's command list links each command to the notebook that documents it."
    md = '\n'.join(_src(c) for c in _cells(NBS / 'index.ipynb') if c['cell_type'] == 'markdown')
    pages = {name: _html_name(nb) for name, nb in _help_cells().items()}
    for name in _commands():
        assert re.search(rf'`{re.escape(name)}`\]\({re.escape(pages[name])}[)#]', md), \
            f'index.ipynb does not link `{name}` to {pages[name]}'


# --- links ---

def test_docs_notebooks_link_to_pages_that_exist():
    pages = {_html_name(nb) for nb in _notebooks()}
    bad = []
    for nb in DOCS_NBS:
        base = Path(nb).parent
        for c in _cells(NBS / nb):
            if c['cell_type'] != 'markdown': continue
            for m in re.finditer(r'\]\(([^)\s#:]+\.html)(?:#[^)]*)?\)', _src(c)):
                target = (base / m.group(1)).as_posix()
                target = re.sub(r'(^|/)[^/]+/\.\./', r'\1', target)
                if target not in pages: bad.append(f'{nb}: {m.group(1)}')
    assert bad == [], f'links to pages that do not exist: {bad}'


def test_docs_images_are_committed_files():
    "Every picture a docs page shows (`![...](x.png)`) is a file in nbs/, where Quarto finds it."
    shown, bad = 0, []
    for nb in _notebooks():
        for c in _cells(NBS / nb):
            if c['cell_type'] != 'markdown': continue
            for m in re.finditer(r'\]\(([^)\s]+\.(?:png|jpg|jpeg|svg|gif))\)', _src(c)):
                shown += 1
                f = (NBS / nb).parent / m.group(1)
                if m.group(1).startswith(('http:', 'https:', '/')) or not f.is_file() \
                        or NBS.resolve() not in f.resolve().parents:
                    bad.append(f'{nb}: {m.group(1)}')
    assert bad == [], f'pictures that are not files in nbs/: {bad}'
    assert shown, 'no docs page shows a picture (the serving page screenshot is one)'


# --- the docs notebooks ---

@pytest.mark.parametrize('nb', DOCS_NBS)
def test_docs_notebooks_export_nothing(nb):
    for c in _cells(NBS / nb):
        if c['cell_type'] != 'code': continue
        directives = [ln for ln in _src(c).splitlines() if ln.startswith('#|')]
        assert not any(re.match(r'#\|\s*(default_exp|export|exporti|exports)\b', d)
                       for d in directives), f'{nb}: {directives}'


@pytest.mark.parametrize('nb', [n for n in DOCS_NBS if n.startswith('tutorials/')])
def test_tutorials_open_with_title_summary_and_what_you_learn(nb):
    cells = _cells(NBS / nb)
    first = _src(cells[0]).splitlines()
    assert cells[0]['cell_type'] == 'markdown' and first[0].startswith('# '), first
    assert first[1].startswith('> '), first
    assert 'What you will learn' in _src(cells[1]), _src(cells[1])


@pytest.mark.parametrize('nb', DOCS_NBS)
def test_docs_notebooks_are_clean(nb):
    for c in _cells(NBS / nb):
        if c['cell_type'] == 'code': assert c['outputs'] == [] and c['execution_count'] is None


# --- configuration reference ---

@pytest.fixture(scope='module')
def reference_rows() -> list[dict]:
    "The rows the configuration reference notebook renders, from running it."
    from execnb.shell import CaptureShell
    from fastcore.nbio import read_nb
    sh = CaptureShell()
    sh.run_all(read_nb(NBS / '15_config_reference.ipynb'), exc_stop=True)
    return sh.user_ns['rows']


def test_config_reference_documents_exactly_the_template_keys(reference_rows):
    from imgcls.config import template_text, valid_keys
    keys = [r['key'] for r in reference_rows]
    assert sorted(set(valid_keys()) - set(keys)) == [], 'template keys missing from the reference'
    assert sorted(set(keys) - set(valid_keys())) == [], 'documented keys that do not exist'
    assert len(keys) == len(set(keys))
    assert [r['key'] for r in reference_rows if not r['comment'].strip()] == []
    flat = ' '.join(template_text().replace('#', ' ').split())
    for r in reference_rows:   # each description is the template's own comment(s)
        for piece in r['comment'].split('; '):
            piece = re.sub(r'^`[\w.]+`: ', '', piece)
            assert piece in flat, (r['key'], piece)


def test_config_reference_defaults_are_the_template_defaults(reference_rows):
    from imgcls.config import default_config
    d = default_config()
    for r in reference_rows:
        v = d.get_path(r['key'])
        assert yaml.safe_load(r['default']) == v, r


def test_config_reference_is_in_the_sidebar_under_reference():
    sb = _yaml('sidebar.yml')['website']['sidebar']['contents']
    ref = [s for s in sb if isinstance(s, dict) and s.get('section') == 'Reference']
    assert ref and '15_config_reference.ipynb' in ref[0]['contents']


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))


# --- the docs build, without Quarto ---

FIGURE_NBS = ['05_data.ipynb', '08_evaluation.ipynb', '09_trainer.ipynb', '10_lr_finder.ipynb',
              '14_visualise.ipynb', '14a_analysis.ipynb', 'index.ipynb',
              'tutorials/01_own_images.ipynb']

_PROC = """
import sys, warnings
from nbdev.serve import proc_nbs
warnings.simplefilter('ignore')
proc_nbs(sys.argv[1], n_workers=0)
"""


def test_docs_build_processes_every_notebook_and_runs_the_help_cells(tmp_path):
    """nbdev's docs step before Quarto (`proc_nbs`, what `nbdev-docs` runs first) executes each
    notebook's exported, import and `exec_doc` cells: it must succeed on every notebook (a cell
    mixing imports with code that needs earlier cells breaks it), and each command's page must
    show its --help output."""
    import shutil
    import subprocess
    shutil.copy(ROOT / 'pyproject.toml', tmp_path)
    shutil.copytree(NBS, tmp_path / 'nbs', ignore=shutil.ignore_patterns('_proc', '.ipynb_*'))
    res = subprocess.run([sys.executable, '-c', _PROC, str(tmp_path / 'nbs')], cwd=tmp_path,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    proc = tmp_path / '_proc'
    assert sorted(p.relative_to(proc).as_posix() for p in proc.rglob('*.ipynb')) == _notebooks()
    for name, nb in _help_cells().items():
        outs = [''.join(o.get('text', '')) for c in _cells(proc / nb) if c['cell_type'] == 'code'
                and f"cli_help({name.replace('-', '_')})" in _src(c) for o in c.get('outputs', [])]
        assert any(o.startswith(f'usage: {name}') for o in outs), (name, nb, outs)
    # the pictures a reader would rather look at are drawn when the docs are built
    for nb in FIGURE_NBS:
        figs = [o for c in _cells(proc / nb) for o in c.get('outputs', [])
                if 'image/png' in o.get('data', {})]
        assert figs, f'{nb}: no figure in the built page'


# --- the slow pass ---

def _readme_test_lines() -> list[str]:
    "The commands of README's `ci:test` block, one a line (what CI runs as its steps)."
    text = (ROOT / 'README.md').read_text()
    block = text.split('<!-- ci:test -->', 1)[1].split('```bash', 1)[1].split('```', 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip()]


def test_the_slow_pass_runs_every_notebook_with_slow_cells_and_no_other():
    """Cells marked `#| slow` are skipped by the quick pass (`nbdev-test`), so README's second
    line must name exactly the notebooks that have them, or a slow cell would never run."""
    lines = _readme_test_lines()
    # each line's command after the environment it sets (`OMP_NUM_THREADS=1 nbdev-test`)
    cmds = [[w for w in ln.split() if not re.match(r'^[A-Z_]+=', w)] for ln in lines]
    assert cmds[0] == ['nbdev-test'] and cmds[-1][0] == 'pytest', lines
    [slow] = [ln for ln in lines if '--flags slow' in ln]
    m = re.search(r"--file-re '([^']+)'", slow)
    assert m, slow
    has_slow = {Path(nb).name for nb in _notebooks()
                if any(c['cell_type'] == 'code' and re.search(r'^#\|\s*slow\b', _src(c), re.M)
                       for c in _cells(NBS / nb))}
    named = {Path(nb).name for nb in _notebooks() if re.search(m.group(1), Path(nb).name)}
    assert has_slow and named == has_slow, \
        f'slow cells in {sorted(has_slow)}; the slow pass runs {sorted(named)}'
