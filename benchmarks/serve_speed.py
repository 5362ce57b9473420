"""Serving speed of `ml-serve` against ONNX Runtime called in-process, measured in one run.

    python benchmarks/serve_speed.py                     # both models, 1, 4 and 16 clients
    python benchmarks/serve_speed.py --models tiny --requests 200 --memory_requests 0

Two models, each exported to ONNX from a freshly initialised network (speed does not depend on
the weights) with imgcls's metadata, as `ml-export` writes it:

- tiny: the digits sample's model as `ml-init-config` writes it (small_resnet, 32 px), served
  the digits sample's PNGs (HTTP and decoding dominate);
- resnet18: a torchvision ResNet-18 at 224 px, served 500x375 JPEGs (the model dominates).

For each: in-process ONNX Runtime on the same image bytes, decoding and preprocessing included
(`OnnxPredictor.preprocess` on each file, then the model one image at a time, and in batches of
32); then a real `ml-serve` process on a loopback port and 1, 4 and 16 clients (threads of this
process, one keep-alive connection each) sending one image a request, with images/s and p50/p99
latency. Each request's time is split by the server's own /metrics: decoding (its decode
histogram), model (the model calls' time over the images they ran) and the rest (HTTP, parsing,
queueing: transport). The clients run on the same CPU as the server and take part of it: on a
2-core machine this understates what the server does for remote clients. Last, peak RSS of the
server before and after --memory_requests more requests (flat = no leak).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MODELS = {'tiny': dict(overrides={'model.type': 'custom', 'model.custom_architecture':
                                  'small_resnet', 'data.image_size': 32, 'data.resize_size': 32},
                       classes=10),
          'resnet18': dict(overrides={'model.type': 'base', 'model.architecture': 'resnet18',
                                      'model.pretrained': False, 'data.image_size': 224},
                           classes=10)}


def export_model(name: str, out: Path) -> Path:
    "An imgcls ONNX file of `name`'s network, freshly initialised."
    import torch
    from imgcls.config import load_config
    from imgcls.export import export_metadata, model_to_onnx
    from imgcls.models import get_model
    m = MODELS[name]
    cfg = load_config(None, m['overrides'])
    torch.manual_seed(0)
    net = get_model(cfg, m['classes'], torch.device('cpu')).eval()
    ck = {'config': cfg.to_dict(), 'classes': [str(i) for i in range(m['classes'])]}
    meta = export_metadata(ck)
    path = out / f'{name}.onnx'
    path.write_bytes(model_to_onnx(net, meta['input_size'], None, meta))
    return path


def images_for(name: str, n: int) -> list[bytes]:
    "The bytes of `n` image files: the digits sample's PNGs, or 500x375 JPEGs."
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    if name == 'tiny':
        from sklearn.datasets import load_digits
        d = load_digits().images
        for i in range(n):
            a = (d[i % len(d)] * 16).clip(0, 255).astype(np.uint8)
            b = io.BytesIO()
            Image.fromarray(a).resize((32, 32)).save(b, 'PNG')
            out.append(b.getvalue())
    else:
        for _ in range(n):
            base = rng.integers(0, 255, (1, 1, 3)) + np.linspace(0, 60, 500)[None, :, None]
            a = (base + rng.normal(0, 25, (375, 500, 3))).clip(0, 255).astype(np.uint8)
            b = io.BytesIO()
            Image.fromarray(a).save(b, 'JPEG', quality=90)
            out.append(b.getvalue())
    return out


def in_process(path: Path, images: list[bytes], batch: int) -> dict:
    "Images/s of OnnxPredictor on the image bytes, batch 1 or `batch`, decoding included."
    from imgcls.onnx_runtime import OnnxPredictor
    pred = OnnxPredictor(path)
    pred.probabilities(np.stack([pred.preprocess(io.BytesIO(images[0]))]))   # warm up
    t = time.perf_counter()
    for s in range(0, len(images), batch):
        xs = [pred.preprocess(io.BytesIO(b)) for b in images[s:s + batch]]
        pred.probabilities(np.stack(xs))
    dt = time.perf_counter() - t
    return {'images_s': len(images) / dt, 'batch': batch}


def multipart(data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
            'Content-Type: application/octet-stream\r\n\r\n').encode()
    body += data + f'\r\n--{b}--\r\n'.encode()
    return body, f'multipart/form-data; boundary={b}'


def start_server(path: Path, max_batch: int):
    exe = Path(sys.executable).parent / 'ml-serve'
    p = subprocess.Popen([str(exe), str(path), '--port', '0', '--max_batch', str(max_batch)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r'http://127\.0\.0\.1:(\d+)', line)
    if not m: raise SystemExit(f'ml-serve did not start: {line!r}')
    return p, int(m.group(1))


def metrics(port: int) -> dict:
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
    c.request('GET', '/metrics'); text = c.getresponse().read().decode(); c.close()
    val = lambda k: float(re.search(rf'^{re.escape(k)} (\S+)$', text, re.M).group(1))
    return {'decode_s': val('imgcls_decode_seconds_sum'),
            'decoded': val('imgcls_decode_seconds_count'),
            'model_s': val('imgcls_model_seconds_sum'),
            'batches': val('imgcls_batch_images_count'), 'images': val('imgcls_batch_images_sum')}


def load(port: int, images: list[bytes], clients: int, requests: int) -> dict:
    "`clients` threads, one connection each, `requests` one-image requests in all."
    bodies = [multipart(b) for b in images]
    lat, lock = [], threading.Lock()
    def client(k: int):
        c = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
        c.connect()   # as urllib3 (requests) does: no Nagle delay between headers and body
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mine = []
        for i in range(k, requests, clients):
            body, ctype = bodies[i % len(bodies)]
            t = time.perf_counter()
            c.request('POST', '/predict', body=body, headers={'Content-Type': ctype})
            r = c.getresponse(); r.read()
            assert r.status == 200, r.status
            mine.append(time.perf_counter() - t)
        c.close()
        with lock: lat.extend(mine)
    before = metrics(port)
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool: list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t
    after = metrics(port)
    d = {k: after[k] - before[k] for k in after}
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000
    n = len(lat)
    mean_ms = statistics.mean(lat) * 1000
    decode_ms = d['decode_s'] / max(1, d['decoded']) * 1000
    model_ms = d['model_s'] / max(1, d['batches']) * 1000   # the model call a request waits for
    return {'clients': clients, 'requests': n, 'images_s': n / wall, 'p50_ms': q(0.5),
            'p99_ms': q(0.99), 'mean_ms': mean_ms, 'decode_ms': decode_ms,
            'model_ms': model_ms, 'transport_ms': max(0.0, mean_ms - decode_ms - model_ms),
            'mean_batch': d['images'] / max(1, d['batches'])}


def peak_rss_kb(pid: int) -> int:
    for ln in Path(f'/proc/{pid}/status').read_text().splitlines():
        if ln.startswith('VmHWM:'): return int(ln.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', choices=list(MODELS), default=list(MODELS))
    p.add_argument('--requests', type=int, default=0,
                   help='requests a client count (default: 2,000 tiny, 300 resnet18)')
    p.add_argument('--clients', type=int, nargs='+', default=[1, 4, 16])
    p.add_argument('--memory_requests', type=int, default=10_000,
                   help='requests sent to the tiny model between the two RSS readings (0: skip)')
    p.add_argument('--json', help='also write every figure here')
    a = p.parse_args()
    from imgcls.core import cpu_features, describe_cpu
    print(f'CPU: {describe_cpu(cpu_features())}; the clients share it with the server')
    out, tmp = {'models': {}}, Path(tempfile.mkdtemp(prefix='imgcls-serve-speed-'))
    for name in a.models:
        path = export_model(name, tmp)
        n = a.requests or (2000 if name == 'tiny' else 300)
        images = images_for(name, min(n, 256))
        r = {'one_at_a_time': in_process(path, images, 1), 'batch_32': in_process(path, images, 32)}
        proc, port = start_server(path, 32)
        try:
            load(port, images, 4, min(64, n))   # warm up
            r['served'] = [load(port, images, c, n) for c in a.clients]
            if name == 'tiny' and a.memory_requests:
                rss0 = peak_rss_kb(proc.pid)
                load(port, images, 16, a.memory_requests)
                r['peak_rss_kb'] = {'before': rss0, 'after': peak_rss_kb(proc.pid),
                                    'requests': a.memory_requests}
        finally:
            proc.terminate(); proc.wait(60)
        out['models'][name] = r
        one, b32 = r['one_at_a_time']['images_s'], r['batch_32']['images_s']
        print(f'\n{name}: in-process ONNX Runtime {one:.0f} images/s one at a time, '
              f'{b32:.0f} in batches of 32 (decoding included)')
        print('clients  images/s  x one  x b32   p50 ms   p99 ms  | decode  model  transport '
              '(ms a request)  batch')
        for s in r['served']:
            print(f"{s['clients']:7d} {s['images_s']:9.0f} {s['images_s'] / one:6.2f} "
                  f"{s['images_s'] / b32:6.2f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f}  | "
                  f"{s['decode_ms']:6.2f} {s['model_ms']:6.2f} {s['transport_ms']:9.2f}"
                  f"{'':16s}{s['mean_batch']:5.1f}")
        if 'peak_rss_kb' in r:
            m = r['peak_rss_kb']
            print(f"peak RSS of the server: {m['before'] / 1024:.0f} MB, then "
                  f"{m['after'] / 1024:.0f} MB after {m['requests']:,} more requests")
    if a.json: Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
