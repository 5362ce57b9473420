"""The code stays readable in pieces (#34): no exported function over 60 lines, no notebook cell
over 120 (`tools/code_sizes.py` prints them), and no module but the trainer registry compares
trainer names: everything else asks a trainer class what it supports. Read with `ast`."""
from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('code_sizes', ROOT / 'tools' / 'code_sizes.py')
sizes = importlib.util.module_from_spec(spec); spec.loader.exec_module(sizes)

def measured() -> dict[str, int]:
    "Every exported function over MAX_FUNCTION lines and notebook cell over MAX_CELL lines."
    out = {}
    for mod in sorted((ROOT / 'imgcls').glob('*.py')):
        if mod.stem in ('_modidx', '__init__'): continue
        for n, name, _ in sizes.functions(mod):
            key = f'{mod.stem}.{name}'
            if n > sizes.MAX_FUNCTION: out[key] = max(n, out.get(key, 0))
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        for n, i, _ in sizes.cells(nb):
            if n > sizes.MAX_CELL: out[f'{nb.relative_to(ROOT / "nbs").with_suffix("")}:{i}'] = n
    return out


def test_no_long_functions_or_cells():
    "Split any that grows past the limits (`python tools/code_sizes.py` lists them)."
    assert not measured(), f'over the limits (python tools/code_sizes.py): {measured()}'


def test_the_sizes_are_measured(tmp_path):
    "The check can fail: a 61-line function and a 121-line cell are found, 60 and 120 are not."
    body = ''.join(f'    x{i} = {i}\n' for i in range(59))
    src = f'def short():\n{body}\ndef long():\n{body}    y = 0\n\nclass C:\n    def m(self): pass\n'
    mod = tmp_path / 'm.py'
    mod.write_text(src)
    got = {name: n for n, name, _ in sizes.functions(mod)}
    assert (got['short'], got['long'], got['C.m']) == (60, 61, 1), got
    nb = tmp_path / 'n.ipynb'
    cell = lambda n: {'cell_type': 'code', 'source': [f'a = {i}\n' for i in range(n)]}
    nb.write_text(json.dumps({'cells': [cell(120), {'cell_type': 'markdown', 'source': ['x']},
                                        cell(121)]}))
    assert [(n, i) for n, i, _ in sizes.cells(nb)] == [(120, 0), (121, 2)]


def _names_compared(tree) -> list[int]:
    "Lines comparing a trainer type: `.trainer_type`, `['trainer_type']`, `.get('trainer_type')`."
    def is_type(node):
        if isinstance(node, ast.Attribute): return node.attr == 'trainer_type'
        if isinstance(node, ast.Subscript):
            return isinstance(node.slice, ast.Constant) and node.slice.value == 'trainer_type'
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return (node.func.attr == 'get' and node.args and isinstance(node.args[0], ast.Constant)
                    and node.args[0].value == 'trainer_type')
        return False
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Compare)
            and any(is_type(x) for x in [n.left, *n.comparators])]


def test_no_trainer_name_is_compared_outside_the_registry():
    found = {}
    for mod in sorted((ROOT / 'imgcls').glob('*.py')):
        if mod.stem in ('_modidx', '__init__'): continue
        lines = _names_compared(ast.parse(mod.read_text()))
        if lines: found[mod.name] = lines
    assert not found, f'trainer names compared (ask trainer_class(name) instead): {found}'


def test_the_check_finds_a_comparison():
    "The test above can fail: a comparison it must find, in each of its forms."
    for src in ("if cfg.training.trainer_type == 'dp': pass",
                "x = ck['trainer_type'] in ('accelerate', 'dp')",
                "y = 'dp' != ck.get('trainer_type')"):
        assert _names_compared(ast.parse(src)) == [1], src
    assert _names_compared(ast.parse("r['training.trainer_type'] = 'standard'")) == []
