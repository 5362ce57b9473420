"""The package's import graph follows the notebooks' order: a module imports only modules whose
notebook comes before its own (at the top or inside a function), so each notebook can be read,
run and documented knowing only the ones before it, and no module reaches for another's private
names. Read from the exported source with `ast`, nothing imported."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / 'imgcls'
SKIP = {'__init__', '_modidx'}  # the lazy star-import index and nbdev's index name every module


def notebook_of(path: Path) -> str:
    "The notebook a module is exported from (nbdev's header line)."
    m = re.search(r'File to edit: \.\./nbs/(\S+)\.ipynb', path.read_text())
    assert m, f'{path.name}: no nbdev header naming its notebook'
    return m.group(1)


MODULES = {p.stem: notebook_of(p) for p in sorted(PKG.glob('*.py')) if p.stem not in SKIP}


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    "(imgcls module, names imported from it, line) for every import of the package in `path`."
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ''
            if node.level == 1: full = mod
            elif mod == 'imgcls' or mod.startswith('imgcls.'): full = mod[len('imgcls.'):]
            else: continue
            names = [a.name for a in node.names]
            if not full:  # `from imgcls import x` / `from . import x`: x is a module or __version__
                out += [(n, [], node.lineno) for n in names if n in MODULES]
            else: out.append((full.split('.')[0], names, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name.split('.')[1], [], node.lineno) for a in node.names
                    if a.name.startswith('imgcls.')]
    return out


def test_every_module_knows_its_notebook():
    assert len(MODULES) >= 15 and 'core' in MODULES and 'cli' in MODULES, MODULES


@pytest.mark.parametrize('name', sorted(MODULES))
def test_imports_point_back_in_notebook_order(name):
    own = MODULES[name]
    later = [f'line {ln}: imports imgcls.{mod} (notebook {MODULES[mod]}, after {own})'
             for mod, _, ln in imports_of(PKG / f'{name}.py')
             if mod in MODULES and mod != name and MODULES[mod] > own]
    assert not later, f'imgcls/{name}.py imports upwards:\n' + '\n'.join(later)


@pytest.mark.parametrize('name', sorted(MODULES))
def test_no_private_names_from_other_modules(name):
    private = [f'line {ln}: {n} from imgcls.{mod}'
               for mod, names, ln in imports_of(PKG / f'{name}.py') if mod != name
               for n in names if n.startswith('_')]
    assert not private, f'imgcls/{name}.py imports private names:\n' + '\n'.join(private)


def test_the_check_sees_an_upward_import(tmp_path):
    "Not vacuous: a function-level import of a later module is found."
    p = tmp_path / 'core.py'
    p.write_text('def f():\n    from imgcls.cli import run_cli\n    from .config import _flatten\n')
    found = imports_of(p)
    assert ('cli', ['run_cli'], 2) in found and ('config', ['_flatten'], 3) in found
    assert MODULES['cli'] > MODULES['core']
