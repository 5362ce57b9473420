"""FAULTS.md "Configuration and arguments": config files are read with a safe loader, checked key by
key, and every mistake is one line naming the file, key and value. No command loads a config yet,
so the file faults go through `load_config` in-process and through a stand-in command built with
`imgcls.cli.run_cli` (the wrapper every ml-* command uses)."""
from __future__ import annotations

import textwrap

import pytest
from helpers import assert_clean_error, run, show

from imgcls.config import load_config, nearest_key, parse_yaml, save_config
from imgcls.core import ConfigError


def write(tmp_path, text: str, name='cfg.yaml'):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def refused(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as e: load_config(path, overrides)
    msg = str(e.value)
    assert '\n' not in msg, msg
    return msg


UNKNOWN = 'unknown key'  # and with it "did you mean", checked below


@pytest.mark.fault
@pytest.mark.parametrize('text, needles', [
    ('optimizer:\n  lrr: 0.01\n', [UNKNOWN, "'optimizer.lrr'", "'optimizer.lr'"]),
    ('trainning:\n  batch_size: 8\n', [UNKNOWN, "'trainning.batch_size'", "'training.batch_size'"]),
    ('sed: 3\n', [UNKNOWN, "'sed'", "'seed'"]),
    ('training:\n  batchsize: 8\n', [UNKNOWN, "'training.batchsize'", "'training.batch_size'"]),
    ('model:\n  achitecture: resnet18\n', [UNKNOWN, "'model.achitecture'", "'model.architecture'"]),
    ('optimizer:\n  lr: "1e-3"\n', ['optimizer.lr', "'1e-3'", 'without quotes']),
    ('optimizer:\n  lr: .nan\n', ['optimizer.lr']),
    ('optimizer:\n  lr: 0\n', ['optimizer.lr', '> 0']),
    ('training:\n  batch_size: 0\n', ['training.batch_size', '0']),
    ('training:\n  batch_size: "32"\n', ['training.batch_size', "'32'", 'without quotes']),
    ('training:\n  batch_size: true\n', ['training.batch_size', 'True']),
    ('training:\n  num_epochs: -1\n', ['training.num_epochs', '-1']),
    ('training:\n  num_epochs: 2.5\n', ['training.num_epochs', '2.5']),
    ('training:\n  trainer_type: fast\n', ['training.trainer_type', "'fast'", 'standard']),
    ('training:\n  dp:\n    target_epsilon: 0\n', ['training.dp.target_epsilon', '> 0']),
    ('training:\n  dp:\n    target_epsilon: -3\n', ['training.dp.target_epsilon', '-3']),
    ('training:\n  dp:\n    target_delta: 1.5\n', ['training.dp.target_delta', '1.5']),
    ('training:\n  dp:\n    target_delta: 0\n', ['training.dp.target_delta', '0']),
])
def test_bad_key_or_value_names_file_key_and_value(tmp_path, text, needles):
    "An unknown key names itself and the nearest valid key; a wrong value names key and value."
    p = write(tmp_path, text)
    msg = refused(p)
    assert str(p) in msg, msg
    if UNKNOWN in needles: assert 'did you mean' in msg, msg
    for n in needles: assert n in msg, msg


def test_unquoted_exponent_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, 'optimizer:\n  lr: 1e-3\ntraining:\n  dp:\n'
                                      '    target_delta: 1e-5\n'))
    assert cfg.optimizer.lr == 0.001 and cfg.training.dp.target_delta == 1e-5


@pytest.mark.fault
@pytest.mark.parametrize('text, line', [
    ('optimizer:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n', 4),
    ('seed: 1\ndata:\n  fold: 0\nseed: 2\n', 4),
])
def test_duplicate_keys_are_refused_with_the_line(tmp_path, text, line):
    p = write(tmp_path, text)
    msg = refused(p)
    assert str(p) in msg and 'duplicate key' in msg and f'line {line}' in msg, msg


@pytest.mark.fault
@pytest.mark.parametrize('tag', ['!!python/object/apply:os.system', '!!python/object:os.system',
                                 '!!python/name:os.system'])
def test_python_tags_are_refused_and_never_run(tmp_path, tag):
    marker = tmp_path / 'pwned'
    p = write(tmp_path, f'seed: {tag} ["touch {marker}"]\n')
    msg = refused(p)
    assert str(p) in msg and 'python' in msg, msg
    assert not marker.exists()


@pytest.mark.fault
@pytest.mark.parametrize('text, needle', [
    ('- a\n- b\n', 'mapping'),
    ('data:\n\tfold: 1\n', 'line 2'),
    ('optimizer: {lr: 0.1\n', 'not valid YAML'),
])
def test_malformed_files(tmp_path, text, needle):
    p = write(tmp_path, text)
    msg = refused(p)
    assert str(p) in msg and needle in msg, msg


@pytest.mark.fault
def test_missing_and_binary_files(tmp_path):
    assert 'no such config file' in refused(tmp_path / 'nope.yaml')
    p = tmp_path / 'bin.yaml'
    p.write_bytes(b'seed: \xff\xfe\n')
    assert 'UTF-8' in refused(p)


def test_empty_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, '')) == load_config(None)


@pytest.mark.fault
def test_overrides_are_checked_like_the_file(tmp_path):
    msg = refused(None, {'training.batchsize': 8})
    assert "'training.batchsize'" in msg and "'training.batch_size'" in msg, msg
    msg = refused(None, {'training.batch_size': '0'})
    assert 'training.batch_size' in msg, msg
    cfg = load_config(None, {'optimizer.lr': '1e-2', 'training.batch_size': '16'})
    assert cfg.optimizer.lr == 0.01 and cfg.training.batch_size == 16


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(None, {'data.data_dir': 'data/x', 'training.batch_size': 7})
    p = save_config(cfg, tmp_path / 'out.yaml')
    assert load_config(p) == cfg
    assert nearest_key('optimizer.lrr') == 'optimizer.lr'
    assert parse_yaml('a: 1e-3')['a'] == 0.001


def test_empty_section_is_not_an_unknown_key(tmp_path):
    "A section whose keys are all commented out is an empty section: the defaults, no error."
    p = write(tmp_path, 'data:\n  # fold: 1\nseed: 3\n')
    cfg = load_config(p)               # any ConfigError fails the test
    assert (cfg.data.fold, cfg.seed) == (0, 3)


@pytest.mark.fault
def test_infinite_lr_is_refused(tmp_path):
    msg = refused(write(tmp_path, 'optimizer:\n  lr: .inf\n'))
    assert 'optimizer.lr' in msg


@pytest.mark.fault
def test_bad_override_value_is_blamed_on_the_override(tmp_path):
    p = write(tmp_path, 'seed: 1\n')
    msg = refused(p, {'training.batch_size': 0})
    assert 'override' in msg.replace(str(p), ''), msg
    msg = refused(None, {'training.batch_size': 0})
    assert 'override' in msg, msg


# ------------------------------------------------------------------ as a command would show it

@pytest.fixture
def check_cmd(tmp_path):
    "`ml-train` itself: it loads and checks the config before it touches data or torch's model."
    return lambda *args: run(['ml-train', *args], tmp_path)


@pytest.mark.fault
@pytest.mark.parametrize('text, needles', [
    ('optimizer:\n  lrr: 0.01\n', ['bad.yaml', "'optimizer.lrr'", "'optimizer.lr'"]),
    ('optimizer:\n  lr: "1e-3"\n', ['bad.yaml', 'optimizer.lr', "'1e-3'"]),
    ('training:\n  batch_size: 8\n  batch_size: 16\n', ['bad.yaml', 'duplicate key', 'line 3']),
    ('seed: !!python/object/apply:os.system ["echo hi"]\n', ['bad.yaml', 'python']),
])
def test_config_errors_through_a_command(tmp_path, check_cmd, text, needles):
    write(tmp_path, text, 'bad.yaml')
    res = check_cmd('--config', 'bad.yaml')
    assert_clean_error(res, *needles)
    assert res.stdout == '', show(res)
    res = check_cmd('--config', 'bad.yaml', '--debug')
    assert res.returncode != 0 and 'Traceback' in res.stderr and 'ConfigError' in res.stderr


def test_good_config_through_a_command(tmp_path, check_cmd):
    "A valid config passes the checks: ml-train goes on to its data (not there: one line)."
    write(tmp_path, 'data:\n  data_dir: data/flowers\n', 'good.yaml')
    line = assert_clean_error(check_cmd('--config', 'good.yaml'), 'data/flowers')
    assert 'good.yaml' not in line, line     # not a config error
