"""`trainer_type: dp` through `ml-train` on the whole digits sample: the epsilon spent stays
within the target, accuracy is well above chance, and the checkpoint serves inference."""
from __future__ import annotations

import json

import yaml
from helpers import assert_ok, run

from imgcls.checkpoint import load_checkpoint


def test_dp_run_on_digits_keeps_its_budget_and_learns(tmp_path):
    assert_ok(run(['ml-sample-data', 'data/digits', '--size', '16'], tmp_path))
    assert_ok(run(['ml-split', '--raw_data', 'data/digits/raw', '--folds', '5'], tmp_path))
    cfg = {'data': {'data_dir': 'data/digits', 'image_size': 16, 'resize_size': 16,
                    'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0},
           'model': {'type': 'custom', 'custom_architecture': 'dp_cnn'},
           'optimizer': {'lr': 2.0, 'momentum': 0.0},
           'scheduler': {'type': 'none'},
           'training': {'trainer_type': 'dp', 'num_epochs': 10, 'batch_size': 128, 'device': 'cpu',
                        'early_stopping_patience': 0,
                        'dp': {'target_epsilon': 3.0, 'target_delta': 1.0e-4,
                               'max_grad_norm': 1.0}}}
    p = tmp_path / 'dp.yaml'
    p.write_text(yaml.safe_dump(cfg))
    res = run(['ml-train', '--config', p], tmp_path, timeout=900)
    assert_ok(res)
    rd = tmp_path / 'runs' / 'digits_fold_0'
    s = json.loads((rd / 'summary.json').read_text())
    assert 0 < s['epsilon'] <= 3.0 * 1.01, s['epsilon']
    assert s['test']['acc'] >= 0.35, s['test']            # chance is 0.10; about 0.6 measured
    assert 'epsilon' in (rd / 'logs' / 'train.log').read_text()
    assert load_checkpoint(rd / 'weights' / 'last.pt')['dp']['epsilon'] == s['epsilon']
    print(f"DP digits: epsilon {s['epsilon']:.3f} (target 3.0, delta 1e-4), "
          f"test accuracy {s['test']['acc']:.4f}")
    # the checkpoint is plain weights: inference rebuilds it and agrees with the training report
    res = run(['ml-inference', '--checkpoint_path', rd / 'weights' / 'best.pt'], tmp_path)
    assert_ok(res)
    m = json.loads((rd / 'logs' / 'metrics_test.json').read_text())
    assert abs(m['acc'] - s['test']['acc']) < 1e-9
