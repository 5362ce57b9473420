"""The public API as a user's own script uses it: `from imgcls import *`, in a fresh interpreter."""
from __future__ import annotations

import json

from helpers import assert_ok, run_py

SCRIPT = '''
import json, sys
from imgcls import *

raw = make_sample_dataset('data/tiny', size=16, n_per_class=6)
res = make_splits(raw, folds=2, seed=0)
cfg = load_config(None, {'data.data_dir': 'data/tiny', 'data.num_workers': 0,
                         'data.image_size': 16, 'data.resize_size': 16, 'data.cache': 'none',
                         'training.batch_size': 4, 'training.device': 'cpu'})
dls = get_dataloaders(cfg)
out = {'written': res.written, 'dataset_name': cfg.data.dataset_name,
       'n': {k: len(dl.dataset) for k, dl in dls.items()}, 'batches': {}}
for k, dl in dls.items():
    x, y = next(iter(dl))
    out['batches'][k] = dict(x=list(x.shape), dtype=str(x.dtype), y=list(y.shape),
                             labels_ok=bool(((y >= 0) & (y < 10)).all()))
out['classes'] = dls['train'].dataset.classes
out['errors'] = [issubclass(DataError, ImgclsError), issubclass(ConfigError, ImgclsError)]

# the public names a user script needs
import imgcls
need = {'make_sample_dataset', 'make_splits', 'load_config', 'get_dataloaders', 'load_split',
        'check_splits', 'load_image', 'scan_images', 'init_config', 'ImgclsError', 'DataError',
        'ConfigError', 'atomic_write', 'seed_everything', 'IndexedImageDataset'}
out['missing'] = sorted(need - set(imgcls.__all__))

# EXIF orientation is applied by the datasets (training, evaluation) as by load_image
from pathlib import Path
from PIL import Image, ImageFile
im = Image.new('RGB', (30, 20), (200, 10, 10))
exif = im.getexif(); exif[0x0112] = 6
Path('exif/raw/a').mkdir(parents=True)
im.save('exif/raw/a/rot.jpg', exif=exif)
ds = IndexedImageDataset([('raw/a/rot.jpg', 0)], 'exif', ['a'], None, resize_size=20)
out['exif_shape'] = list(ds[0][0].shape)
out['load_truncated'] = ImageFile.LOAD_TRUNCATED_IMAGES
print(json.dumps(out))
'''


def test_star_import_end_to_end(tmp_path):
    res = run_py(SCRIPT, tmp_path)
    assert_ok(res)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out['written'] is True and out['dataset_name'] == 'tiny'
    assert out['classes'] == [str(i) for i in range(10)]
    n = out['n']
    assert set(n) == {'train', 'val', 'test'}
    assert n['test'] == 12 and n['train'] + n['val'] == 48 and n['train'] == n['val'] == 24
    for k, b in out['batches'].items():
        assert b['x'] == [4, 3, 16, 16] and b['dtype'] == 'torch.float32', (k, b)
        assert b['y'] == [4] and b['labels_ok'], (k, b)
    assert out['errors'] == [True, True]
    assert out['missing'] == []
    assert out['exif_shape'] == [3, 30, 20]          # upright: 20 wide, 30 high
    assert out['load_truncated'] is False            # never LOAD_TRUNCATED_IMAGES globally
    assert (tmp_path / 'data' / 'tiny' / 'splits' / 'manifest.json').is_file()


def test_import_imgcls_alone_is_light(tmp_path):
    code = '''
import sys
import imgcls
heavy = sorted(m for m in ('torch', 'torchvision', 'sklearn', 'matplotlib') if m in sys.modules)
print(imgcls.__version__, heavy)
'''
    res = run_py(code, tmp_path)
    assert_ok(res)
    version, heavy = res.stdout.strip().split(' ', 1)
    assert version and heavy == '[]', res.stdout
