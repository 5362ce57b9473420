"""Multi-label: imgcls's defaults against a plain hand-written BCE loop on the same split, one run.

    python benchmarks/multilabel.py                # the tuning sample (seed 0), held-out (seed 1)
    python benchmarks/multilabel.py --images 3000 --json /tmp/ml.json
    python benchmarks/multilabel.py --quick            # a smoke run: its numbers mean nothing

The data are real images that need no network: mosaics of scikit-learn's handwritten digits, one
to three different digits in the cells of a 2x2 grid, labels `d0`..`d9`
(`imgcls.labels.make_multilabel_sample`), `--images` pictures of `--side` px, and labels.csv.
Seed 0 is the sample imgcls's multi-label recipe was looked at on; seed 1 (and any other
`--seeds`) is held out: both are reported.

For each sample a fresh folder gets `data/mos/` and the README's new-user steps run there as
subprocesses, as a user types them, with the config `ml-init-config` writes left as it is:

    ml-init-config data/mos
    ml-split --raw_data data/mos/raw --folds 5
    ml-train --config configs/mos_config.yaml          # fold 0; test figures from summary.json

The loop, in a fresh process, no imgcls: it reads the same index files (fold 0's train, val, test),
decodes the images as the accuracy benchmark's loop does (`benchmarks/accuracy.py`: RGB, squashed
to the side), and trains the same small ResNet with `BCEWithLogitsLoss`, AdamW (weight decay 0.05),
OneCycleLR (peak 3e-3), pad-and-crop, no flips (a mirrored digit is another digit), batch 64,
15 epochs; the epoch with the best validation macro-F1 (at 0.5) is scored on test at 0.5.

Figures: macro-F1, micro-F1, mAP (scikit-learn's average precision, macro over the labels) and
exact match on the test split, and wall time of each process, from its start (Python and torch
imported) to its end: the ml-train process, and the loop's (the JSON also keeps the loop's time
from after its imports, `time_in_process_s`).
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # benchmarks/accuracy.py: the small ResNet, image loading, shell helpers

MARKER = '.imgcls-multilabel-benchmark'


def index(data_dir: Path, name: str) -> list[tuple[str, list[str]]]:
    "The (path, labels) lines of one index file."
    out = []
    for ln in (data_dir / 'splits' / name).read_text().splitlines():
        p, _, labs = ln.partition('\t')
        out.append((p, labs.split()))
    return out


def scores(y: np.ndarray, p: np.ndarray, thr: float = 0.5) -> dict:
    from sklearn.metrics import average_precision_score, f1_score
    pred = p >= thr
    return dict(macro_f1=float(f1_score(y, pred, average='macro', zero_division=0)),
                micro_f1=float(f1_score(y, pred, average='micro', zero_division=0)),
                map=float(average_precision_score(y, p, average='macro')),
                exact_match=float((pred == (y > 0.5)).all(1).mean()))


def run_loop(data_dir: Path, side: int, epochs: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    parts = {s: index(data_dir, n) for s, n in
             (('train', 'fold_0_train.txt'), ('val', 'fold_0_val.txt'), ('test', 'test.txt'))}
    classes = sorted({c for _, labs in parts['train'] for c in labs})

    def tensors(items):
        x = np.stack([acc.load_rgb(data_dir / p, side) for p, _ in items])
        y = np.zeros((len(items), len(classes)), np.float32)
        for i, (_, labs) in enumerate(items): y[i, [classes.index(c) for c in labs]] = 1
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    (xtr, ytr), (xva, yva), (xte, yte) = (tensors(parts[s]) for s in ('train', 'val', 'test'))
    mean = xtr.float().mean((0, 2, 3), keepdim=True) / 255
    std = xtr.float().std((0, 2, 3), keepdim=True) / 255
    def norm(x): return (x.float() / 255 - mean) / std
    pad = max(2, round(side / 12))

    def augment(x):
        n, _, h, w = x.shape
        xp = F.pad(x, (pad,) * 4, mode='replicate')
        ij = torch.randint(0, 2 * pad + 1, (n, 2), generator=g).tolist()
        return torch.stack([xp[k, :, i:i + h, j:j + w] for k, (i, j) in enumerate(ij)])

    model = acc.small_resnet(len(classes), 2 if side > 32 else 1)
    bs = 64
    steps = max(1, len(xtr) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=acc.LOOP_LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, acc.LOOP_LR, pct_start=0.25,
                                                total_steps=max(8, epochs * steps))
    crit = torch.nn.BCEWithLogitsLoss()

    def probs(x):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(norm(x[i:i + 256])).sigmoid() for i in range(0, len(x), 256)])
    best = (-1.0, None, 0)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            loss = crit(model(augment(norm(xtr[idx]))), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val = scores(yva.numpy(), probs(xva).numpy())['macro_f1']
        if val >= best[0]: best = (val, copy.deepcopy(model.state_dict()), epoch)
    model.load_state_dict(best[1])
    out = scores(yte.numpy(), probs(xte).numpy())
    return dict(**out, time_s=time.perf_counter() - t, n_train=len(xtr), n_test=len(xte),
                epochs=epochs, best_epoch=best[2], side=side)


def bench(work: Path, images: int, side: int, seed: int, quick: bool, log) -> dict:
    if work.exists():
        if not (work / MARKER).exists(): sys.exit(f'{work} was not made by this benchmark')
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text('made by benchmarks/multilabel.py; deleted by its next run\n')
    from imgcls.labels import make_multilabel_sample
    make_multilabel_sample(work / 'data' / 'mos', n_images=images, size=side, seed=seed)
    acc.shell(['ml-init-config', 'data/mos'], work, log)
    acc.shell(['ml-split', '--raw_data', 'data/mos/raw', '--folds', '5'], work, log)
    s, dt, run_dir = acc.train_imgcls(work, 'mos', ['--num_epochs', '1'] if quick else [], log)
    t = s['test']
    ours = dict(macro_f1=t['macro_f1'], micro_f1=t['micro_f1'], map=t['map'],
                exact_match=t['exact_match'], time_s=dt, epochs=s['epochs_run'], run_dir=run_dir)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, '--child', str(work / 'data' / 'mos'),
                          '--side', str(side), '--loop_epochs', '1' if quick else '15',
                          '--seeds', str(seed)], capture_output=True, text=True, env=acc.user_env())
    if res.returncode: sys.exit(f'the loop failed:\n{res.stderr[-3000:]}')
    loop = json.loads(res.stdout.strip().splitlines()[-1])
    loop['time_in_process_s'], loop['time_s'] = loop['time_s'], time.perf_counter() - t
    return {'imgcls defaults': ours, 'bce loop': loop}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--images', type=int, default=1500)
    ap.add_argument('--side', type=int, default=64)
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    ap.add_argument('--data', default='/tmp/imgcls_multilabel_bench')
    ap.add_argument('--json', default=None)
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--loop_epochs', type=int, default=15)
    ap.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_loop(Path(a.child), a.side, a.loop_epochs, a.seeds[0])))
        return
    out = {}
    for seed in a.seeds:
        tag = f"seed {seed} ({'tuning' if seed == 0 else 'held out'})"
        print(f'== {tag}: {a.images} mosaics of {a.side} px', flush=True)
        out[tag] = bench(Path(a.data) / f'seed{seed}', a.images, a.side, seed, a.quick,
                         lambda m: print('  ' + m, flush=True))
    print(f"\n{'sample':<22} {'method':<16} {'macro-F1':>8} {'micro-F1':>8} {'mAP':>7} "
          f"{'exact':>7} {'time s':>7}")
    for tag, r in out.items():
        for m, v in r.items():
            print(f"{tag:<22} {m:<16} {v['macro_f1']:8.4f} {v['micro_f1']:8.4f} {v['map']:7.4f} "
                  f"{v['exact_match']:7.4f} {v['time_s']:7.1f}")
        print(f"{'':<22} {'ratio':<16} {'':>8} {'':>8} {'':>7} {'':>7} "
              f"{r['imgcls defaults']['time_s'] / r['bce loop']['time_s']:6.2f}x")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
    main()
