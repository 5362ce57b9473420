"""The longest function and the longest notebook cell of each module, and what is over the limits.

    python tools/code_sizes.py            # a table, then the functions and cells over the limits
    python tools/code_sizes.py --check    # exit 1 when any is over

A function is any `def` in the exported package (methods and nested functions included), counted
from its `def` line to its last line; a cell is a code cell of a notebook in nbs/, in lines.
tests/test_code_sizes.py fails when any is over.
Limits: functions MAX_FUNCTION lines, cells MAX_CELL lines.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION, MAX_CELL = 60, 120


def functions(path: Path) -> list[tuple[int, str, int]]:
    "(lines, qualified name, first line) of every function in `path`."
    out = []
    def walk(node, prefix=''):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out.append((child.end_lineno - child.lineno + 1, name, child.lineno))
                walk(child, name + '.')
            elif isinstance(child, ast.ClassDef): walk(child, prefix + child.name + '.')
            else: walk(child, prefix)
    walk(ast.parse(path.read_text()))
    return out


def cells(path: Path) -> list[tuple[int, int, str]]:
    "(lines, cell number, first line) of every code cell of notebook `path`."
    nb = json.loads(path.read_text())
    out = []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source']).rstrip('\n')
        if src: out.append((src.count('\n') + 1, i, src.splitlines()[0][:60]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--check', action='store_true', help='exit 1 when anything is over the limits')
    a = p.parse_args(argv)
    over = []
    print(f"{'module':<18} {'longest function':<44} {'lines':>5}   {'longest cell':>12}")
    for mod in sorted((ROOT / 'imgcls').glob('*.py')):
        if mod.stem in ('_modidx', '__init__'): continue
        fs = functions(mod)
        src = mod.read_text()
        name = (src.split('File to edit: ../nbs/')[1].split('.ipynb')[0]
                if 'File to edit' in src else None)
        nb = ROOT / 'nbs' / f'{name}.ipynb' if name else None
        cs = cells(nb) if nb and nb.exists() else []
        f = max(fs) if fs else (0, '-', 0)
        c = max(cs) if cs else (0, 0, '')
        print(f'{mod.stem:<18} {f[1][:44]:<44} {f[0]:>5}   {c[0]:>5} (cell {c[1]})')
        over += [f'imgcls/{mod.name}:{ln}: {q} is {n} lines (> {MAX_FUNCTION})'
                 for n, q, ln in fs if n > MAX_FUNCTION]
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        over += [f'{nb.relative_to(ROOT)}: cell {i} ({first!r}) is {n} lines (> {MAX_CELL})'
                 for n, i, first in cells(nb) if n > MAX_CELL]
    print(f'\nover the limits ({MAX_FUNCTION}-line functions, {MAX_CELL}-line cells): {len(over)}')
    for o in over: print('  ' + o)
    return 1 if a.check and over else 0


if __name__ == '__main__':
    sys.exit(main())
