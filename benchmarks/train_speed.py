"""Training speed of imgcls against its baselines, measured in one run on this machine.

    python benchmarks/train_speed.py                 # 2,000 JPEGs of 500x375, 4 classes
    python benchmarks/train_speed.py --images 400    # a quicker look

Generates the dataset once (under --data), then measures, each in a fresh process and on the same
images (fold 0's training split), model (ResNet-18), image size, batch size and number of steps:

- limit: the model alone on in-memory tensors (fp32), the speed no data path can beat;
- torchvision: a plain ImageFolder + DataLoader(num_workers=2) loop, decoding every JPEG each epoch;
- imgcls standard / mixed_precision: the trainers as `ml-train` runs them (train loop only);
- imgcls streaming: the standard trainer with `data.cache: none` (decoding every epoch).

First epoch (cold: includes decoding and caching) and steady state (later epochs) are reported
separately, with images/s, ratios to the limit and to the torchvision loop, and peak memory.

Only what this CPU runs well is measured: on a CPU without native bfloat16 (no AVX512-BF16 or AMX)
autocast emulates bf16 many times slower than float32, so `imgcls mixed_precision` is left out and
the table says so (`--emulated` measures it anyway).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_data(root: Path, n: int, classes: int = 4, size=(500, 375), seed: int = 0):
    "JPEGs with class-dependent colour and noise; then a 1-fold split."
    from PIL import Image
    from imgcls.splits import make_splits
    raw = root / 'raw'
    if not (root / 'splits').exists():
        rng = np.random.default_rng(seed)
        for i in range(n):
            c = i % classes
            folder = raw / f'class{c}'
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            small[..., c % 3] = np.clip(small[..., c % 3].astype(int) + 80, 0, 255)
            im = Image.fromarray(small).resize(size, Image.BILINEAR)
            im.save(folder / f'{i:05d}.jpg', quality=90)
        make_splits(raw, folds=1, val_ratio=0.1, test_ratio=0.1, seed=seed)
    return root


def _train_files(root: Path) -> list[str]:
    text = (root / 'splits' / 'fold_0_train.txt').read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model():
    import torchvision
    return torchvision.models.resnet18(num_classes=4)


def run_limit(root, size, batch, epochs):
    import torch
    files = _train_files(root)
    steps = len(files) // batch
    model, crit = _model(), torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 4, (batch,))
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            crit(model(x), y).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times, steps * batch


def run_torchvision(root, size, batch, epochs):
    import torch
    from torchvision import datasets, transforms
    keep = {str((root / f).resolve()) for f in _train_files(root)}
    tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(str(root / 'raw'), tf,
                              is_valid_file=lambda p: str(Path(p).resolve()) in keep)
    dl = torch.utils.data.DataLoader(ds, batch, shuffle=True, num_workers=2, drop_last=True,
                                     persistent_workers=True)
    model, crit = _model(), torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        for xb, yb in dl:
            opt.zero_grad(set_to_none=True)
            crit(model(xb), yb).backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times, len(dl) * batch


def run_imgcls(root, size, batch, epochs, trainer_type, cache):
    from imgcls.config import load_config
    from imgcls.trainer import get_trainer
    cfg = load_config(None, {
        'data.data_dir': str(root), 'data.image_size': size, 'data.cache': cache,
        'model.architecture': 'resnet18', 'training.trainer_type': trainer_type,
        'training.batch_size': batch, 'training.num_epochs': epochs, 'training.device': 'cpu',
        'optimizer.lr': 0.01, 'scheduler.type': 'none', 'output.runs_dir': str(root / 'runs')})
    tr = get_trainer(cfg, progress=False)
    t = time.perf_counter()
    tr.setup()
    setup_s = time.perf_counter() - t
    times = []
    for _ in range(epochs):
        t = time.perf_counter()
        tr.train_epoch()
        tr.epoch += 1; tr.step_in_epoch = 0
        times.append(time.perf_counter() - t)
    times[0] += setup_s  # the first epoch pays for decoding (and caching) the images
    return times, tr.n_batches * batch


RUNS = {
    'limit': lambda r, s, b, e: run_limit(r, s, b, e),
    'torchvision': lambda r, s, b, e: run_torchvision(r, s, b, e),
    'imgcls standard': lambda r, s, b, e: run_imgcls(r, s, b, e, 'standard', 'auto'),
    'imgcls mixed_precision': lambda r, s, b, e: run_imgcls(r, s, b, e, 'mixed_precision', 'auto'),
    'imgcls streaming': lambda r, s, b, e: run_imgcls(r, s, b, e, 'standard', 'none'),
}


def child(name, root, size, batch, epochs):
    import torch
    torch.manual_seed(0)
    times, images = RUNS[name](Path(root), size, batch, epochs)
    print(json.dumps({'name': name, 'times': times, 'images': images, 'peak_mb': _peak_mb()}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', default='/tmp/imgcls-bench', help='where the generated dataset lives')
    p.add_argument('--images', type=int, default=2000)
    p.add_argument('--size', type=int, default=64, help='network input side in pixels')
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--epochs', type=int, default=3, help='first epoch + steady-state epochs')
    p.add_argument('--only', nargs='*', default=list(RUNS), help='which measurements')
    p.add_argument('--emulated', action='store_true',
                   help='also measure mixed precision where this CPU only emulates bfloat16')
    p.add_argument('--child', help=argparse.SUPPRESS)
    a = p.parse_args()
    root = Path(a.data) / f'bench_{a.images}'
    if a.child: return child(a.child, root, a.size, a.batch, a.epochs)
    make_data(root, a.images)
    from imgcls.core import describe_cpu
    from imgcls.training import cpu_supports_bf16
    skipped = {}
    if not cpu_supports_bf16() and not a.emulated:
        skipped['imgcls mixed_precision'] = (
            f'this CPU ({describe_cpu()}) has no native bfloat16: autocast would emulate it, '
            'many times slower than float32 (--emulated measures it anyway)')
    res = {}
    for name in [n for n in a.only if n not in skipped]:
        args = ['--child', name, '--data', a.data, '--images', str(a.images), '--size', str(a.size),
                '--batch', str(a.batch), '--epochs', str(a.epochs)]
        out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
        if out.returncode: sys.exit(f'{name} failed:\n{out.stderr[-3000:]}')
        r = json.loads(out.stdout.strip().splitlines()[-1])
        steady = r['times'][1:] or r['times']
        r['first'] = r['images'] / r['times'][0]
        r['steady'] = r['images'] * len(steady) / sum(steady)
        res[name] = r
        print(f'  measured {name}', file=sys.stderr)
    lim, tv = res.get('limit'), res.get('torchvision')
    print(f'\nResNet-18, {a.size}px, batch {a.batch}, {a.images} JPEGs (train split), '
          f'{a.epochs} epochs, steady state = epochs 2..{a.epochs}\n')
    print(f"{'':24} {'first img/s':>11} {'steady img/s':>12} {'vs limit':>9} "
          f"{'vs torchvision':>15} {'peak MB':>8}")
    for name, r in res.items():
        vl = f"{r['steady'] / lim['steady']:.2f}" if lim else '-'
        vt = f"{r['steady'] / tv['steady']:.2f}x" if tv else '-'
        print(f"{name:24} {r['first']:11.1f} {r['steady']:12.1f} {vl:>9} {vt:>15} "
              f"{r['peak_mb']:8.0f}")
    for name, why in skipped.items():
        if name in a.only: print(f'{name:24} left out: {why}')
    if tv:
        print('\nfirst epoch vs torchvision first epoch: ' + ', '.join(
            f"{n} {r['first'] / tv['first']:.2f}x" for n, r in res.items()
            if n.startswith('imgcls')))
    if 'imgcls standard' in res and 'imgcls mixed_precision' in res:
        print(f"mixed precision vs standard (steady): "
              f"{res['imgcls mixed_precision']['steady'] / res['imgcls standard']['steady']:.2f}x")


if __name__ == '__main__':
    main()
