"""Downloads of pretrained weights where the user allows them (`model.download: true`), through
`ml-train`, never reaching the network: a loopback HTTP server stands for torchvision's, found
through `IMGCLS_WEIGHTS_MIRROR`. A wrong hash, a cut download and no server at all are each one
warning line, nothing half-written is left in the cache, and the run starts from scratch, saying
so (FAULTS.md, "Downloads")."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest
import yaml
from helpers import assert_ok, command, env

NAME = 'resnet18-f37072fd.pth'      # the file torchvision publishes, its hash prefix in the name


@pytest.fixture
def server(tmp_path):
    "A loopback server of `tmp_path/srv`; `server.cut = True` stops every answer half-way."
    folder = tmp_path / 'srv'
    folder.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass

        def copyfile(self, src, dst):
            data = src.read()
            dst.write(data[:len(data) // 2] if srv.cut else data)

    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                          functools.partial(Handler, directory=str(folder)))
    srv.cut, srv.folder = False, folder
    srv.url = f'http://127.0.0.1:{srv.server_address[1]}'
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _train(tmp_path, mirror):
    import subprocess
    cfg = {'data': {'data_dir': 'data/tiny', 'image_size': 32, 'resize_size': 32,
                    'num_workers': 0},
           'model': {'type': 'base', 'architecture': 'resnet18', 'pretrained': True,
                     'download': True},
           'training': {'num_epochs': 1, 'batch_size': 16, 'device': 'cpu',
                        'limit_train_batches': 1}}
    p = tmp_path / 'configs' / 'dl.yaml'
    p.parent.mkdir(exist_ok=True)
    p.write_text(yaml.safe_dump(cfg))
    hub = tmp_path / 'hub'
    e = {**env(), 'IMGCLS_WEIGHTS_MIRROR': mirror, 'TORCH_HOME': str(hub)}
    res = subprocess.run([command('ml-train'), '--config', 'configs/dl.yaml'], cwd=tmp_path,
                         capture_output=True, text=True, env=e, timeout=600)
    return res, hub / 'hub' / 'checkpoints'


@pytest.mark.fault
@pytest.mark.parametrize('fault', ['wrong-hash', 'cut', 'no-network'])
def test_a_failed_download_is_one_line_and_the_offline_start(tiny_split, tmp_path, server, fault):
    if fault == 'cut':      # a real weights file: its size announced, half of it sent
        import torch
        import torchvision
        torch.save(torchvision.models.resnet18().state_dict(), server.folder / NAME)
        server.cut = True
    else: (server.folder / NAME).write_bytes(b'\0' * 4096)   # not the published file
    mirror = server.url if fault != 'no-network' else 'http://127.0.0.1:9'   # nothing listens
    res, cache = _train(tmp_path, mirror)
    assert_ok(res)
    said = [ln for ln in res.stderr.splitlines() if 'could not download' in ln]
    assert len(said) == 1, res.stderr
    assert 'this run starts from scratch (the offline start)' in said[0], said
    why = {'wrong-hash': 'not the published f37072fd', 'cut': NAME,
           'no-network': 'Connection refused'}[fault]
    assert why in said[0], said
    assert not cache.exists() or sorted(p.name for p in cache.iterdir()) == []  # nothing half-made
    assert 'test accuracy' in res.stdout
