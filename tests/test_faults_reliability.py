"""The second reliability round (#20), through the installed commands. Outputs never destroy
inputs: an --output naming the checkpoint, a run's own file or a folder is refused with one line
before anything is computed; an evaluation on splits made after training gets a report of its own
instead of replacing the training-time one; a file where a folder is expected is one clear line,
not a traceback. Odd dataset folders: one class is refused, links that loop or break are listed,
names starting with `__` are classes like any other."""
from __future__ import annotations

import json
import shutil

import pytest
from helpers import assert_clean_error, assert_ok, run

BEST = 'runs/my_run/weights/best.pt'


@pytest.mark.fault
@pytest.mark.parametrize('args, needles', [
    (['ml-export', '--checkpoint', BEST, '--output', BEST], [f'{BEST} is the input']),
    (['ml-export', '--checkpoint', BEST, '--output', 'runs/my_run/weights/last.pt'],
     ['last.pt exists and is not a .onnx file']),
    (['ml-export', '--checkpoint', BEST, '--output', 'runs/my_run/config.yaml'],
     ['config.yaml exists and is not a .onnx file']),
    (['ml-inference', '--checkpoint_path', BEST, '--images', 'data/my_dataset/raw/1',
      '--output', BEST], [f'{BEST} is the input']),
    (['ml-inference', '--checkpoint_path', BEST, '--format', 'json',
      '--output', 'runs/my_run/summary.json'], ['summary.json exists and is not']),
    (['ml-inference', '--checkpoint_path', BEST, '--output', 'runs/my_run'],
     ['runs/my_run is a folder']),
], ids=['export-over-best', 'export-over-last', 'export-over-config', 'predict-over-best',
        'evaluate-over-summary', 'evaluate-into-folder'])
def test_an_output_never_replaces_the_users_work(my_project, lost_bytes, args, needles):
    lost_bytes.watch(my_project / 'runs')
    assert_clean_error(run(args, my_project), *needles)
    assert lost_bytes.check() == 0


@pytest.mark.fault
def test_evaluating_on_new_splits_keeps_the_training_time_report(my_project, lost_bytes):
    logs = my_project / 'runs/my_run/logs'
    lost_bytes.watch(logs / 'metrics_test.json', logs / 'classification_report_test.txt')
    assert_ok(run(['ml-split', '--raw_data', 'data/my_dataset/raw', '--folds', 2, '--seed', 7,
                   '--force'], my_project))
    res = run(['ml-inference', '--checkpoint_path', BEST], my_project)
    assert_ok(res)
    assert 'the splits or images changed since this run trained' in res.stderr, res.stderr
    assert 'the training-time one is kept' in res.stderr, res.stderr
    [new] = logs.glob('metrics_test_data_*.json')      # the evaluation on the new test split
    assert json.loads(new.read_text())['n'] > 0
    assert f"classification_report_{new.stem[len('metrics_'):]}.txt" in res.stdout, res.stdout
    assert lost_bytes.check() == 0


@pytest.mark.fault
def test_a_file_where_a_folder_is_expected_is_one_line(my_project, lost_bytes):
    (my_project / 'afile').write_text('keep me\n')
    lost_bytes.watch(my_project / 'afile')
    assert_clean_error(run(['ml-init-config', 'data/my_dataset', '--out_dir', 'afile'],
                           my_project), 'afile')
    assert_clean_error(run(['ml-sample-data', 'afile/digits'], my_project), 'afile')
    assert_clean_error(run(['ml-train', '--config', 'configs/my_dataset_config.yaml',
                            '--output.runs_dir', 'afile'], my_project), 'afile')
    assert lost_bytes.check() == 0
    assert (my_project / 'afile').is_file()


@pytest.mark.fault
def test_odd_folders_split_with_one_line_or_as_classes(tmp_path):
    "One class is refused; links that loop or break are listed, not a traceback; `__` names count."
    from imgcls.images import make_sample_dataset
    raw = make_sample_dataset(tmp_path / 'data' / 'odd', n_per_class=6)
    one = make_sample_dataset(tmp_path / 'data' / 'one', n_per_class=6)
    for c in sorted(one.iterdir())[1:]: shutil.rmtree(c)
    assert_clean_error(run(['ml-split', '--raw_data', 'data/one/raw', '--folds', 2], tmp_path),
                       'a classifier needs at least two')
    assert not (tmp_path / 'data/one/splits').exists()
    (raw / '1' / 'self.png').symlink_to('self.png')            # a link to itself
    (raw / '2' / 'gone.png').symlink_to('nowhere.png')         # a broken link
    (raw / '3' / 'again').symlink_to('.')                      # a folder link to its own folder
    (raw / '__init__').mkdir()
    for f in sorted((raw / '4').iterdir()): shutil.copy(f, raw / '__init__' / f'__{f.name}')
    res = run(['ml-split', '--raw_data', 'data/odd/raw', '--folds', 2], tmp_path)
    assert_ok(res)
    m = json.loads((tmp_path / 'data/odd/splits/manifest.json').read_text())
    assert sorted(r['path'] for r in m['rejected']) == ['raw/1/self.png', 'raw/2/gone.png'], m
    assert '__init__' in m['classes'] and m['n_images'] == 66, (m['classes'], m['n_images'])


@pytest.mark.fault
def test_a_run_being_trained_is_not_resumed_by_a_second_process(my_project, lost_bytes):
    "The first trainer holds the run folder's lock; a second `--resume`: one line, nothing written."
    import fcntl
    rd = my_project / 'runs/my_run'
    lost_bytes.watch(rd / 'weights', rd / 'logs')
    with open(rd / '.lock', 'a+') as held:   # as the first `ml-train` holds it while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.seek(0); held.truncate()
        held.write('process 4242 on trainer-host\n'); held.flush()
        res = run(['ml-train', '--resume', 'runs/my_run/weights/last.pt', '--num_epochs', 3],
                  my_project)
        assert_clean_error(res, 'runs/my_run is being trained by process 4242 on trainer-host')
    assert lost_bytes.check() == 0
    res = run(['ml-train', '--resume', 'runs/my_run/weights/last.pt', '--num_epochs', 3],
              my_project)                    # the lock released: the resume goes ahead
    assert_ok(res)
    assert json.loads((rd / 'summary.json').read_text())['epochs_run'] == 3


@pytest.mark.fault
def test_a_relative_data_dir_says_where_it_was_read_from(my_project):
    "ml-train run from another folder: the data folder is missing *there*, and the line says so."
    elsewhere = my_project / 'elsewhere'
    elsewhere.mkdir()
    res = run(['ml-train', '--config', '../configs/my_dataset_config.yaml'], elsewhere)
    assert_clean_error(res, 'data/my_dataset: no such dataset folder (a relative path is read '
                            f'from the current folder, {elsewhere})')
    assert not (elsewhere / 'runs').exists()


@pytest.mark.fault
def test_a_link_that_breaks_after_splitting_is_one_line_at_training(my_project, lost_bytes):
    "An image that is a link, split, then its target deleted: ml-train says to re-split."
    raw = my_project / 'data' / 'my_dataset' / 'raw'
    target = my_project / 'elsewhere.png'
    img = sorted((raw / '3').iterdir())[0]
    shutil.move(img, target)
    img.symlink_to(target)
    assert_ok(run(['ml-split', '--raw_data', 'data/my_dataset/raw', '--folds', 2, '--force'],
                  my_project))
    target.unlink()
    lost_bytes.watch(my_project / 'runs', my_project / 'data' / 'my_dataset' / 'splits')
    res = run(['ml-train', '--config', 'configs/my_dataset_config.yaml'], my_project)
    assert_clean_error(res, 'data/my_dataset/splits was made from another version of '
                            'data/my_dataset/raw', '--force')
    assert sorted(p.name for p in (my_project / 'runs').iterdir()) == ['my_run']
    assert lost_bytes.check() == 0


@pytest.mark.fault
@pytest.mark.parametrize('mode', ['samples', 'predictions'])
def test_visualise_output_naming_a_file_is_refused(my_project, lost_bytes, mode):
    "ml-visualise --output names a folder; a file there (the run's weights, say) is kept."
    lost_bytes.watch(my_project / 'runs')
    for out in (BEST, 'runs/my_run/config.yaml'):
        assert_clean_error(run(['ml-visualise', '--mode', mode, '--run_dir', 'runs/my_run',
                                '--output', out], my_project),
                           f'--output {out} is a file', 'folder')
    assert not (my_project / 'runs' / 'my_run' / 'visualise').exists()
    assert lost_bytes.check() == 0


def _umask() -> int:
    import os
    m = os.umask(0o022); os.umask(m)
    return m


@pytest.mark.fault
def test_files_get_the_users_umask_not_0600(my_project):
    "What imgcls writes is readable as the user's umask says (a colleague, a serving process)."
    import os
    import subprocess
    from helpers import command, env
    um = _umask()
    run_dir, splits = my_project / 'runs' / 'my_run', my_project / 'data' / 'my_dataset' / 'splits'
    for f in (run_dir / 'weights' / 'best.pt', run_dir / 'config.yaml', run_dir / 'summary.json',
              splits / 'test.txt'):
        assert f.stat().st_mode & 0o777 == 0o666 & ~um, (f, oct(f.stat().st_mode), oct(um))
    assert splits.stat().st_mode & 0o777 == 0o777 & ~um, oct(splits.stat().st_mode)
    # and under another umask, through the command
    res = subprocess.run([command('ml-split'), '--raw_data', 'data/my_dataset/raw', '--folds', '2',
                          '--force'], cwd=my_project, capture_output=True, text=True, env=env(),
                         preexec_fn=lambda: os.umask(0o027))
    assert res.returncode == 0, res.stderr
    assert splits.stat().st_mode & 0o777 == 0o750, oct(splits.stat().st_mode)
    assert {oct(f.stat().st_mode & 0o777) for f in splits.iterdir() if f.is_file()} == {'0o640'}
