"""The code stays readable in pieces (#34): no exported function over 60 lines, no notebook cell
over 120 (`tools/code_sizes.py` prints them), and no module but the trainer registry compares
trainer names: everything else asks a trainer class what it supports. Read with `ast`."""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location('code_sizes', ROOT / 'tools' / 'code_sizes.py')
sizes = importlib.util.module_from_spec(spec); spec.loader.exec_module(sizes)

# Over the limits when the limits came in (session 25), each to be split: none may grow, and none
# may join them. Shrink an entry (or delete it once it is within the limit) as you split it.
KNOWN_LONG = {
    'autoconfig.recipe': 126, 'autoconfig.init_config': 77, 'cli.inference': 63,
    'export_checks.export_checkpoint': 74, 'inference.evaluate_checkpoint': 79,
    'lr_finder.find_lr': 66, 'run_files.finalize_run': 79, 'search.open_storage': 61,
    'search.run_search': 85, 'splits.make_splits': 144,
    '03_splits:22': 155, '09e_autoconfig:13': 167, '10_lr_finder:16': 161, '11_inference:14': 151,
    '13a_search:26': 135, '14a_analysis:10': 143, '14a_analysis:16': 124,
}


def measured() -> dict[str, int]:
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


def test_no_new_long_functions_or_cells():
    new = {k: v for k, v in measured().items() if k not in KNOWN_LONG}
    assert not new, f'over the limits (python tools/code_sizes.py): {new}'


def test_the_known_long_ones_do_not_grow():
    now = measured()
    grown = {k: (KNOWN_LONG[k], v) for k, v in now.items() if k in KNOWN_LONG and v > KNOWN_LONG[k]}
    assert not grown, f'grew (was, now): {grown}'


def test_the_trainer_is_within_the_limits():
    "The training loop was the first to be split: its module and notebook hold no exception."
    assert not [k for k in measured() if k.startswith(('trainer.', 'training.', '09_trainer:',
                                                        '08a_training:'))]


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
