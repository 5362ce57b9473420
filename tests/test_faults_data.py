"""FAULTS.md "Images and folders", fed to ml-split end to end: damaged files, odd image modes,
hidden files, empty and too-small classes, duplicates, and a refused command that must leave what
was written before untouched."""
from __future__ import annotations

import datetime
import json
import shutil

import numpy as np
import pytest
from helpers import (assert_clean_error, assert_ok, make_damaged_dataset, make_good_class,
                     read_lines, run, show, split_sets, tree_hash)
from PIL import Image, ImageFile

from imgcls.images import check_image, list_image_files, load_image, scan_images

REASONS = {'raw/a/truncated.jpg': 'truncated', 'raw/a/zero.jpg': 'empty',
           'raw/a/text.jpg': 'not an image', 'raw/a/bomb.png': 'decompression bomb'}


@pytest.fixture(scope='module')
def damaged(tmp_path_factory):
    "The damaged dataset split with the default policy (skip) and, in a copy, --bad_images error."
    cwd = tmp_path_factory.mktemp('damaged')
    d = cwd / 'data' / 'bad'
    files = make_damaged_dataset(d)
    shutil.copytree(d, cwd / 'data' / 'bad_err')
    skip = run(['ml-split', '--raw_data', 'data/bad/raw', '--folds', 2], cwd)
    err = run(['ml-split', '--raw_data', 'data/bad_err/raw', '--folds', 2, '--bad_images', 'error'],
              cwd)
    return dict(cwd=cwd, data=d, err_data=cwd / 'data' / 'bad_err', files=files, skip=skip, err=err)


def test_fixture_has_the_intended_modes(damaged):
    a = damaged['data'] / 'raw' / 'a'
    modes = {}
    for name in ('cmyk.jpg', 'palette.png', 'gray16.png', 'exif.jpg'):
        with Image.open(a / name) as im: modes[name] = (im.mode, im.getexif().get(0x0112))
    assert modes == {'cmyk.jpg': ('CMYK', None), 'palette.png': ('P', None),
                     'gray16.png': ('I;16', None), 'exif.jpg': ('RGB', 6)}


@pytest.mark.fault
def test_skip_lists_each_bad_file_by_path_on_stderr(damaged):
    res = damaged['skip']
    assert_ok(res)
    for path, why in REASONS.items():
        lines = [ln for ln in res.stderr.splitlines() if path in ln]
        assert len(lines) == 1 and why in lines[0], f'{path}: {lines}\n{show(res)}'
    assert '4 file(s) rejected' in res.stdout


@pytest.mark.fault
def test_skip_ignores_hidden_and_non_image_files(damaged):
    res = damaged['skip']
    out = res.stdout + res.stderr
    for word in [*damaged['files']['ignored'], '.DS_Store', '.hidden', 'notes.txt', 'checkpoint']:
        assert word not in out, f'{word} was mentioned\n{show(res)}'


@pytest.mark.fault
def test_skip_split_files_hold_the_good_and_odd_mode_images_only(damaged):
    d = damaged['data']
    test, folds = split_sets(d / 'splits', 2)
    want = damaged['files']['good'] | damaged['files']['odd']
    for train, val in folds: assert train | val | test == want
    m = json.loads((d / 'splits' / 'manifest.json').read_text())
    assert {r['path'] for r in m['rejected']} == damaged['files']['bad']
    assert m['n_images'] == len(want) == 20


@pytest.mark.fault
def test_error_policy_refuses_listing_every_bad_file(damaged):
    line = assert_clean_error(damaged['err'], *sorted(damaged['files']['bad']))
    assert '4 unusable' in line
    d = damaged['err_data']
    assert not (d / 'splits').exists() and not list(d.glob('.splits.tmp-*'))


@pytest.mark.fault
def test_error_policy_refuses_even_when_skip_splits_are_up_to_date(damaged, lost_bytes):
    before = lost_bytes.watch(damaged['data'] / 'splits')
    res = run(['ml-split', '--raw_data', 'data/bad/raw', '--folds', 2, '--bad_images', 'error'],
              damaged['cwd'])
    assert tree_hash(damaged['data'] / 'splits') == before
    assert lost_bytes.check() == 0
    assert_clean_error(res, *sorted(damaged['files']['bad']))


@pytest.mark.fault
def test_scan_and_list_ignore_hidden_files(damaged):
    raw = damaged['data'] / 'raw'
    listed = {p.relative_to(raw.parent).as_posix() for p in list_image_files(raw)}
    f = damaged['files']
    assert listed == f['good'] | f['odd'] | f['bad']
    scan = scan_images(raw, workers=2)
    assert scan.classes == ['a', 'b']
    assert {p for p, _ in scan.rejected} == f['bad']


@pytest.mark.fault
def test_check_image_reasons(damaged):
    d = damaged['data']
    for path, why in REASONS.items():
        c = check_image(d / path)
        assert not c.ok and why in c.reason, (path, c.reason)
    for path in damaged['files']['odd']: assert check_image(d / path).ok, path


@pytest.mark.fault
def test_load_image_converts_odd_modes_to_rgb(damaged):
    a = damaged['data'] / 'raw' / 'a'
    cmyk = load_image(a / 'cmyk.jpg')
    assert cmyk.mode == 'RGB' and cmyk.size == (30, 20)
    pal = load_image(a / 'palette.png')              # transparency composited on white
    assert pal.mode == 'RGB' and pal.getpixel((2, 5)) == (0, 0, 255)
    assert pal.getpixel((25, 5)) == (255, 255, 255)
    g = np.asarray(load_image(a / 'gray16.png'))     # 16-bit scaled to 0..255, never clipped
    assert g.shape == (20, 30, 3) and g.dtype == np.uint8
    assert (g[1:, 5] == 0).all() and (g[:, 15] == 128).all() and (g[:, 25] == 255).all()


@pytest.mark.fault
def test_exif_orientation_applied_in_loading_and_checking(damaged):
    # (the datasets' use of it is checked in test_public_api, which imports torch anyway)
    d = damaged['data']
    im = load_image(d / 'raw' / 'a' / 'exif.jpg')
    assert im.mode == 'RGB' and im.size == (20, 30)  # stored 30x20, orientation 6: upright 20x30
    assert check_image(d / 'raw' / 'a' / 'exif.jpg').size == (20, 30)


@pytest.mark.fault
def test_truncated_images_are_never_loaded_globally(damaged):
    import imgcls.images, imgcls.splits  # noqa: F401
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(OSError): load_image(damaged['data'] / 'raw' / 'a' / 'truncated.jpg')


# ------------------------------------------------------------------ class folders

@pytest.mark.fault
def test_empty_class_folder_is_refused_before_splitting(tiny, tmp_path):
    (tiny / 'raw' / 'zz_none').mkdir()
    (tiny / 'raw' / 'zz_none' / '.DS_Store').write_bytes(b'junk')
    (tiny / 'raw' / 'zz_none' / 'notes.txt').write_text('nothing here')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_clean_error(res, 'data/tiny/raw', 'zz_none')
    assert not (tiny / 'splits').exists() and not list(tiny.glob('.splits.tmp-*'))


def _only_bad_class(tiny):
    c = tiny / 'raw' / 'zz_bad'
    c.mkdir()
    (c / 'zero.png').write_bytes(b'')
    (c / 'text.jpg').write_text('no image')


@pytest.mark.fault
def test_class_of_only_bad_files_is_refused(tiny, tmp_path):
    _only_bad_class(tiny)
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_clean_error(res, 'data/tiny/raw', 'zz_bad')
    assert not (tiny / 'splits').exists()


@pytest.mark.fault
def test_class_of_only_bad_files_lists_them(tiny, tmp_path):
    _only_bad_class(tiny)
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert res.returncode == 1, show(res)
    assert 'raw/zz_bad/zero.png' in res.stderr and 'raw/zz_bad/text.jpg' in res.stderr, show(res)


@pytest.mark.fault
def test_class_too_small_for_the_folds_is_refused(tiny, tmp_path):
    make_good_class(tiny / 'raw' / 'zz_small', 3, seed=5, w=16, h=16)
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 5], tmp_path)
    line = assert_clean_error(res, 'zz_small', '(3)', '--folds')
    assert "'0'" not in line   # only the small class is named
    assert not (tiny / 'splits').exists() and not list(tiny.glob('.splits.tmp-*'))


# ------------------------------------------------------------------ duplicates

@pytest.fixture(scope='module')
def duplicates(tmp_path_factory, _tiny_pristine):
    "Tiny digits plus a copy of a '0' image in class '1', and copies of '2' images inside '2'."
    cwd = tmp_path_factory.mktemp('dups')
    d = cwd / 'data' / 'tiny'
    shutil.copytree(_tiny_pristine, d)
    zero = sorted((d / 'raw' / '0').iterdir())[0]
    shutil.copy(zero, d / 'raw' / '1' / 'copy_of_0.png')
    twos = sorted((d / 'raw' / '2').iterdir())
    for i, src in enumerate(twos[:3]): shutil.copy(src, d / 'raw' / '2' / f'same_class_{i}.png')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], cwd)
    return dict(data=d, res=res, cross=[zero.relative_to(d).as_posix(), 'raw/1/copy_of_0.png'],
                manifest=json.loads((d / 'splits' / 'manifest.json').read_text()))


@pytest.mark.fault
def test_duplicates_across_classes_reported_at_split_time(duplicates):
    res = duplicates['res']
    assert_ok(res)
    lines = [ln for ln in res.stderr.splitlines() if all(p in ln for p in duplicates['cross'])]
    assert len(lines) == 1 and 'different classes' in lines[0], show(res)
    groups = duplicates['manifest']['duplicates']
    assert sorted(duplicates['cross']) in [sorted(g['paths']) for g in groups]
    # duplicates across test and train/val are reported too
    for g in groups:
        if len(g['splits']) > 1: assert any(all(p in ln for p in g['paths'])
                                            for ln in res.stderr.splitlines()), g


@pytest.mark.fault
def test_every_duplicate_group_counted_is_listed(duplicates):
    res = duplicates['res']
    groups = duplicates['manifest']['duplicates']
    assert f'{len(groups)} group(s) of identical images' in res.stdout
    for g in groups:
        assert any(all(p in ln for p in g['paths']) for ln in res.stderr.splitlines()), g


@pytest.mark.fault
def test_duplicates_across_test_and_train_val_reported_at_split_time(tiny, tmp_path):
    # a class of five copies of one image: one copy goes to test, the others to train/val
    c = tiny / 'raw' / 'zz_same'
    make_good_class(c, 1, seed=11, w=16, h=16)
    for i in range(1, 5): shutil.copy(c / 'good_0.png', c / f'copy_{i}.png')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_ok(res)
    paths = sorted(f'raw/zz_same/{p.name}' for p in c.iterdir())
    lines = [ln for ln in res.stderr.splitlines() if all(p in ln for p in paths)]
    assert len(lines) == 1 and 'across test and train/val' in lines[0], show(res)
    m = json.loads((tiny / 'splits' / 'manifest.json').read_text())
    [g] = [g for g in m['duplicates'] if sorted(g['paths']) == paths]
    assert 'test' in g['splits'] and len(g['splits']) > 1 and g['leak_folds'] == [0, 1], g
    test = set(read_lines(tiny / 'splits' / 'test.txt'))
    assert len(test & set(paths)) == 1      # reported, and still used


# ------------------------------------------------------------------ replacing splits

@pytest.mark.fault
def test_force_when_the_backup_name_is_taken_is_clean(tiny_split, tmp_path, lost_bytes):
    before = tree_hash(tiny_split / 'splits')
    now, taken = datetime.datetime.now(), []
    for s in range(-5, 180):       # every name a backup made in the next three minutes could take
        stamp = (now + datetime.timedelta(seconds=s)).strftime('%Y%m%d-%H%M%S')
        taken.append(tiny_split / f'splits.old-{stamp}')
        taken[-1].mkdir()
        (taken[-1] / 'earlier.txt').write_text('an earlier backup\n')
    lost_bytes.watch(*taken)
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2, '--seed', 9, '--force'],
              tmp_path)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)
    assert res.returncode in (0, 1), show(res)
    kept = [tree_hash(p) for p in tiny_split.glob('splits*')]
    assert before in kept, 'the previous splits were lost'
    for p in taken:   # earlier backups untouched
        assert [f.name for f in p.iterdir()] == ['earlier.txt'], p
    assert lost_bytes.check() == 0
    assert read_lines(tiny_split / 'splits' / 'test.txt')
