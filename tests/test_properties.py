"""Property-based tests: the config loader and the index-file reader, fed random and malformed
input, either load it or raise imgcls's own clear error, never anything else. Deterministic by
default (the same 200 examples each run); IMGCLS_HYPOTHESIS_EXAMPLES=N explores N random ones."""
from __future__ import annotations

import os
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcls.config import load_config, valid_keys
from imgcls.core import ImgclsError
from imgcls.splits import read_index

SETTINGS = settings(max_examples=int(os.environ.get('IMGCLS_HYPOTHESIS_EXAMPLES', 200)),
                    deadline=None, derandomize=not os.environ.get('IMGCLS_HYPOTHESIS_EXAMPLES'),
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
values = st.recursive(
    scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                 st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=8)
keys = st.one_of(st.sampled_from(valid_keys()), st.text(string.ascii_lowercase + '._', min_size=1,
                                                        max_size=20))


def _nest(flat: dict) -> dict:
    out = {}
    for k, v in flat.items():
        cur, parts = out, k.split('.')
        for p in parts[:-1]:
            nxt = cur.get(p)
            if not isinstance(nxt, dict): nxt = cur[p] = {}
            cur = nxt
        cur[parts[-1]] = v
    return out


def _load(text: str):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / 'c.yaml'
        p.write_text(text, encoding='utf-8')
        try: return load_config(p)
        except ImgclsError as e:
            assert str(e).strip() and '\n' not in str(e).strip(), repr(e)   # one clear line
            return None


@pytest.mark.fault
@SETTINGS
@given(st.dictionaries(keys, values, max_size=6))
def test_config_from_random_mappings(flat):
    _load(yaml.safe_dump(_nest(flat)))


@pytest.mark.fault
@SETTINGS
@given(st.text(max_size=300))
def test_config_from_random_text(text):
    _load(text)


FRAGMENTS = ['data:', '  fold: 1', 'training:', '  batch_size: 0', '  lr: 1e-3',
             'optimizer: {lr: "x"}', '- a', '  - b', 'x: [1, 2', '!!python/name:os',
             'a: &x 1', 'b: *x', '<<: {a: 1}', 'seed: 1', 'seed: 2', '\t',
             'data: null', '? complex', ': v', '%YAML 1.1', '---', '...']


@pytest.mark.fault
@SETTINGS
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_config_from_yaml_fragments(lines):
    _load('\n'.join(lines))


line = st.one_of(st.text(max_size=40),
                 st.builds(lambda c, f: f'raw/{c}/{f}', st.sampled_from(['a', 'b', 'zz', '..', '']),
                           st.sampled_from(['x.png', 'y.png', 'missing.png', '../x.png', '/abs.png',
                                            '', 'sub/x.png'])))


@pytest.mark.fault
@SETTINGS
@given(st.lists(line, max_size=10))
def test_index_reader_on_random_lines(lines):
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for c in 'ab':
            (d / 'raw' / c).mkdir(parents=True)
            (d / 'raw' / c / 'x.png').write_bytes(b'x')
            (d / 'raw' / c / 'y.png').write_bytes(b'x')
        (d / 'splits').mkdir()
        p = d / 'splits' / 'fold_0_train.txt'
        p.write_text('\n'.join(lines), encoding='utf-8')
        try: items = read_index(p, d, ['a', 'b'])
        except ImgclsError as e:
            assert str(p) in str(e) and '\n' not in str(e), repr(e)
            return
        rels = [r for r, _ in items]
        assert len(rels) == len(set(rels))
        for r, c in items:
            assert (d / r).is_file() and r.startswith(f'raw/{c}/') and '..' not in r.split('/')
