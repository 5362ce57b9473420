"""The third reliability round (#35), through the installed commands: no secret in any file a
search, a run or an export writes; every output, named or derived, checked before the work (never
an input, never inside a dataset's raw/, a user's file only with --force); numbers checked for
range; devices and pipes never read; the machine's faults (a full disk, a vanished class folder,
an undecodable file name, memory) as one line; no files in the user's home; nothing left out
without a word; a search with nothing to search refused; an export compared against another
dataset refused; the guide's switch to differential privacy works on a written config."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from helpers import (assert_clean_error, assert_ok, assert_usage_error, command, env, run,
                     tiny_config)

BEST = 'runs/my_run/weights/best.pt'
PG_URL = os.environ.get('IMGCLS_TEST_POSTGRES_URL')
needs_pg = pytest.mark.skipif(not PG_URL, reason='IMGCLS_TEST_POSTGRES_URL is not set (source '
                                                  '.ci/services.sh to start PostgreSQL)')
PASSWORD = 'Sx%2Fq%23w%40e9-secret'          # as written in the URL: /, # and @ escaped
SECRETS = (PASSWORD, unquote(PASSWORD))       # neither may appear in any file


def _search_config(tmp_path, **over) -> Path:
    s = {'study_name': f'sec_{uuid.uuid4().hex[:8]}', 'n_trials': 1,
         'sampler': {'type': 'RandomSampler'}, 'pruner': {'type': 'NopPruner'},
         'search_space': {'optimizer.lr': {'type': 'loguniform', 'low': 0.01, 'high': 0.1}}}
    s.update(over)
    return tiny_config(tmp_path, training__num_epochs=1, search=s)


def _files_holding(root: Path, secrets) -> list[str]:
    "Every file under `root` whose bytes hold one of `secrets`."
    hits = []
    for f in root.rglob('*'):
        if not f.is_file() or f.is_symlink(): continue
        data = f.read_bytes()
        hits += [f'{f.relative_to(root)}: {s}' for s in secrets if s.encode() in data]
    return hits


# ---------------------------------------------------------------- 1. secrets

@needs_pg
@pytest.mark.fault
@pytest.mark.parametrize('how', ['flag', 'environment'])
def test_no_file_a_search_run_or_export_writes_holds_the_password(tiny_split, tmp_path, how):
    url = PG_URL.replace('postgres@', f'postgres:{PASSWORD}@', 1)
    assert PASSWORD in url
    cfg = _search_config(tmp_path)
    args, e = ['ml-search', '--config', cfg.relative_to(tmp_path)], env()
    if how == 'flag': args += ['--storage', url]
    else: e['IMGCLS_SEARCH_STORAGE'] = url          # the URL never sits in a config file
    res = subprocess.run([command(a) if i == 0 else str(a) for i, a in enumerate(args)],
                         cwd=tmp_path, capture_output=True, text=True, env=e, timeout=600)
    assert_ok(res)
    assert not [s for s in SECRETS if s in res.stdout + res.stderr], res.stderr
    [best] = tmp_path.glob('runs/optuna_studies/*/best_config.yaml')
    assert yaml.safe_load(best.read_text())['search']['storage'].startswith(
        'postgresql+psycopg2://postgres:***@')
    [ck] = tmp_path.glob('runs/optuna_studies/*/trial_0/weights/best.pt')
    assert_ok(run(['ml-export', '--checkpoint', ck.relative_to(tmp_path), '--validate'],
                  tmp_path))
    assert ck.with_suffix('.onnx').is_file()
    assert _files_holding(tmp_path, SECRETS) == []   # configs, manifests, checkpoints, logs, ONNX


# ---------------------------------------------------------------- 2. outputs over inputs

@pytest.mark.fault
def test_a_default_output_never_replaces_its_input(my_project, lost_bytes):
    "A PyTorch checkpoint named model.onnx: the default output would be the input itself."
    shutil.copy(my_project / BEST, my_project / 'model.onnx')
    lost_bytes.watch(my_project / 'model.onnx')
    assert_clean_error(run(['ml-export', '--checkpoint', 'model.onnx'], my_project),
                       'model.onnx is the input')
    assert lost_bytes.check() == 0


@pytest.mark.fault
def test_a_users_files_beside_an_output_are_refused_without_force(my_project, lost_bytes):
    (my_project / 'mine.int8.onnx').write_bytes(b'my own int8 model')
    (my_project / 'my_results.csv').write_text('path,mine\nx,1\n')
    lost_bytes.watch(my_project / 'mine.int8.onnx', my_project / 'my_results.csv')
    res = run(['ml-export', '--checkpoint', BEST, '--output', 'mine.onnx', '--quantize', 'int8',
               '--calib_images', 16], my_project)
    assert_clean_error(res, 'mine.int8.onnx exists: --force replaces it')
    assert not (my_project / 'mine.onnx').exists()         # refused before anything was written
    res = run(['ml-inference', '--checkpoint_path', BEST, '--images', 'data/my_dataset/raw/1',
               '--output', 'my_results.csv'], my_project)
    assert_clean_error(res, 'my_results.csv exists: --force replaces it')
    assert lost_bytes.check() == 0
    res = run(['ml-inference', '--checkpoint_path', BEST, '--images', 'data/my_dataset/raw/1',
               '--output', 'my_results.csv', '--force'], my_project)
    assert_ok(res)
    assert (my_project / 'my_results.csv').read_text().startswith('path,')
    # an export beside the checkpoint replaces the earlier export there, not a file of the user's
    assert_ok(run(['ml-export', '--checkpoint', BEST], my_project))
    assert_ok(run(['ml-export', '--checkpoint', BEST], my_project))


# ---------------------------------------------------------------- 3. outputs inside the data

@pytest.mark.fault
def test_nothing_is_written_inside_a_datasets_raw_folder(my_project, lost_bytes):
    raw = my_project / 'data/my_dataset/raw'
    lost_bytes.watch(raw)
    before = sorted(p.relative_to(raw) for p in raw.rglob('*'))
    assert_clean_error(run(['ml-train', '--config', 'configs/my_dataset_config.yaml', '--set',
                            'output.runs_dir=data/my_dataset/raw'], my_project),
                       'is inside the dataset folder')
    assert_clean_error(run(['ml-visualise', '--mode', 'samples', '--run_dir', 'runs/my_run',
                            '--output', 'data/my_dataset/raw/1'], my_project),
                       'is inside the dataset folder')
    assert_clean_error(run(['ml-inference', '--checkpoint_path', BEST, '--images',
                            'data/my_dataset/raw/1', '--output', 'data/my_dataset/raw/p.csv'],
                           my_project), 'is inside the dataset folder')
    assert_clean_error(run(['ml-export', '--checkpoint', BEST, '--output',
                            'data/my_dataset/raw/2/m.onnx'], my_project),
                       'is inside the dataset folder')
    assert sorted(p.relative_to(raw) for p in raw.rglob('*')) == before
    assert lost_bytes.check() == 0


# ---------------------------------------------------------------- 4. ranges

@pytest.mark.fault
@pytest.mark.parametrize('args, needle, usage', [
    (['ml-analyze', 'runs/my_run', '--max_images', '-1'], 'max-images: must be >= 1', True),
    (['ml-analyze', 'runs/my_run', '--max_images', '0'], 'max-images: must be >= 1', True),
    (['ml-analyze', 'runs/my_run', '--top', '-2'], 'argument --top: must be >= 1', True),
    (['ml-inference', '--checkpoint_path', BEST, '--batch_size', '0'],
     '--batch_size must be >= 1, got 0', False),
    (['ml-inference', '--checkpoint_path', BEST, '--images', 'data/my_dataset/raw/1',
      '--batch_size', '-1'], '--batch_size must be >= 1, got -1', False),
    (['ml-visualise', '--mode', 'launch', '--port', '99999'], 'must be 0-65535, got 99999', True),
], ids=['analyze-max-images-negative', 'analyze-max-images-zero', 'analyze-top-negative',
        'inference-batch-zero', 'predict-batch-negative', 'visualise-port'])
def test_numbers_out_of_range_are_one_line(my_project, args, needle, usage):
    res = run(args, my_project)
    if usage: assert_usage_error(res, needle)
    else: assert_clean_error(res, needle)
    assert not (my_project / 'runs/my_run/analysis').exists()


@pytest.mark.fault
@pytest.mark.parametrize('key, value, needle', [
    ('augmentation.scale', '[1.0, 0.08]', '[low, high] with low <= high'),
    ('augmentation.std', '[0, 0, 0]', 'augmentation.std must be a list of numbers > 0'),
    ('loss.class_weights', '[0, 0]', 'loss.class_weights must be a list of numbers > 0'),
])
def test_config_values_out_of_range_are_refused_before_a_run(tiny_split, tmp_path, key, value,
                                                             needle):
    cfg = tiny_config(tmp_path, training__num_epochs=1)
    res = run(['ml-train', '--config', cfg.relative_to(tmp_path), '--set', f'{key}={value}'],
              tmp_path)
    assert_clean_error(res, needle)
    assert not (tmp_path / 'runs').exists()                  # no half-made run


# ---------------------------------------------------------------- 5. special files

@pytest.mark.fault
def test_devices_and_pipes_in_the_data_are_listed_never_read(tiny, tmp_path):
    raw = tiny / 'raw'
    (raw / '1' / 'zero.png').symlink_to('/dev/zero')
    os.mkfifo(raw / '2' / 'pipe.jpg')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path, timeout=120)
    assert_ok(res)
    m = json.loads((tiny / 'splits/manifest.json').read_text())
    why = {r['path']: r['reason'] for r in m['rejected']}
    assert why == {'raw/1/zero.png': 'not a regular file (a device): never read',
                   'raw/2/pipe.jpg': 'not a regular file (a named pipe): never read'}, why
    assert m['n_images'] == 100


# ---------------------------------------------------------------- 6. the machine's faults

def fill(folder: Path):
    "Write `folder/filler` until the file system is full (unbuffered: closing it cannot fail)."
    with open(folder / 'filler', 'wb', buffering=0) as f, contextlib.suppress(OSError):
        while True: f.write(b'\0' * 4096)


@contextlib.contextmanager
def full_disk(folder: Path, size_kb: int = 64):
    "A small tmpfs at `folder`, filled to the last byte."
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kb}k', 'tmpfs', str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f'cannot mount a small file system to fill here: {r.stderr.strip()}')
    try:
        fill(folder)
        yield folder
    finally: subprocess.run(['umount', '-l', str(folder)], capture_output=True)


@pytest.mark.fault
def test_a_full_disk_is_one_line_and_loses_nothing(my_project, lost_bytes):
    lost_bytes.watch(my_project / 'runs')
    with full_disk(my_project / 'full') as full:
        for args in (['ml-export', '--checkpoint', BEST, '--output', 'full/m.onnx'],
                     ['ml-inference', '--checkpoint_path', BEST, '--images',
                      'data/my_dataset/raw/1', '--output', 'full/p.csv']):
            line = assert_clean_error(run(args, my_project), 'No space left on device',
                                      'the disk is full')
            assert 'full/' in line, line
        assert sorted(p.name for p in full.iterdir()) == ['filler']   # no temporary files left
    assert lost_bytes.check() == 0


@pytest.mark.fault
def test_a_full_disk_while_splitting_again_keeps_the_old_splits(tiny_split, tmp_path, lost_bytes):
    data = tmp_path / 'disk' / 'tiny'
    with full_disk(tmp_path / 'disk', 1024) as disk:
        (disk / 'filler').unlink()
        shutil.copytree(tiny_split, data)
        fill(disk)
        lost_bytes.watch(data / 'splits')
        res = run(['ml-split', '--raw_data', data / 'raw', '--folds', 3, '--force'], tmp_path)
        assert_clean_error(res, 'No space left on device')
        assert lost_bytes.check() == 0
        assert not list(data.glob('.splits*')) and not list(data.glob('splits.old-*'))


@pytest.mark.fault
def test_a_class_folder_deleted_while_training_says_how_to_resume(tiny_split, tmp_path):
    cfg = tiny_config(tmp_path, training__num_epochs=200, data__cache='none',
                      data__num_workers=1)
    p = subprocess.Popen([command('ml-train'), '--config', str(cfg.relative_to(tmp_path))],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env())
    try:
        deadline, seen = time.time() + 300, ''
        while 'epoch 2/200' not in seen and time.time() < deadline:
            line = p.stderr.readline()
            if not line: break
            seen += line
        assert 'epoch 2/200' in seen, seen
        shutil.rmtree(tiny_split / 'raw' / '3')
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None: p.kill()
    err = seen + err
    assert p.returncode == 1 and 'Traceback' not in err, err
    [line] = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert 'raw/3/' in line and 'No such file or directory' in line, line
    assert 'last.pt keeps epoch' in line and 'ml-train --resume' in line, line
    last = line.split('ml-train --resume ')[1].split()[0]
    assert Path(tmp_path, last).is_file(), line


@pytest.mark.fault
def test_an_undecodable_file_name_is_named_and_left_out(tiny, tmp_path):
    raw = tiny / 'raw'
    name = os.fsencode(raw / '4') + b'/caf\xe9.png'
    shutil.copy(next((raw / '4').iterdir()), os.fsdecode(name))
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_ok(res)
    assert 'raw/4/caf\\xe9.png (its name is not valid UTF-8' in res.stderr, res.stderr
    m = json.loads((tiny / 'splits/manifest.json').read_text())
    assert [r['path'] for r in m['left_out']] == ['raw/4/caf\\xe9.png'] and m['n_images'] == 100


@pytest.mark.fault
def test_names_an_index_line_cannot_hold_are_refused_or_left_out(tiny, tmp_path):
    "A line break in a file name would split its index line; in a class name, every line."
    raw = tiny / 'raw'
    shutil.copy(next((raw / '4').iterdir()), raw / '4' / 'two\nlines.png')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_ok(res)
    assert 'raw/4/two\\nlines.png (its name is not valid UTF-8 or holds a line break' in res.stderr
    assert all('lines.png' not in ln for ln in (tiny / 'splits/test.txt').read_text().splitlines())
    (raw / 'new\nclass').mkdir()
    shutil.copy(next((raw / '4').iterdir()), raw / 'new\nclass' / 'a.png')
    assert_clean_error(run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2, '--force'],
                           tmp_path), 'class folder name(s) new\\nclass hold')


@pytest.mark.fault
def test_a_device_given_as_an_image_or_a_split_file_as_output_is_refused(my_project, lost_bytes):
    splits = my_project / 'data/my_dataset/splits'
    lost_bytes.watch(splits)
    assert_clean_error(run(['ml-inference', '--checkpoint_path', BEST, '--images', '/dev/zero'],
                           my_project, timeout=120), '/dev/zero: not a regular file')
    assert_clean_error(run(['ml-inference', '--checkpoint_path', BEST, '--images',
                            'data/my_dataset/raw/1', '--output', 'data/my_dataset/splits/test.txt',
                            '--force'], my_project), "inside a dataset's splits/ folder")
    assert lost_bytes.check() == 0


# ---------------------------------------------------------------- 7. files outside the named ones

@pytest.mark.fault
def test_training_and_export_write_nothing_into_a_fresh_home(tiny_split, tmp_path):
    home = tmp_path / 'home'
    home.mkdir()
    e = {k: v for k, v in env().items() if k not in ('MPLCONFIGDIR', 'XDG_CACHE_HOME',
                                                     'XDG_CONFIG_HOME')}
    e['HOME'] = str(home)
    cfg = tiny_config(tmp_path, training__num_epochs=1)
    for args in (['ml-train', '--config', str(cfg.relative_to(tmp_path))],
                 ['ml-export', '--checkpoint', 'runs/tiny_fold_0/weights/best.pt', '--validate'],
                 ['ml-inference', '--checkpoint_path', 'runs/tiny_fold_0/weights/best.pt']):
        res = subprocess.run([command(args[0]), *args[1:]], cwd=tmp_path, capture_output=True,
                             text=True, env=e, timeout=600)
        assert_ok(res)
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob('*')) == []


# ---------------------------------------------------------------- 8. nothing left out silently

@pytest.mark.fault
def test_images_left_out_are_counted_and_named_once(tiny, tmp_path):
    raw = tiny / 'raw'
    shutil.copy(next((raw / '1').iterdir()), raw / 'loose.png')
    (raw / '2' / 'IMG_0001.heic').write_bytes(b'\0\0\0\x18ftypheic')
    from PIL import Image
    Image.new('RGB', (16, 16), (200, 10, 10)).save(raw / '5' / 'red.avif')
    res = run(['ml-split', '--raw_data', 'data/tiny/raw', '--folds', 2], tmp_path)
    assert_ok(res)
    warned = [ln for ln in res.stderr.splitlines() if ln.startswith('left out')]
    assert len(warned) == 1, res.stderr
    assert 'raw/loose.png (outside any class folder' in warned[0], warned
    assert 'raw/2/IMG_0001.heic (HEIC is not read' in warned[0], warned
    assert '2 file(s) that look like images left out' in res.stdout, res.stdout
    m = json.loads((tiny / 'splits/manifest.json').read_text())
    assert sorted(r['path'] for r in m['left_out']) == ['raw/2/IMG_0001.heic', 'raw/loose.png']
    assert m['n_images'] == 101                               # the AVIF image is read


# ------------------------------------------------------------ 9. a search with nothing to search

@pytest.mark.fault
def test_a_search_without_a_search_section_or_with_a_bad_name_is_refused(tiny_split, tmp_path):
    plain = tiny_config(tmp_path, training__num_epochs=1)
    assert_clean_error(run(['ml-search', '--config', plain.relative_to(tmp_path)], tmp_path),
                       'has no search: section', 'ml-init-config data/tiny --optuna')
    cfg = _search_config(tmp_path)
    assert_clean_error(run(['ml-search', '--config', cfg.relative_to(tmp_path), '--study_name',
                            'two\nlines'], tmp_path), 'must be one line of printable characters')
    assert not (tmp_path / 'runs').exists()


# ------------------------------------------------------------ 10. export on another dataset

@pytest.mark.fault
def test_comprehensive_validate_on_another_dataset_is_refused(my_project, lost_bytes):
    from imgcls.images import make_sample_dataset
    from imgcls.splits import make_splits
    other = make_sample_dataset(my_project / 'data' / 'other', size=16, n_per_class=6)
    for c in sorted(other.iterdir())[3:]: shutil.rmtree(c)
    for c, new in zip(sorted(other.iterdir()), 'xyz'): c.rename(other / new)
    make_splits(other, folds=1, seed=0)
    lost_bytes.watch(my_project / 'runs')
    res = run(['ml-export', '--checkpoint', BEST, '--comprehensive_validate', '--data_dir',
               'data/other'], my_project)
    assert_clean_error(res, "its classes (x, y, z) are not the checkpoint's")
    assert not (my_project / 'runs/my_run/weights/best.onnx').exists()
    assert lost_bytes.check() == 0


# ---------------------------------------------------------------- the guide's DP switch

@pytest.mark.fault
def test_the_documented_switch_to_dp_trains_a_written_config(tiny_split, tmp_path):
    "ml-init-config on a small folder writes epoch_repeats; trainer_type dp as the guide says."
    assert_ok(run(['ml-init-config', 'data/tiny'], tmp_path))
    cfg = tmp_path / 'configs/tiny_config.yaml'
    assert yaml.safe_load(cfg.read_text())['training']['epoch_repeats'] > 1
    # standard on a CPU without native bfloat16, mixed_precision on one with it: either way, dp
    text, n = re.subn(r'trainer_type: (standard|mixed_precision)', 'trainer_type: dp',
                      cfg.read_text(), count=1)
    assert n == 1 and 'trainer_type: dp' in text
    cfg.write_text(text)
    res = run(['ml-train', '--config', 'configs/tiny_config.yaml', '--num_epochs', 1], tmp_path,
              timeout=600)
    assert_ok(res)
    s = json.loads(next((tmp_path / 'runs').glob('*/summary.json')).read_text())
    assert 0 < s['epsilon'] <= s['target_epsilon'] * 1.01, s


@pytest.mark.fault
def test_a_run_without_a_monitor_marks_no_epoch_best(tiny_split, tmp_path):
    cfg = tiny_config(tmp_path, training__num_epochs=2, training__monitor=None,
                      training__early_stopping_patience=0)
    res = run(['ml-train', '--config', cfg.relative_to(tmp_path)], tmp_path)
    assert_ok(res)
    epochs = [ln for ln in res.stderr.splitlines() if ln.startswith('epoch ')]
    assert len(epochs) == 2 and not [ln for ln in epochs if '*best' in ln], res.stderr
    assert res.stderr.count('training.monitor is null: best.pt is the last epoch') == 1

