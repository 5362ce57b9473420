"""Shared helpers for the end-to-end tests: run a console command, check a clean error, hash a
folder, and build small datasets (good and damaged) with Pillow and NumPy."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent


def command(name: str) -> str:
    "Full path of console command `name` (the venv's, else the one on PATH)."
    p = BIN / name
    if p.exists(): return str(p)
    found = shutil.which(name)
    assert found, f'console command {name} is not installed'
    return found


def env() -> dict:
    e = dict(os.environ)
    e['PATH'] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e['PYTHONUNBUFFERED'] = '1'
    e.pop('PYTHONWARNINGS', None)
    return e


def run(args: list, cwd, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run console command `args[0]` with `args[1:]` in `cwd`; text output captured."
    argv = [command(args[0]), *map(str, args[1:])]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env(), timeout=timeout)


def run_py(code: str, cwd, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    "Run `python -c code args...` in `cwd`."
    argv = [sys.executable, '-c', code, *map(str, args)]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env(), timeout=timeout)


def show(res: subprocess.CompletedProcess) -> str:
    "What to print when an assertion about `res` fails."
    return f'exit {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}'


def assert_ok(res: subprocess.CompletedProcess):
    assert res.returncode == 0, show(res)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith('error: ')]


def assert_clean_error(res: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    "Exit `code`, no traceback, exactly one `error: ...` line on stderr containing every needle."
    assert res.returncode == code, show(res)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)
    lines = error_lines(res)
    assert len(lines) == 1, show(res)
    for n in needles: assert n in lines[0], f'{n!r} not in {lines[0]!r}'
    return lines[0]


def assert_usage_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    "argparse's refusal: exit 2, usage and one `PROG: error: ...` line naming the needles."
    assert res.returncode == 2, show(res)
    assert 'Traceback' not in res.stdout + res.stderr, show(res)
    lines = [ln for ln in res.stderr.splitlines() if ': error: ' in ln]
    assert len(lines) == 1, show(res)
    for n in needles: assert n in lines[0], f'{n!r} not in {lines[0]!r}'
    return lines[0]


def tiny_config(root, path='configs/tiny_config.yaml', **over) -> Path:
    """Write the small training config the fault tests use (data/tiny, 16px, simple_cnn, 2 epochs
    on the CPU) at `root/path`; `over` sets `section__key=value` (`training__num_epochs=1`) or a
    top-level `key=value`."""
    import yaml
    cfg = {'data': {'data_dir': 'data/tiny', 'image_size': 16, 'resize_size': 16, 'num_workers': 0},
           'augmentation': {'horizontal_flip': 0.0},
           'model': {'type': 'custom', 'custom_architecture': 'simple_cnn'},
           'optimizer': {'lr': 0.05},
           'training': {'num_epochs': 2, 'batch_size': 16, 'device': 'cpu'}}
    for k, v in over.items():
        if '__' not in k: cfg[k] = v
        else:
            sec, key = k.split('__')
            cfg.setdefault(sec, {})[key] = v
    p = Path(root) / path
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg))
    return p


def fresh_copy(src, dest) -> Path:
    "Copy the folder `src` (a fixture built once a session) to `dest`, for one test to change."
    shutil.copytree(src, dest)
    return Path(dest)


def tree_hash(path) -> dict:
    "`{relative path: sha256}` of every file under `path` ({} when it does not exist)."
    path = Path(path)
    if not path.exists(): return {}
    if path.is_file(): return {'.': hashlib.sha256(path.read_bytes()).hexdigest()}
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob('*')) if p.is_file()}


def read_lines(path) -> list[str]:
    return [ln for ln in Path(path).read_text().splitlines() if ln.strip()]


def split_sets(splits_dir, folds: int) -> tuple[set, list[tuple[set, set]]]:
    "The test set and each fold's (train, val) sets of an ml-split output folder."
    sd = Path(splits_dir)
    test = set(read_lines(sd / 'test.txt'))
    return test, [(set(read_lines(sd / f'fold_{k}_train.txt')),
                   set(read_lines(sd / f'fold_{k}_val.txt'))) for k in range(folds)]


def split_texts(splits_dir) -> dict:
    "Contents of the index files (not the manifest, whose `created` time changes)."
    return {p.name: p.read_text() for p in sorted(Path(splits_dir).glob('*.txt'))}


def raw_files(data_dir) -> set:
    "Relative paths (raw/<class>/<file>) of the images the dataset should use."
    d = Path(data_dir)
    return {p.relative_to(d).as_posix() for p in (d / 'raw').rglob('*.png')}


# ---------------------------------------------------------------- image files

def rand_rgb(rng, w=30, h=20) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, 'JPEG', **kw)
    return buf.getvalue()


def bomb_png(path, side: int = 100_000):
    "A tiny PNG that declares a `side` x `side` image (the package's own test helper)."
    from imgcls.images import _bomb_png
    _bomb_png(path, side)


def make_good_class(folder, n: int, seed: int, w=30, h=20):
    "`n` distinct random RGB PNGs in `folder`."
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n): rand_rgb(rng, w, h).save(folder / f'good_{i}.png')


def make_damaged_dataset(data_dir) -> dict:
    """Classes `a` and `b` with 8 good PNGs each, plus, in `a`, broken files, odd-mode images that
    are fine, and files that must be ignored. Returns their paths relative to `data_dir`."""
    data_dir = Path(data_dir)
    raw = data_dir / 'raw'
    make_good_class(raw / 'a', 8, seed=1)
    make_good_class(raw / 'b', 8, seed=2)
    a = raw / 'a'
    rng = np.random.default_rng(3)
    full = jpeg_bytes(rand_rgb(rng, 40, 40))
    (a / 'truncated.jpg').write_bytes(full[:len(full) // 2])
    (a / 'zero.jpg').write_bytes(b'')
    (a / 'text.jpg').write_text('this is a text file, not a JPEG\n')
    bomb_png(a / 'bomb.png')
    # odd modes that must be converted, not rejected
    rand_rgb(rng).convert('CMYK').save(a / 'cmyk.jpg')
    pal = Image.new('P', (30, 20), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    pal.paste(1, (0, 0, 15, 20))          # left half index 1 (blue), right half index 0 (red)
    pal.save(a / 'palette.png', transparency=0)
    g16 = np.zeros((20, 30), dtype=np.uint16)
    g16[:, :10], g16[:, 10:20], g16[:, 20:] = 0, 128 * 257, 65535
    g16[0, 0] = 1000                       # keeps it distinct from any other file
    Image.fromarray(g16).save(a / 'gray16.png')
    im = rand_rgb(rng, 30, 20)
    exif = im.getexif()
    exif[0x0112] = 6                        # orientation: rotate 90 degrees clockwise to view
    im.save(a / 'exif.jpg', exif=exif)
    # files that must be ignored (not used, not listed as rejected)
    (a / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1\x00junk')
    (a / '.hidden.jpg').write_bytes(jpeg_bytes(rand_rgb(rng)))
    (a / 'notes.txt').write_text('labelled by hand\n')
    (a / '.ipynb_checkpoints').mkdir()
    rand_rgb(rng).save(a / '.ipynb_checkpoints' / 'good_0-checkpoint.png')
    (raw / '.thumbnails').mkdir()
    rand_rgb(rng).save(raw / '.thumbnails' / 't.png')
    (raw / '.DS_Store').write_bytes(b'junk')
    return dict(
        good={f'raw/{c}/good_{i}.png' for c in 'ab' for i in range(8)},
        bad={'raw/a/truncated.jpg', 'raw/a/zero.jpg', 'raw/a/text.jpg', 'raw/a/bomb.png'},
        odd={'raw/a/cmyk.jpg', 'raw/a/palette.png', 'raw/a/gray16.png', 'raw/a/exif.jpg'},
        ignored={'raw/a/.DS_Store', 'raw/a/.hidden.jpg', 'raw/a/notes.txt',
                 'raw/a/.ipynb_checkpoints/good_0-checkpoint.png', 'raw/.thumbnails/t.png',
                 'raw/.DS_Store'},
    )


# ---------------------------------------------------------------- headless Chromium

def find_chromium() -> Path | None:
    "A headless-capable Chromium: `IMGCLS_CHROMIUM`, else the first of the usual names on PATH."
    given = os.environ.get('IMGCLS_CHROMIUM')
    if given: return Path(given) if Path(given).is_file() else None
    for name in ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable',
                 'chrome'):
        found = shutil.which(name)
        if found: return Path(found)
    return None


CHROMIUM = find_chromium() or Path('/usr/bin/chromium')   # the latter: named in skip reasons
HAVE_CHROMIUM = find_chromium() is not None
needs_chromium = pytest.mark.skipif(
    not HAVE_CHROMIUM,
    reason='no Chromium on this machine (looked for IMGCLS_CHROMIUM, then chromium, '
           'chromium-browser and google-chrome on PATH); .ci/services.sh installs Debian\'s')


def dump_dom(url: str, tmp_path: Path, screenshot: Path | None = None,
             extra: tuple = ()) -> str:
    """The DOM headless Chromium renders for `url`, with DNS for every host name switched off
    (so nothing can be fetched from the network); with `screenshot`, also a PNG of the page."""
    profile = tmp_path / 'chromium-profile'
    profile.mkdir(exist_ok=True)
    args = [str(CHROMIUM), '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
            '--no-first-run', '--disable-background-networking', '--disable-component-update',
            '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
            f'--user-data-dir={profile}', '--window-size=1600,2400',
            '--virtual-time-budget=10000', *extra, '--dump-dom', url]
    e = {**os.environ, 'HOME': str(tmp_path)}
    res = subprocess.run(args, capture_output=True, text=True, timeout=180, env=e)
    assert res.returncode == 0, show(res)
    if screenshot is not None:
        shot = subprocess.run([*args[:-2], f'--screenshot={screenshot}', url], capture_output=True,
                              text=True, timeout=180, env=e)
        assert shot.returncode == 0 and Path(screenshot).is_file(), show(shot)
    return res.stdout
