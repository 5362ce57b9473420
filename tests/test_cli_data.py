"""The data commands end to end, as a user runs them: ml-sample-data, ml-init-config, ml-split.
Each runs as a subprocess in a temporary folder used as the working directory."""
from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
from helpers import (assert_clean_error, assert_ok, assert_usage_error, raw_files, read_lines, run,
                     run_py, show, split_sets, split_texts, tree_hash)

from imgcls.config import load_config
from imgcls.splits import check_splits, load_split

FOLDS = 5


# ------------------------------------------------------------------ the full digits, once

@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    "ml-sample-data data/digits, then ml-split --raw_data data/digits/raw --folds 5, in one folder."
    cwd = tmp_path_factory.mktemp('digits')
    sample = run(['ml-sample-data', 'data/digits'], cwd)
    split = run(['ml-split', '--raw_data', 'data/digits/raw', '--folds', FOLDS], cwd)
    return dict(cwd=cwd, data=cwd / 'data' / 'digits', sample=sample, split=split)


def test_sample_data_writes_the_digits(digits):
    res = digits['sample']
    assert_ok(res)
    raw = digits['data'] / 'raw'
    assert sorted(p.name for p in raw.iterdir()) == [str(i) for i in range(10)]
    assert len(list(raw.rglob('*.png'))) == 1797
    assert 'wrote 1797 images' in res.stdout
    assert 'ml-split --raw_data data/digits/raw' in res.stdout   # tells the user what to run next


def test_split_full_digits_writes_every_index_file(digits):
    assert_ok(digits['split'])
    sd = digits['data'] / 'splits'
    expected = {'test.txt', 'manifest.json'} | {f'fold_{k}_{s}.txt' for k in range(FOLDS)
                                                for s in ('train', 'val')}
    assert {p.name for p in sd.iterdir()} == expected
    assert not list(digits['data'].glob('.splits.tmp-*'))       # no temporary folder left behind
    assert '1797 images in 10 classes' in digits['split'].stdout


def test_split_every_image_in_exactly_one_split_per_fold(digits):
    d = digits['data']
    everything = raw_files(d)
    test, folds = split_sets(d / 'splits', FOLDS)
    assert len(read_lines(d / 'splits' / 'test.txt')) == len(test)   # no line twice
    for k, (train, val) in enumerate(folds):
        assert not (train & val) and not (train & test) and not (val & test), f'fold {k} overlaps'
        assert train | val | test == everything, f'fold {k} does not cover the dataset exactly'
    # the test set is the same for every fold: every fold's train+val is the same complement
    assert all(tr | va == everything - test for tr, va in folds)
    # each image is in val in exactly one fold
    vals = Counter(p for _, va in folds for p in va)
    assert set(vals) == everything - test and set(vals.values()) == {1}


def test_split_is_stratified_within_one_image(digits):
    d = digits['data']
    cls = lambda p: p.split('/')[1]
    everything = raw_files(d)
    n = Counter(map(cls, everything))
    test, folds = split_sets(d / 'splits', FOLDS)
    nt = Counter(map(cls, test))
    for c in n:
        assert abs(nt[c] - 0.2 * n[c]) <= 1, f'class {c}: {nt[c]} test images of {n[c]}'
        rest = n[c] - nt[c]
        for k, (_, va) in enumerate(folds):
            nv = sum(cls(p) == c for p in va)
            assert abs(nv - rest / FOLDS) <= 1, f'class {c} fold {k}: {nv} val of {rest}'


def test_split_output_passes_check_splits_and_load_split(digits):
    d = digits['data']
    m = check_splits(d)
    assert m['folds'] == FOLDS and m['classes'] == [str(i) for i in range(10)]
    test, classes = load_split(d, 'test')
    assert len(test) == m['counts']['test'] and classes == m['classes']
    for k in (0, FOLDS - 1):
        tr, _ = load_split(d, 'train', k)
        va, _ = load_split(d, 'val', k)
        assert len(tr) + len(va) + len(test) == 1797
        assert all(classes[y] == p.split('/')[1] for p, y in tr + va + test)



def test_split_full_digits_near_duplicates_are_few_and_within_a_class(digits):
    "The bundled digits have little detail; the look-alikes reported are a few same-class pairs."
    m = json.loads((digits['data'] / 'splits' / 'manifest.json').read_text())
    near = m['near_duplicates']
    assert m['near_dup_distance'] == 4 and len(near) <= 3, near
    assert all(len(g['classes']) == 1 and g['distance'] <= 4 and g['similarity'] >= 0.99
               for g in near), near
    warned = [ln for ln in digits['split'].stderr.splitlines() if 'near-identical images' in ln]
    assert len(warned) == min(len(near), 1), warned   # one line, however many pairs

def test_split_again_with_same_settings_changes_nothing(digits):
    before = tree_hash(digits['data'] / 'splits')
    res = run(['ml-split', '--raw_data', 'data/digits/raw', '--folds', FOLDS], digits['cwd'])
    assert_ok(res)
    assert 'up to date' in res.stderr + res.stdout
    assert tree_hash(digits['data'] / 'splits') == before


@pytest.mark.fault
def test_split_with_other_settings_is_refused_without_force(digits, lost_bytes):
    before = lost_bytes.watch(digits['data'] / 'splits')
    res = run(['ml-split', '--raw_data', 'data/digits/raw', '--folds', FOLDS, '--seed', 7],
              digits['cwd'])
    assert_clean_error(res, 'data/digits/splits', '--force')
    assert tree_hash(digits['data'] / 'splits') == before
    assert lost_bytes.check() == 0
    assert not list(digits['data'].glob('splits.old-*'))


@pytest.mark.fault
def test_sample_data_refuses_a_non_empty_folder(digits, lost_bytes):
    raw = digits['data'] / 'raw'
    before = lost_bytes.watch(raw)
    res = run(['ml-sample-data', 'data/digits'], digits['cwd'])
    assert_clean_error(res, 'data/digits/raw', 'not empty')
    assert tree_hash(raw) == before
    assert lost_bytes.check() == 0


def test_init_config_then_optuna_needs_force(digits):
    cwd = digits['cwd']
    cfg_file = cwd / 'configs' / 'digits_config.yaml'
    res = run(['ml-init-config', 'data/digits'], cwd)
    assert_ok(res)
    assert 'configs/digits_config.yaml' in res.stdout
    text = cfg_file.read_text()
    assert '\nsearch:' not in text
    cfg = load_config(cfg_file)
    assert cfg.data.data_dir == 'data/digits' and cfg.data.dataset_name == 'digits'
    assert cfg.data.image_size >= 8 and cfg.training.batch_size >= 1
    # a second ml-init-config without --force refuses and leaves the file as it was
    before = tree_hash(cfg_file)
    res = run(['ml-init-config', 'data/digits', '--optuna'], cwd)
    assert_clean_error(res, 'configs/digits_config.yaml', '--force')
    assert tree_hash(cfg_file) == before
    # with --force (and the dashed spelling of --out_dir) it writes the search: section
    res = run(['ml-init-config', 'data/digits', '--optuna', '--force', '--out-dir', 'configs'], cwd)
    assert_ok(res)
    text = cfg_file.read_text()
    assert '\nsearch:' in text and 'search_space:' in text
    cfg = load_config(cfg_file)
    assert cfg.search.study_name == 'digits_search'
    assert cfg.search.n_trials >= 1 and cfg.search.direction in ('maximize', 'minimize')
    assert 'optimizer.lr' in cfg.search.search_space
    assert not list(cfg_file.parent.glob('.*.tmp'))   # atomic write left no temporary file


# ------------------------------------------------------------------ small datasets

def test_split_dashed_spellings_and_a_single_fold(tiny, tmp_path):
    res = run(['ml-split', '--raw-data', 'data/tiny/raw', '--folds', 1, '--test-ratio', 0.25,
               '--val-ratio', 0.2, '--bad-images', 'skip'], tmp_path)
    assert_ok(res)
    m = json.loads((tiny / 'splits' / 'manifest.json').read_text())
    assert m['folds'] == 1 and m['test_ratio'] == 0.25 and m['val_ratio'] == 0.2
    test, [(train, val)] = split_sets(tiny / 'splits', 1)
    assert len(test) == 25 and len(val) == 15 and len(train) == 60
    assert train | val | test == raw_files(tiny)


def test_split_same_seed_same_files_other_seed_other_files(tiny, tmp_path):
    other = tmp_path / 'data' / 'tiny2'
    shutil.copytree(tiny, other)
    for name in ('tiny', 'tiny2'):
        assert_ok(run(['ml-split', '--raw_data', f'data/{name}/raw', '--folds', 2, '--seed', 3],
                      tmp_path))
    first = split_texts(tiny / 'splits')
    assert split_texts(other / 'splits') == first
    # another seed needs --force, gives other files, and keeps the old splits beside them
    before = tree_hash(other / 'splits')
    res = run(['ml-split', '--raw_data', 'data/tiny2/raw', '--folds', 2, '--seed', 4, '--force'],
              tmp_path)
    assert_ok(res)
    assert split_texts(other / 'splits') != first
    kept = list(other.glob('splits.old-*'))
    assert len(kept) == 1 and tree_hash(kept[0]) == before, show(res)
    test, folds = split_sets(other / 'splits', 2)
    assert all(tr | va | test == raw_files(other) for tr, va in folds)


@pytest.mark.fault
def test_split_after_adding_an_image_is_refused_then_forced(tiny_split, tmp_path, lost_bytes):
    from PIL import Image
    before = lost_bytes.watch(tiny_split / 'splits')
    src = tiny_split / 'raw' / '3' / sorted(p.name for p in (tiny_split / 'raw' / '3').iterdir())[0]
    Image.open(src).rotate(90).save(tiny_split / 'raw' / '3' / 'new.png')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2, '--seed', 0], tmp_path)
    assert_clean_error(res, 'data/tiny/splits', '--force')
    assert tree_hash(tiny_split / 'splits') == before
    assert lost_bytes.check() == 0
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2, '--seed', 0, '--force'],
              tmp_path)
    assert_ok(res)
    test, folds = split_sets(tiny_split / 'splits', 2)
    assert 'raw/3/new.png' in test | folds[0][0] | folds[0][1]
    check_splits(tiny_split, 1)



def _resaved_copy(tiny):
    "Save the first image of class 2, shrunk and as JPEG, into class 8; return the original."
    from PIL import Image
    src = sorted((tiny / 'raw' / '2').iterdir())[0]
    Image.open(src).convert('RGB').resize((15, 15)).save(tiny / 'raw' / '8' / 'resaved.jpg',
                                                         quality=80)
    return src


@pytest.mark.fault
def test_split_warns_about_a_near_duplicate_in_another_class(tiny, tmp_path):
    "A copy saved smaller as JPEG in another class: one warning naming both files, in the manifest."
    src = _resaved_copy(tiny)
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_ok(res)
    pair = [f'raw/2/{src.name}', 'raw/8/resaved.jpg']
    near = [ln for ln in res.stderr.splitlines() if 'near-identical' in ln]
    assert len(near) == 1, show(res)                   # the distinct digits: no warning
    assert all(p in near[0] for p in pair) and "different classes ['2', '8']" in near[0], near
    m = json.loads((tiny / 'splits' / 'manifest.json').read_text())
    [g] = m['near_duplicates']
    assert g['paths'] == pair and g['classes'] == ['2', '8'] and g['distance'] <= 4, g
    assert m['duplicates'] == []                       # not an exact copy
    check_splits(tiny, 1)                              # a warning, not a refusal


@pytest.mark.fault
def test_split_near_dup_distance_flag(tiny, tmp_path):
    "--near_dup_distance 0 turns the check off; a value out of 0..10 is one clear line."
    _resaved_copy(tiny)
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--near-dup-distance', 11], tmp_path)
    assert_clean_error(res, '--near_dup_distance must be a whole number of bits from 0', '11')
    assert not (tiny / 'splits').exists()
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2, '--near_dup_distance', 0],
              tmp_path)
    assert_ok(res)
    assert 'near-identical' not in res.stderr, show(res)
    m = json.loads((tiny / 'splits' / 'manifest.json').read_text())
    assert (m['near_dup_distance'], m['near_duplicates']) == (0, [])

# ------------------------------------------------------------------ bad arguments

@pytest.mark.fault
@pytest.mark.parametrize('args, needles', [
    (['--folds', '0'], ['--folds', '0']),
    (['--test-ratio', '1.5'], ['--test_ratio', '1.5']),
    (['--folds', '1', '--val-ratio', '1'], ['--val_ratio', '1']),
    (['--bad_images', 'maybe'], ['bad_images', 'maybe']),
])
def test_split_bad_values_clear_error_nothing_written(tiny, tmp_path, args, needles):
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', *args], tmp_path)
    assert_clean_error(res, *needles)
    assert not (tiny / 'splits').exists()
    assert not list(tiny.glob('.splits.tmp-*'))


@pytest.mark.fault
@pytest.mark.parametrize('args, needles', [
    (['--raw_data', 'data/tiny/raw', '--folds', 'abc'], ['--folds', 'abc']),
    (['--raw_data', 'data/tiny/raw', '--colour', 'red'], ['--colour']),
    (['--folds', '2'], ['--raw_data']),
])
def test_split_malformed_arguments_usage_error(tiny, tmp_path, args, needles):
    res = run(['ml-split', *args], tmp_path)
    assert_usage_error(res, *needles)
    assert 'usage: ml-split' in res.stderr
    assert not (tiny / 'splits').exists()


@pytest.mark.fault
def test_split_missing_raw_folder(tmp_path):
    res = run(['ml-split', '--raw_data', 'data/nope/raw'], tmp_path)
    assert_clean_error(res, 'data/nope/raw', 'no such folder')
    assert not (tmp_path / 'data').exists()


@pytest.mark.fault
def test_debug_shows_the_traceback(tmp_path):
    res = run(['ml-split', '--raw_data', 'data/nope/raw', '--debug'], tmp_path)
    assert res.returncode != 0
    assert 'Traceback' in res.stderr and 'DataError' in res.stderr and 'data/nope/raw' in res.stderr


@pytest.mark.fault
def test_split_given_the_dataset_folder_instead_of_raw(tiny, tmp_path):
    res = run(['ml-split', '--raw_data', 'data/tiny', '--folds', 2], tmp_path)
    assert not (tmp_path / 'data' / 'splits').exists(), show(res)
    assert_clean_error(res, 'data/tiny')


@pytest.mark.fault
def test_init_config_missing_dataset(tmp_path):
    res = run(['ml-init-config', 'data/nope'], tmp_path)
    assert_clean_error(res, 'data/nope')
    assert not (tmp_path / 'configs' / 'nope_config.yaml').exists()


@pytest.mark.fault
def test_init_config_empty_class_folder(tiny, tmp_path):
    (tiny / 'raw' / 'zz_none').mkdir()
    (tiny / 'raw' / 'zz_none' / '.DS_Store').write_bytes(b'junk')
    res = run(['ml-init-config', 'data/tiny'], tmp_path)
    assert_clean_error(res, 'data/tiny/raw', 'zz_none')
    assert not (tmp_path / 'configs' / 'tiny_config.yaml').exists()


# ------------------------------------------------------------------ --help stays light

@pytest.mark.parametrize('cmd, flags', [
    ('ml-split', ['--raw_data', '--raw-data', '--test_ratio', '--test-ratio', '--bad_images',
                  '--bad-images', '--folds', '--seed', '--force', '--debug']),
    ('ml-init-config', ['data_dir', '--optuna', '--out_dir', '--out-dir', '--force']),
    ('ml-sample-data', ['dest', '--size']),
])
def test_help(tmp_path, cmd, flags):
    res = run([cmd, '--help'], tmp_path)
    assert_ok(res)
    assert res.stdout.startswith(f'usage: {cmd}')
    for f in flags: assert f in res.stdout, f
    assert list(tmp_path.iterdir()) == []   # --help writes nothing


def test_cli_import_and_help_do_not_import_torch_or_sklearn(tmp_path):
    code = '''
import sys
import imgcls.cli
heavy = lambda: sorted(m for m in ('torch', 'sklearn', 'torchvision') if m in sys.modules)
assert not heavy(), f'importing imgcls.cli imported {heavy()}'
for f in (imgcls.cli.ml_split, imgcls.cli.ml_init_config, imgcls.cli.ml_sample_data):
    try: f(['--help'])
    except SystemExit as e: assert e.code == 0, e.code
assert not heavy(), f'--help imported {heavy()}'
print('light')
'''
    res = run_py(code, tmp_path)
    assert_ok(res)
    assert res.stdout.strip().endswith('light')
