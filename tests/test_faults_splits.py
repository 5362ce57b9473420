"""FAULTS.md "Split files": damaged, tampered or stale index files are refused by `check_splits` /
`load_split` with one line naming the file (and line) and what to do."""
from __future__ import annotations

import pytest
from helpers import assert_clean_error, read_lines, run, tiny_config

from imgcls.core import DataError
from imgcls.splits import check_splits, load_split, read_index


def append(path, line: str) -> int:
    "Add `line` to index file `path`; return its line number."
    n = len(path.read_text().splitlines()) + 1
    with open(path, 'a') as f: f.write(line + '\n')
    return n


def refused(data_dir, fold=0, split='train') -> str:
    "The one-line message of the `DataError` that `load_split` must raise."
    with pytest.raises(DataError) as e: load_split(data_dir, split, fold)
    msg = str(e.value)
    assert '\n' not in msg
    return msg


def test_fresh_splits_load(tiny_split):
    items, classes = load_split(tiny_split, 'train', 1)
    assert classes == [str(i) for i in range(10)] and items
    assert all(isinstance(y, int) and 0 <= y < 10 for _, y in items)


@pytest.mark.fault
@pytest.mark.parametrize('line, needle', [
    ('raw/3/nope.png', 'does not exist'),
    ('/etc/passwd', 'absolute path'),
    ('C:/data/raw/3/x.png', 'absolute path'),
    ('raw/3/../4/x.png', "'..'"),
    ('raw/zz/0001.png', "class 'zz'"),
    ('3/0003.png', 'raw/<class>/<image>'),
])
def test_bad_index_line_names_file_and_line(tiny_split, line, needle):
    f = tiny_split / 'splits' / 'fold_0_train.txt'
    n = append(f, line)
    msg = refused(tiny_split)
    assert f'fold_0_train.txt:{n}' in msg and needle in msg, msg


@pytest.mark.fault
@pytest.mark.parametrize('line, needle', [('raw/3/nope.png', 'does not exist'),
                                           ('raw/3/../4/x.png', "'..'")])
def test_bad_index_line_through_ml_train_names_file_and_line(tiny_split, tmp_path, line, needle):
    f = tiny_split / 'splits' / 'fold_0_train.txt'
    n = append(f, line)
    res = run(['ml-train', '--config', tiny_config(tmp_path)], tmp_path)
    assert_clean_error(res, f'fold_0_train.txt:{n}', needle)
    assert not (tmp_path / 'runs').exists()


@pytest.mark.fault
def test_repeated_entry_names_both_lines(tiny_split):
    f = tiny_split / 'splits' / 'fold_1_val.txt'
    first = read_lines(f)[0]
    n = append(f, first)
    msg = refused(tiny_split, fold=1, split='val')
    assert f'fold_1_val.txt:{n}' in msg and 'repeats line 1' in msg and first in msg, msg


@pytest.mark.fault
@pytest.mark.parametrize('src, dst, what', [
    ('fold_0_train.txt', 'fold_0_val.txt', 'train and val'),
    ('test.txt', 'fold_0_train.txt', 'train and test'),
    ('test.txt', 'fold_1_val.txt', 'val and test'),
])
def test_overlap_between_splits_is_refused(tiny_split, src, dst, what):
    sd = tiny_split / 'splits'
    line = read_lines(sd / src)[0]
    append(sd / dst, line)
    msg = refused(tiny_split)
    assert what in msg and line in msg, msg


@pytest.mark.fault
def test_folds_covering_other_images_means_test_sets_differ(tiny_split):
    f = tiny_split / 'splits' / 'fold_1_val.txt'
    lines = read_lines(f)
    f.write_text(''.join(x + '\n' for x in lines[1:]))
    msg = refused(tiny_split)
    assert 'test sets differ' in msg and 'fold 1' in msg and 're-split' in msg, msg


@pytest.mark.fault
def test_edited_test_file_is_refused(tiny_split):
    f = tiny_split / 'splits' / 'test.txt'
    f.write_text(''.join(x + '\n' for x in read_lines(f)[1:]))
    msg = refused(tiny_split, split='test')
    assert 'test.txt' in msg, msg


@pytest.mark.fault
@pytest.mark.parametrize('change', ['add', 'remove', 'resize'])
def test_stale_splits_are_refused_with_how_to_resplit(tiny_split, change):
    cls = tiny_split / 'raw' / '4'
    img = sorted(cls.iterdir())[-1]
    if change == 'add': (cls / 'extra.png').write_bytes(img.read_bytes() + b'\0')
    elif change == 'remove': img.unlink()
    else:
        with open(img, 'ab') as f: f.write(b'\0' * 7)   # same name, other content and size
    msg = refused(tiny_split)
    assert 'another version' in msg, msg
    assert 'ml-split --raw_data' in msg and '--folds 2' in msg and '--force' in msg, msg


@pytest.mark.fault
@pytest.mark.parametrize('fold', [2, 5, -1])
def test_fold_outside_range_lists_the_folds(tiny_split, fold):
    msg = refused(tiny_split, fold=fold)
    assert f'fold {fold} does not exist' in msg and 'folds 0, 1' in msg, msg
    with pytest.raises(DataError, match='folds 0, 1'): check_splits(tiny_split, fold)


@pytest.mark.fault
def test_no_splits_yet_says_how_to_make_them(tiny):
    msg = refused(tiny)
    assert 'no splits yet' in msg and 'ml-split --raw_data' in msg, msg


@pytest.mark.fault
def test_missing_manifest_says_how_to_remake(tiny_split):
    (tiny_split / 'splits' / 'manifest.json').unlink()
    msg = refused(tiny_split)
    assert 'manifest.json' in msg and '--force' in msg, msg


@pytest.mark.fault
def test_missing_index_file(tiny_split):
    (tiny_split / 'splits' / 'fold_1_train.txt').unlink()
    msg = refused(tiny_split)
    assert 'fold_1_train.txt' in msg and 'no such index file' in msg, msg


@pytest.mark.fault
def test_unknown_split_name(tiny_split):
    with pytest.raises(DataError, match="'training'"): load_split(tiny_split, 'training')


@pytest.mark.fault
def test_read_index_on_its_own(tiny_split):
    f = tiny_split / 'splits' / 'test.txt'
    items = read_index(f)
    assert items and all(p.startswith('raw/') and p.split('/')[1] == c for p, c in items)
    f.write_bytes(b'raw/1/\xff\xfe.png\n')
    with pytest.raises(DataError, match='UTF-8'): read_index(f)
