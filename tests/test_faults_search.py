"""FAULTS.md "Search": SQLite works for a few workers on one machine, and `ml-search` says to use
PostgreSQL beyond that. (The other search faults, an unreachable database, failing and NaN trials,
two workers and a killed worker's trial, are fed to `ml-search` in test_search_cli.py.)"""
from __future__ import annotations

import pytest
from helpers import assert_ok, run, tiny_config

pytestmark = pytest.mark.fault

SEARCH = {'study_name': 'few_workers', 'n_trials': 1, 'sampler': {'type': 'RandomSampler'},
          'search_space': {'optimizer.lr': {'type': 'loguniform', 'low': 0.01, 'high': 0.1}}}


def test_sqlite_says_to_use_postgresql_beyond_a_few_workers(tmp_path, tiny_split):
    pytest.importorskip('optuna', reason='ml-search needs the optuna extra: imgcls[optuna]')
    cfg = tiny_config(tmp_path, training__num_epochs=1, model__custom_architecture='tiny_net',
                      search=SEARCH)
    res = run(['ml-search', '--config', cfg, '--storage', 'sqlite:///few.db'], tmp_path)
    assert_ok(res)
    [line] = [ln for ln in res.stderr.splitlines() if 'storage: SQLite' in ln]
    assert 'sqlite:///' in line and 'few.db' in line, line
    assert 'a few on this machine' in line and 'use PostgreSQL' in line, line
    assert '--storage postgresql' in line, line
    assert (tmp_path / 'runs' / 'optuna_studies' / 'few_workers' / 'best_config.yaml').is_file()
