"""Fixtures: small digit datasets (with and without splits) built once and copied per test."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_PER_CLASS = 10   # 100 images: enough for 5 folds plus a test set, quick to split


@pytest.fixture(scope='session')
def _tiny_pristine(tmp_path_factory) -> Path:
    "data/tiny/raw with 10 digits a class (16x16 PNGs), no splits."
    from imgcls.images import make_sample_dataset
    root = tmp_path_factory.mktemp('tiny_pristine')
    make_sample_dataset(root / 'data' / 'tiny', size=16, n_per_class=TINY_PER_CLASS)
    return root / 'data' / 'tiny'


@pytest.fixture(scope='session')
def _tiny_split_pristine(tmp_path_factory, _tiny_pristine) -> Path:
    "The tiny dataset with 2-fold splits made by `make_splits` (seed 0)."
    from imgcls.splits import make_splits
    root = tmp_path_factory.mktemp('tiny_split_pristine')
    d = root / 'data' / 'tiny'
    shutil.copytree(_tiny_pristine, d)
    make_splits(d / 'raw', folds=2, seed=0)
    return d


@pytest.fixture
def tiny(tmp_path, _tiny_pristine) -> Path:
    "A fresh copy of the tiny dataset at `tmp_path/data/tiny` (run commands with cwd=tmp_path)."
    d = tmp_path / 'data' / 'tiny'
    shutil.copytree(_tiny_pristine, d)
    return d


@pytest.fixture
def tiny_split(tmp_path, _tiny_split_pristine) -> Path:
    "A fresh copy of the tiny dataset with its 2-fold splits, at `tmp_path/data/tiny`."
    d = tmp_path / 'data' / 'tiny'
    shutil.copytree(_tiny_split_pristine, d)
    return d
