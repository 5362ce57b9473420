#!/usr/bin/env python
"""Generate a formula-driven image-classification set for pretraining: no natural images.

Writes an image folder ``DEST/raw/<class>/<i>.png`` (the layout ``ml-split`` reads) with three
families of classes, every image drawn from formulas and a seeded random generator:

* **Fractals** (most classes), after FractalDB (Kataoka et al., "Pre-training without Natural
  Images", ACCV 2020 / IJCV 2022): each class is one iterated function system (IFS), affine
  maps ``x -> A_i x + b_i`` chosen with probability proportional to ``|det A_i|``. By default
  (``--sampler svd``) a code has 2-4 maps drawn by the sigma-factor rule of Anderson & Farrell
  ("Improving Fractal Pre-training", WACV 2022), which gives sharper, more structured
  attractors than FractalDB's rule (``--sampler fractaldb``: 2-8 maps, parameters uniform in
  [-1, 1], each map contractive). A code is kept only if its attractor passes the
  *filling rate* check (its points cover at least ``--min_fill`` of a 64x64 grid fitted to it)
  and does not look like a class already kept. The instances of a class perturb the code's
  parameters (each multiplied by 1 +- ``--jitter``, FractalDB's "weighting"), flip it, rotate it,
  scale it and place it at random. Points are iterated in ~500 chains at once (vectorised
  chaos game) and splatted into a 2x supersampled density array.
* **Dead leaves** (``--leaves`` classes), after Baradad et al., "Learning to See by Looking at
  Noise" (NeurIPS 2021): occluding random shapes. A class is one shape family (circle, ellipse,
  square, bar, triangle, hexagon, star, cross) at one size regime (many small / few large), so
  the classes differ in shape, not in colour.
* **Procedural textures** (``--textures`` classes, the same paper's procedural-noise idea):
  one formula each (gratings, plaids, checkers, dot lattices, 1/f noise of two slopes,
  thresholded noise, Voronoi cells and edges, rings, spirals, streaks, marble, grain,
  zig-zags), their frequency, phase, orientation and colours random per image.

Colour is never a class cue: every image has its own random background (solid, a linear
gradient, a wrapping gradient with sharp false edges, or smooth colour noise), random
foreground colours kept in contrast with it, pixel noise, and ~15% are made grayscale.

Image ``i`` of a class is a pure function of ``--seed``, the class (its family and index in
the family) and ``i``, and the IFS codes depend only on ``--seed`` and their index, so a larger
``--classes`` or ``--per_class`` keeps every image a smaller one wrote. Existing files are
skipped (each is written to a temporary name, then renamed), so an interrupted run is continued
by running the same command again. ``DEST/codes.json`` records the classes and their IFS codes.

Example (numpy and Pillow only)::

    python tools/pretrain/generate.py /work/pretrain/formula --classes 256 --per_class 480 \\
        --size 64 --seed 0 --workers 1 --sheet /work/pretrain/contact_sheet.png
"""
from __future__ import annotations
import argparse, json, math, os, time
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw

SHAPES = ['circle', 'ellipse', 'square', 'bar', 'triangle', 'hexagon', 'star', 'cross']
TEXTURES = ['stripes_wide', 'stripes_fine', 'plaid', 'checker', 'dots', 'noise_pink',
            'noise_clouds',
            'blobs', 'voronoi_cells', 'voronoi_edges', 'rings', 'spiral', 'streaks', 'marble',
            'grain', 'zigzag']

# ----------------------------------------------------------------------------- IFS fractals
def _contractive_map(rng, max_sv=0.95):
    "One affine map [a, b, c, d, e, f] with parameters in [-1, 1] whose linear part contracts."
    while True:
        p = rng.uniform(-1, 1, 6)
        if np.linalg.svd(p[:4].reshape(2, 2), compute_uv=False)[0] < max_sv: return p

def _rot(x): return np.array([[math.cos(x), -math.sin(x)], [math.sin(x), math.cos(x)]])

def _turn(pts, th, cx, cy):
    "Points (x, y) about the origin, rotated by `th` and moved to (cx, cy): a vertex list."
    c, s = math.cos(th), math.sin(th)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]

def svd_code(rng, n_lo=2, n_hi=4):
    ("An IFS code by Anderson & Farrell's sigma-factor rule: `n` maps A = R(t) diag(s1, +-s2) R(p) "
     "with singular values 1 > s1 >= s2 whose sum of s1 + 2 s2 lies in [(5+n)/2, (6+n)/2].")
    n = int(rng.integers(n_lo, n_hi + 1))
    lo, hi = (5 + n) / 2, (6 + n) / 2
    while True:
        s1 = rng.uniform(0.25, 1.0, n); s2 = rng.uniform(0, 1, n) * s1
        if lo <= (s1 + 2 * s2).sum() <= hi: break
    maps = []
    for i in range(n):
        A = _rot(rng.uniform(0, 2 * math.pi)) @ np.diag([s1[i], s2[i] * rng.choice([-1, 1])]) \
            @ _rot(rng.uniform(0, 2 * math.pi))
        maps.append(np.r_[A.ravel(), rng.uniform(-1, 1, 2)])
    return np.array(maps)

def fractaldb_code(rng):
    "An IFS code as FractalDB draws it: 2-8 maps, every parameter uniform in [-1, 1] (contractive)."
    return np.stack([_contractive_map(rng) for _ in range(int(rng.integers(2, 9)))])

def _probs(code):
    det = np.abs(code[:, 0] * code[:, 3] - code[:, 1] * code[:, 2])
    det = np.maximum(det, 1e-3)   # a degenerate map still gets drawn now and then
    return det / det.sum()

def ifs_points(code, rng, n_points=30000, chains=512, burn=20):
    "Chaos-game points of the IFS `code` (n_maps x 6) and the map that made each: (pts, idx)."
    A = code[:, :4].reshape(-1, 2, 2); b = code[:, 4:]
    cum = np.cumsum(_probs(code)); cum[-1] = 1.0
    steps = burn + -(-n_points // chains)
    x = rng.uniform(-1, 1, (chains, 2))
    ks = np.minimum(np.searchsorted(cum, rng.random((steps, chains))), len(code) - 1)
    pts, idx = [], []
    for t in range(steps):
        k = ks[t]
        Ak = A[k]
        x = np.stack([Ak[:, 0, 0] * x[:, 0] + Ak[:, 0, 1] * x[:, 1],
                      Ak[:, 1, 0] * x[:, 0] + Ak[:, 1, 1] * x[:, 1]], 1) + b[k]
        if t >= burn: pts.append(x); idx.append(k)
    return np.concatenate(pts)[:n_points], np.concatenate(idx)[:n_points]

def _bounds(pts):
    "The 0.2 and 99.8 percentiles of the points along x and y (on a subsample: fast)."
    sub = pts[::max(1, len(pts) // 4000)]
    return np.percentile(sub, 0.2, axis=0), np.percentile(sub, 99.8, axis=0)

def _normalise(pts):
    "Centre the points on their bounding box and scale its longer side to 1 (robust to outliers)."
    lo, hi = _bounds(pts)
    ext = max(float((hi - lo).max()), 1e-9)
    return (pts - (lo + hi) / 2) / ext

def occupancy(pts, grid=64):
    "Boolean grid x grid occupancy of normalised points (the filling-rate render)."
    q = np.clip(((pts + 0.5) * grid).astype(int), 0, grid - 1)
    occ = np.zeros((grid, grid), bool); occ[q[:, 1], q[:, 0]] = True
    return occ

def filling_rate(code, rng, grid=64):
    pts, _ = ifs_points(code, rng, 20000)
    if not np.isfinite(pts).all(): return 0.0, None
    return float(occupancy(_normalise(pts), grid).mean()), pts

def sample_codes(n, seed, min_fill=0.12, max_similarity=0.92, sampler='svd', log=None):
    "`n` IFS codes passing the filling-rate check and unlike each other, deterministic in `seed`."
    codes, thumbs, tries = [], [], 0
    rng = np.random.default_rng([seed, 7919])
    draw = svd_code if sampler == 'svd' else fractaldb_code
    while len(codes) < n:
        tries += 1
        code = draw(rng)
        fill, pts = filling_rate(code, np.random.default_rng([seed, 7919, tries]))
        if fill < min_fill: continue
        # a 16x16 density thumbnail: reject near-copies of classes already kept
        th = occupancy(_normalise(pts), 16).astype(float).ravel()
        th /= np.linalg.norm(th)
        if thumbs and max(float(th @ t) for t in thumbs) > max_similarity: continue
        codes.append(code); thumbs.append(th)
    if log: log(f'{n} IFS codes kept of {tries} drawn (filling rate >= {min_fill})')
    return codes

def perturb(code, rng, jitter):
    "FractalDB-style within-class variation: every parameter times 1 +- jitter, kept contractive."
    c = code * (1 + rng.uniform(-jitter, jitter, code.shape))
    for m in c:
        sv = np.linalg.svd(m[:4].reshape(2, 2), compute_uv=False)[0]
        if sv >= 0.97: m[:4] *= 0.97 / sv
    return c

# ----------------------------------------------------------------------------- colours, backgrounds
def _lum(c): return float(np.dot(c, [0.299, 0.587, 0.114]))

def contrast_colour(rng, bg_lum, min_diff=0.3):
    "A random RGB colour whose luminance differs from `bg_lum` by at least `min_diff`."
    for _ in range(20):
        c = rng.random(3)
        if abs(_lum(c) - bg_lum) >= min_diff: return c
    return np.full(3, 1.0 if bg_lum < 0.5 else 0.0)

def smooth_noise(rng, size, slope=2.5, channels=1):
    "Gaussian noise with a 1/f^slope power spectrum, scaled to [0, 1]: (size, size, channels)."
    f = np.fft.fftfreq(size)
    r = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2); r[0, 0] = 1
    amp = r ** (-slope / 2); amp[0, 0] = 0
    out = np.empty((size, size, channels))
    for ch in range(channels):
        z = np.fft.ifft2(amp * np.fft.fft2(rng.standard_normal((size, size)))).real
        out[..., ch] = (z - z.min()) / (np.ptp(z) + 1e-9)
    return out

def _ramp(size, angle):
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    return x * math.cos(angle) + y * math.sin(angle)

def background(rng, size):
    "A random background in [0, 1]: solid, gradient, wrapping gradient or colour noise."
    c1, c2 = rng.random(3), rng.random(3)
    kind = rng.choice(4, p=[0.25, 0.35, 0.15, 0.25])
    if kind == 0: return np.broadcast_to(c1, (size, size, 3)).copy()
    if kind == 3:
        n = smooth_noise(rng, size, rng.uniform(2.5, 4.0), 3)
        return c1 + (c2 - c1) * n * rng.uniform(0.3, 1.0)
    t = _ramp(size, rng.uniform(0, 2 * math.pi)) + 0.5
    if kind == 2: t = (t * rng.uniform(1.5, 3.0) + rng.random()) % 1.0   # sharp false edges
    t = np.clip(t, 0, 1)[..., None]
    return c1 * (1 - t) + c2 * t

def finish(rng, img, grey_p=0.15):
    "Pixel noise, sometimes grayscale; float [0, 1] HxWx3 -> uint8."
    if rng.random() < 0.7: img = img + rng.normal(0, rng.uniform(0.005, 0.06), img.shape)
    if rng.random() < grey_p: img = np.repeat((img @ [0.299, 0.587, 0.114])[..., None], 3, -1)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

def _down(a, ss):
    "Box-filter an (H*ss, W*ss, ...) array down by `ss`."
    if ss == 1: return a
    h, w = a.shape[0] // ss, a.shape[1] // ss
    return a.reshape(h, ss, w, ss, *a.shape[2:]).mean((1, 3))

# ----------------------------------------------------------------------------- the three families
def render_fractal(code, rng, size, jitter=0.1, ss=2):
    "One instance of the IFS class `code`: perturbed, flipped, rotated, scaled, coloured."
    n_points = max(20000, int(2.5 * (size * ss) ** 2))
    for _ in range(5):
        c = perturb(code, rng, jitter)
        pts, idx = ifs_points(c, rng, n_points)
        if np.isfinite(pts).all() and occupancy(_normalise(pts[::4]), 32).mean() > 0.05: break
    else: c = code; pts, idx = ifs_points(c, rng, n_points)
    pts = _normalise(pts)
    rot = _rot(rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.5: rot = rot @ np.diag([-1.0, 1.0])
    pts = pts @ rot.T
    lo, hi = _bounds(pts)
    scale = rng.uniform(0.55, 0.95) / max(float((hi - lo).max()), 1e-9)
    pts = (pts - (lo + hi) / 2) * scale
    span = (hi - lo) * scale
    pts = pts + 0.5 + rng.uniform(-1, 1, 2) * np.maximum(0, 1 - span) / 2
    S = size * ss
    q = (pts * S).astype(int)
    ok = (q >= 0).all(1) & (q < S).all(1)
    flat = q[ok, 1] * S + q[ok, 0]
    count = np.bincount(flat, minlength=S * S).astype(float)
    bg = background(rng, size)
    bg_lum = _lum(bg.reshape(-1, 3).mean(0))
    if rng.random() < 0.45:   # one colour
        col = np.broadcast_to(contrast_colour(rng, bg_lum), (S * S, 3))
    else:                     # a colour per map: the parts of the fractal
        pal = np.stack([contrast_colour(rng, bg_lum, 0.2) for _ in range(len(c))])
        sums = np.stack([np.bincount(flat, pal[idx[ok], ch], S * S) for ch in range(3)], 1)
        col = sums / np.maximum(count, 1)[:, None]
    alpha = 1 - np.exp(-count / rng.uniform(0.3, 2.0))
    fg = np.concatenate([col * alpha[:, None], alpha[:, None]], 1).reshape(S, S, 4)
    fg = _down(fg, ss)
    a = fg[..., 3:]
    img = bg * (1 - a) + fg[..., :3]
    return finish(rng, img)

def _shape_polygon(shape, rng, cx, cy, r):
    "Vertices of one `shape` of radius `r` at (cx, cy), randomly rotated."
    th0 = rng.uniform(0, 2 * math.pi)
    def poly(n, rad):
        m = len(rad) if n is None else n
        a = th0 + 2 * math.pi * np.arange(m) / m
        rad = np.broadcast_to(rad, a.shape)
        return list(zip(cx + rad * np.cos(a), cy + rad * np.sin(a)))
    def rect(w, h): return _turn([(-w, -h), (w, -h), (w, h), (-w, h)], th0, cx, cy)
    if shape == 'circle': return poly(40, r)
    if shape == 'ellipse':
        a = th0 + 2 * math.pi * np.arange(40) / 40; e = rng.uniform(0.35, 0.55)
        return _turn(zip(r * np.cos(a), r * e * np.sin(a)), th0, cx, cy)
    if shape == 'square': return rect(r * 0.8, r * 0.8)
    if shape == 'bar': return rect(r, r * rng.uniform(0.15, 0.25))
    if shape == 'triangle': return poly(3, r)
    if shape == 'hexagon': return poly(6, r)
    if shape == 'star': return poly(10, np.tile([r, r * 0.42], 5))
    if shape == 'cross':
        w = r * 0.3
        return _turn([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
                      (-w, w), (-r, w), (-r, -w), (-w, -w)], th0, cx, cy)
    raise ValueError(shape)

def render_leaves(shape, large, rng, size, ss=2):
    "Dead leaves: random `shape`s of one size regime occluding each other on a background."
    S = size * ss
    bg = background(rng, size)
    canvas = Image.fromarray((np.kron(bg, np.ones((ss, ss, 1))) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    n = int(rng.integers(6, 14)) if large else int(rng.integers(30, 70))
    lo, hi = (0.12, 0.3) if large else (0.04, 0.09)
    bg_lum = _lum(bg.reshape(-1, 3).mean(0))
    for _ in range(n):
        r = S * math.exp(rng.uniform(math.log(lo), math.log(hi)))
        cx, cy = rng.uniform(-0.1, 1.1, 2) * S
        col = tuple(int(v * 255) for v in contrast_colour(rng, bg_lum, 0.15))
        draw.polygon(_shape_polygon(shape, rng, cx, cy, r), fill=col)
    img = _down(np.asarray(canvas, float) / 255, ss)
    return finish(rng, img)

def _palette_map(t, rng):
    "Map t in [0, 1] (HxW) to colours between two random contrasting colours."
    c1 = rng.random(3); c2 = contrast_colour(rng, _lum(c1), 0.3)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]

def render_texture(kind, rng, size, ss=2):
    "One procedural texture of family `kind`, random in frequency, phase, angle and colours."
    S = size * ss
    y, x = np.mgrid[0:S, 0:S] / S - 0.5
    th = rng.uniform(0, 2 * math.pi); ph = rng.uniform(0, 2 * math.pi)
    u = x * math.cos(th) + y * math.sin(th); v = -x * math.sin(th) + y * math.cos(th)
    hard = rng.random() < 0.5
    def wave(z): return (np.sin(z) > 0).astype(float) if hard else 0.5 + 0.5 * np.sin(z)
    if kind == 'stripes_wide': t = wave(2 * math.pi * rng.uniform(1.5, 3.5) * u + ph)
    elif kind == 'stripes_fine': t = wave(2 * math.pi * rng.uniform(8, 14) * u + ph)
    elif kind == 'plaid':
        f = rng.uniform(3, 7)
        t = 0.5 * (0.5 + 0.5 * np.sin(2 * math.pi * f * u + ph)) + \
            0.5 * (0.5 + 0.5 * np.sin(2 * math.pi * f * v))
    elif kind == 'checker':
        f = rng.uniform(3, 8)
        t = ((np.floor(f * u + ph) + np.floor(f * v)) % 2).astype(float)
    elif kind == 'dots':
        f = rng.uniform(4, 9)
        du, dv = (f * u + ph) % 1 - 0.5, (f * v) % 1 - 0.5
        t = (du ** 2 + dv ** 2 < rng.uniform(0.05, 0.15)).astype(float)
    elif kind in ('noise_pink', 'noise_clouds', 'blobs'):
        slope = {'noise_pink': 1.2, 'noise_clouds': 3.2, 'blobs': 2.6}[kind]
        t = smooth_noise(rng, S, slope)[..., 0]
        if kind == 'blobs': t = (t > np.median(t)).astype(float)
        if kind == 'noise_pink':   # its own colours per channel
            n = smooth_noise(rng, S, slope, 3)
            c1, c2 = rng.random(3), rng.random(3)
            img = c1 + (c2 - c1) * n
            return finish(rng, _down(img, ss))
    elif kind in ('voronoi_cells', 'voronoi_edges'):
        k = int(rng.integers(6, 14)) if kind == 'voronoi_cells' else int(rng.integers(25, 50))
        seeds = rng.uniform(-0.5, 0.5, (k, 2))
        d = (x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2
        if kind == 'voronoi_cells':
            cell = d.argmin(-1)
            cols = rng.random((k, 3))
            return finish(rng, _down(cols[cell], ss))
        ds = np.sort(d, -1)
        t = (np.sqrt(ds[..., 1]) - np.sqrt(ds[..., 0]) < rng.uniform(0.01, 0.025)).astype(float)
    elif kind == 'rings':
        cx, cy = rng.uniform(-0.4, 0.4, 2)
        t = wave(2 * math.pi * rng.uniform(4, 9) * np.hypot(x - cx, y - cy) + ph)
    elif kind == 'spiral':
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        r, a = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
        arms = int(rng.integers(1, 5)) * (1 if rng.random() < 0.5 else -1)
        t = wave(arms * a + 2 * math.pi * rng.uniform(3, 7) * r + ph)
    elif kind == 'streaks':   # strongly anisotropic noise: grain along one direction
        n = rng.standard_normal((S, S))
        F = np.fft.fft2(n); f = np.fft.fftfreq(S)
        fu = f[None, :] * math.cos(th) + f[:, None] * math.sin(th)
        fv = -f[None, :] * math.sin(th) + f[:, None] * math.cos(th)
        amp = np.exp(-(fu / 0.25) ** 2 - (fv / 0.01) ** 2)
        z = np.fft.ifft2(F * amp).real
        t = (z - z.min()) / (np.ptp(z) + 1e-9)
    elif kind == 'marble':
        turb = smooth_noise(rng, S, 2.5)[..., 0]
        t = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(2, 5) * u + rng.uniform(4, 9) * turb)
    elif kind == 'grain':     # coarse white-noise cells
        g = int(rng.integers(max(4, size // 8), max(5, size // 3)))
        cells = rng.random((g, g))
        t = np.asarray(Image.fromarray((cells * 255).astype(np.uint8)).resize(
            (S, S), Image.NEAREST), float) / 255
    elif kind == 'zigzag':
        f = rng.uniform(3, 7)
        tri = 2 * np.abs((f * 2 * v) % 1 - 0.5)
        t = wave(2 * math.pi * f * (u + rng.uniform(0.05, 0.15) * tri) + ph)
    else: raise ValueError(kind)
    return finish(rng, _down(_palette_map(t, rng), ss))

# ----------------------------------------------------------------------------- the dataset
def class_list(n_classes, n_leaves, n_textures):
    "The classes in order: (name, family, spec); fractals first, then leaves, then textures."
    n_leaves = min(n_leaves, 2 * len(SHAPES)); n_textures = min(n_textures, len(TEXTURES))
    n_fract = n_classes - n_leaves - n_textures
    if n_fract < 0: raise SystemExit('--classes must be at least --leaves + --textures')
    out = [(f'fractal_{i:04d}', 'fractal', i) for i in range(n_fract)]
    regimes = [(s, large) for large in (False, True) for s in SHAPES]
    out += [(f"leaves_{s}_{'large' if large else 'small'}", 'leaves', (s, large))
            for s, large in regimes[:n_leaves]]
    out += [(f'texture_{t}', 'texture', t) for t in TEXTURES[:n_textures]]
    return out

def _save(img, path):
    tmp = path.with_name(f'.{path.stem}.tmp.png')
    Image.fromarray(img).save(tmp, compress_level=1)
    os.replace(tmp, path)

def make_class(job):
    "Write the missing images of one class; returns how many it wrote."
    dest, name, family, spec, code, per_class, size, seed, jitter = job
    d = Path(dest)/'raw'/name; d.mkdir(parents=True, exist_ok=True)
    fam = ('fractal', 'leaves', 'texture').index(family)   # the stream: family, its index
    k = spec if family == 'fractal' else (
        SHAPES.index(spec[0]) + len(SHAPES) * spec[1] if family == 'leaves'
        else TEXTURES.index(spec))
    written = 0
    for i in range(per_class):
        p = d/f'{i:05d}.png'
        if p.exists(): continue
        rng = np.random.default_rng([seed, fam, int(k), i])
        if family == 'fractal': img = render_fractal(np.asarray(code), rng, size, jitter)
        elif family == 'leaves': img = render_leaves(spec[0], spec[1], rng, size)
        else: img = render_texture(spec, rng, size)
        _save(img, p); written += 1
    return name, written

def contact_sheet(dest, classes, out, per_row=8, n_classes=24):
    "A PNG grid: `per_row` images of each of `n_classes` classes spread over the families."
    picks = np.unique(np.linspace(0, len(classes) - 1, n_classes).astype(int))
    rows = []
    for ci in picks:
        files = sorted((Path(dest)/'raw'/classes[ci][0]).glob('[0-9]*.png'))[:per_row]
        ims = [np.asarray(Image.open(f).convert('RGB')) for f in files]
        if not ims: continue
        ims += [np.zeros_like(ims[0])] * (per_row - len(ims))
        rows.append(np.concatenate([np.pad(im, ((1, 1), (1, 1), (0, 0))) for im in ims], 1))
    Image.fromarray(np.concatenate(rows, 0)).save(out)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='See tools/pretrain/README.md.')
    ap.add_argument('dest', help='dataset folder: images go to DEST/raw/<class>/<i>.png')
    ap.add_argument('--classes', type=int, default=256, help='classes in all (default 256)')
    ap.add_argument('--per_class', type=int, default=480, help='images a class (default 480)')
    ap.add_argument('--size', type=int, default=64, help='image side in px (default 64)')
    ap.add_argument('--seed', type=int, default=0, help='seed of codes and images (default 0)')
    ap.add_argument('--leaves', type=int, default=16,
                    help=f'dead-leaves classes among --classes (0-{2 * len(SHAPES)}, default 16)')
    ap.add_argument('--textures', type=int, default=16,
                    help=f'texture classes among --classes (0-{len(TEXTURES)}, default 16)')
    ap.add_argument('--min_fill', type=float, default=0.12,
                    help="FractalDB's filling-rate threshold on a 64x64 grid (default 0.12)")
    ap.add_argument('--jitter', type=float, default=0.1,
                    help='within-class relative perturbation of IFS parameters (default 0.1)')
    ap.add_argument('--sampler', choices=['svd', 'fractaldb'], default='svd',
                    help="how IFS codes are drawn: svd (Anderson & Farrell's sigma-factor, 2-4 "
                         "maps; default) or fractaldb (2-8 maps, parameters uniform in [-1, 1])")
    ap.add_argument('--workers', type=int, default=1, help='processes, 1 or 2 (default 1)')
    ap.add_argument('--sheet', default=None, help='also write a contact-sheet PNG here')
    a = ap.parse_args(argv)
    t0 = time.time()
    classes = class_list(a.classes, a.leaves, a.textures)
    n_fract = sum(f == 'fractal' for _, f, _ in classes)
    dest = Path(a.dest); dest.mkdir(parents=True, exist_ok=True)
    meta_path = dest/'codes.json'
    codes = sample_codes(n_fract, a.seed, a.min_fill, sampler=a.sampler, log=print)
    meta = dict(seed=a.seed, size=a.size, per_class=a.per_class, min_fill=a.min_fill,
                jitter=a.jitter, sampler=a.sampler, generator='tools/pretrain/generate.py',
                classes=[dict(name=n, family=f, **({'ifs': np.round(codes[s], 6).tolist()}
                                                   if f == 'fractal' else {'spec': s}))
                         for n, f, s in classes])
    KEYS = ('seed', 'size', 'min_fill', 'jitter', 'sampler')
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        same = {k: old.get(k) for k in KEYS} == {k: meta[k] for k in KEYS}
        if not same: raise SystemExit(f'{dest} was generated with other settings ({meta_path}); '
                                      'use another DEST')
    meta_path.write_text(json.dumps(meta, indent=1))
    jobs = [(str(dest), n, f, s, codes[s] if f == 'fractal' else None, a.per_class, a.size,
             a.seed, a.jitter) for n, f, s in classes]
    total = 0
    workers = max(1, min(2, a.workers))
    if workers == 1: results = map(make_class, jobs)
    else:
        import multiprocessing as mp
        pool = mp.get_context('spawn').Pool(workers)
        results = pool.imap_unordered(make_class, jobs)
    for k, (_name, w) in enumerate(results, 1):
        total += w
        if k % 10 == 0 or k == len(jobs):
            print(f'{k}/{len(jobs)} classes done, {total} images written, '
                  f'{time.time() - t0:.0f} s', flush=True)
    if workers > 1: pool.close(); pool.join()
    print(f'{dest/"raw"}: {len(classes)} classes x {a.per_class} images of {a.size} px '
          f'({n_fract} fractal, {len(classes) - n_fract - min(a.textures, len(TEXTURES))} '
          f'dead-leaves, {min(a.textures, len(TEXTURES))} texture); {total} written now, '
          f'{time.time() - t0:.0f} s')
    if a.sheet: contact_sheet(dest, classes, a.sheet); print(f'contact sheet: {a.sheet}')

if __name__ == '__main__':
    main()
