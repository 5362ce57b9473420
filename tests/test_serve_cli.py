"""`ml-serve` as a user runs it: real server processes on loopback ports, real HTTP clients (the
standard library's), 16 at once; predictions checked against `ml-inference`'s, bad uploads
against FAULTS.md's serving section, SIGTERM under load, the page in a real browser."""
from __future__ import annotations
import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from helpers import (assert_clean_error, assert_ok, assert_usage_error, command, dump_dom, env,
                     needs_chromium, read_lines, run)

ARTEFACTS = Path(os.environ.get('IMGCLS_TEST_ARTEFACTS', Path(__file__).parent / 'artefacts'))

pytest.importorskip('starlette',
                    reason="ml-serve's extra is not installed: pip install 'imgcls[serve]'")


class Served:
    "An `ml-serve` process; `url`, `port`, and `stop()` (SIGTERM) giving its exit status."
    def __init__(self, args: list, cwd: Path, tmp: Path, argv0: list | None = None):
        self.err_path = tmp / f'serve_{uuid.uuid4().hex[:6]}.err'
        self.tmpdir = tmp / 'server_tmp'
        self.tmpdir.mkdir(exist_ok=True)
        e = env() | {'TMPDIR': str(self.tmpdir)}   # anything spooled to disk would land here
        self.proc = subprocess.Popen((argv0 or [command('ml-serve')]) + list(map(str, args)),
                                     cwd=cwd, env=e, stdout=subprocess.PIPE,
                                     stderr=self.err_path.open('w'), text=True)
        line = self.proc.stdout.readline()   # printed once it answers
        m = re.search(r'http://127\.0\.0\.1:(\d+)', line)
        assert m, f'no URL printed: {line!r}\n{self.err_path.read_text()}'
        self.port, self.url, self.banner = int(m.group(1)), m.group(0), line

    @property
    def stderr(self) -> str: return self.err_path.read_text()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None, timeout: float = 60) -> tuple[int, dict | str]:
        c = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read().decode()
            is_json = r.getheader('content-type', '').startswith('application/json')
            return r.status, json.loads(data) if is_json else data
        finally: c.close()

    def predict(self, files: list[tuple[str, bytes]], query: str = '', **kw):
        body, ctype = multipart(files)
        return self.request('POST', f'/predict{query}', body, {'Content-Type': ctype}, **kw)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None: self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def multipart(files: list[tuple[str, bytes]], field: str = 'file') -> tuple[bytes, str]:
    "A multipart/form-data body of `files` ((name, bytes)) as parts named `field`."
    b = uuid.uuid4().hex
    out = b''
    for name, data in files:
        out += (f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                f'Content-Type: application/octet-stream\r\n\r\n').encode() + data + b'\r\n'
    return out + f'--{b}--\r\n'.encode(), f'multipart/form-data; boundary={b}'


@pytest.fixture
def served(my_project, tmp_path):
    s = Served(['runs/my_run', '--port', 0], my_project, tmp_path)
    yield s
    if s.proc.poll() is None: s.stop()


def split_images(project: Path) -> list[Path]:
    "The run's test images (the split file), in order."
    root = project / 'data' / 'my_dataset'
    return [root / ln for ln in read_lines(root / 'splits' / 'test.txt')]


def test_predictions_equal_ml_inference_under_16_clients(my_project, served):
    images = split_images(my_project)
    res = run(['ml-inference', '--checkpoint_path', 'runs/my_run/weights/best.pt', '--images',
               *images, '--format', 'json', '--output', 'preds.json'], my_project)
    assert_ok(res)
    expected = {Path(p['path']).resolve(): p
                for p in json.loads((my_project / 'preds.json').read_text())['predictions']}
    assert len(expected) == len(images) >= 20

    def one(path: Path):
        return path, served.predict([(path.name, path.read_bytes())], '?top_k=3')
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, images * 2))   # each image twice: 16 clients at once
    for path, (status, body) in answers:
        assert status == 200, body
        [p] = body['predictions']
        want = expected[path.resolve()]
        assert (p['file'], p['label']) == (path.name, want['predicted'])
        assert abs(p['probability'] - want['probability']) < 1e-4   # calibrated alike
        assert [t['class'] for t in p['top_k']] == [t['class'] for t in want['top_k'][:3]]
    status, m = served.request('GET', '/metrics')
    assert status == 200 and f'imgcls_images_total {2 * len(images)}.0' in m
    # the model ran batches of more than one image: the 16 clients were batched
    sizes = re.findall(r'imgcls_batch_images_bucket\{le="1.0"\} (\S+)', m)
    count = re.findall(r'imgcls_batch_images_count (\S+)', m)
    assert float(count[0]) < 2 * len(images) and float(sizes[0]) < float(count[0]), m
    assert re.search(r'POST /predict 200 1 image\(s\) [\d.]+ ms', served.stderr)


def test_several_files_in_one_request_keep_their_order(my_project, served):
    images = split_images(my_project)[:6][::-1]
    status, body = served.predict([(p.name, p.read_bytes()) for p in images])
    assert status == 200, body
    assert [p['file'] for p in body['predictions']] == [p.name for p in images]
    single = [served.predict([(p.name, p.read_bytes())])[1]['predictions'][0] for p in images]
    assert [p['label'] for p in body['predictions']] == [p['label'] for p in single]
    # raw bytes with an image/* type, as curl --data-binary sends them
    status, body = served.request('POST', '/predict', images[0].read_bytes(),
                                  {'Content-Type': 'image/png'})
    assert status == 200 and body['predictions'][0]['label'] == single[0]['label']
    status, h = served.request('GET', '/health')
    assert status == 200 and h['status'] == 'ok' and len(h['classes']) == 10
    assert h['input_size'] == [16, 16] and h['model']


@pytest.mark.fault
def test_bad_uploads_get_a_4xx_and_the_server_lives(my_project, served, tmp_path):
    before = sorted(served.tmpdir.rglob('*'))   # what the start wrote (the export's caches)
    png = split_images(my_project)[0].read_bytes()
    big = Image.effect_noise((1200, 1200), 64).convert('RGB')   # about 1.4 MB as PNG: spools
    big.save(tmp_path / 'big.png')
    bomb = tmp_path / 'bomb.png'
    Image.new('1', (20_000, 20_000)).save(bomb)   # 400 megapixels in a few kB
    cases = [
        ('not an image', dict(files=[('a.png', b'hello, world')]), 400, 'not an image'),
        ('empty file', dict(files=[('a.png', b'')]), 400, 'empty'),
        ('truncated', dict(files=[('t.png', png[:len(png) // 2])]), 400, 't.png'),
        ('decompression bomb', dict(files=[('bomb.png', bomb.read_bytes())]), 413, 'bomb'),
        ('../ in the name', dict(files=[('../../x.png', png)]), 400, 'holds a path'),
    ]
    for what, kw, status, says in cases:
        got, body = served.predict(**kw)
        assert (what, got) == (what, status), body
        assert says in body['error'], (what, body)
    body, ctype = multipart([('a.png', png)], field='photo')
    got, answer = served.request('POST', '/predict', body, {'Content-Type': ctype})
    assert got == 400 and "no part named 'file'" in answer['error']
    got, answer = served.request('POST', '/predict', b'x=1',
                                 {'Content-Type': 'application/x-www-form-urlencoded'})
    assert got == 415 and 'image/jpeg' in answer['error']
    got, answer = served.request('POST', '/predict?top_k=two', png, {'Content-Type': 'image/png'})
    assert got == 400 and 'top_k' in answer['error']
    got, answer = served.request('GET', '/predict')
    assert got == 405
    # a large upload is read into memory, not spooled to a temporary file; answered
    got, answer = served.predict([('big.png', (tmp_path / 'big.png').read_bytes())])
    assert got == 200, answer
    assert sorted(served.tmpdir.rglob('*')) == before
    assert served.request('GET', '/health')[0] == 200
    assert 'Traceback' not in served.stderr, served.stderr


@pytest.mark.fault
def test_an_upload_over_the_limit_is_refused_before_it_is_read(my_project, tmp_path):
    s = Served(['runs/my_run', '--port', 0, '--max_upload_mb', 1], my_project, tmp_path)
    try:
        with socket.create_connection(('127.0.0.1', s.port), timeout=30) as c:
            c.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n'
                      b'Content-Length: 50000000\r\n\r\n' + b'\0' * 1024)   # 50 MB claimed
            answer = b''   # answered after 1 kB of the 50 MB: read the answer to its end
            while b'}' not in answer:
                try: chunk = c.recv(65536)
                except ConnectionResetError: break
                if not chunk: break
                answer += chunk
            answer = answer.decode()
        assert answer.startswith('HTTP/1.1 413'), answer
        assert '--max_upload_mb' in answer and '"error"' in answer
        assert s.request('GET', '/health')[0] == 200
        # and a body that streams past the limit without a Content-Length
        c = http.client.HTTPConnection('127.0.0.1', s.port, timeout=30)
        c.request('POST', '/predict', body=iter([b'\0' * 600_000] * 3),
                  headers={'Content-Type': 'image/png', 'Transfer-Encoding': 'chunked'},
                  encode_chunked=True)
        r = c.getresponse()
        assert r.status == 413 and '--max_upload_mb' in json.loads(r.read())['error']
        c.close()
    finally: assert s.stop() == 0


@pytest.mark.fault
def test_sigterm_under_load_answers_every_request_in_flight(my_project, tmp_path):
    """16 clients each send their request's headers and half its body, SIGTERM comes, then they
    send the rest: every one of them, in flight when the signal came, is answered 200."""
    s = Served(['runs/my_run', '--port', 0], my_project, tmp_path)
    images = split_images(my_project)[:16]
    halfway = threading.Barrier(17)

    def client(path: Path):
        body, ctype = multipart([(path.name, path.read_bytes())])
        c = http.client.HTTPConnection('127.0.0.1', s.port, timeout=60)
        c.putrequest('POST', '/predict')
        c.putheader('Content-Type', ctype); c.putheader('Content-Length', str(len(body)))
        c.endheaders()
        c.send(body[:len(body) // 2])
        halfway.wait(30)          # every request is in flight
        halfway.wait(30)          # SIGTERM has been sent
        time.sleep(0.2)
        c.send(body[len(body) // 2:])
        r = c.getresponse()
        answer = (r.status, json.loads(r.read()))
        c.close()
        return answer
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, p) for p in images]
        halfway.wait(30)
        time.sleep(0.3)           # the server has read the halves
        s.proc.send_signal(signal.SIGTERM)
        halfway.wait(30)
        answers = [f.result(timeout=60) for f in futures]
    assert [a[0] for a in answers] == [200] * 16, answers
    assert all(len(a[1]['predictions']) == 1 for a in answers)
    assert s.proc.wait(60) == 0, s.stderr
    assert 'stopped by SIGTERM' in s.stderr and 'Traceback' not in s.stderr, s.stderr
    with pytest.raises(OSError):   # and it is gone
        socket.create_connection(('127.0.0.1', s.port), timeout=5)


def test_an_onnx_file_is_served_without_torch(my_project, tmp_path):
    assert_ok(run(['ml-export', '--checkpoint', 'runs/my_run/weights/best.pt'], my_project))
    onnx = my_project / 'runs' / 'my_run' / 'weights' / 'best.onnx'
    code = ("import sys; sys.modules['torch'] = None  # any import of torch fails\n"
            "from imgcls.cli import ml_serve; sys.exit(ml_serve(sys.argv[1:]))")
    s = Served([onnx, '--port', 0], my_project, tmp_path, argv0=[sys.executable, '-c', code])
    try:
        images = split_images(my_project)[:4]
        status, body = s.predict([(p.name, p.read_bytes()) for p in images])
        assert status == 200, body
        assert s.request('GET', '/health')[1]['model'] == str(onnx)
    finally: assert s.stop() == 0, s.stderr
    # a run folder with an up-to-date export beside its checkpoint serves that file
    r = Served(['runs/my_run', '--port', 0], my_project, tmp_path)
    try: assert 'best.onnx (the export of' in r.banner, r.banner
    finally: r.stop()


@pytest.mark.fault
def test_what_cannot_be_served_is_one_clear_line(my_project, tmp_path):
    assert_clean_error(run(['ml-serve', 'runs/nothing'], my_project), 'runs/nothing',
                       'no such file')
    (my_project / 'notes.txt').write_text('hi')
    assert_clean_error(run(['ml-serve', 'notes.txt'], my_project), 'not something ml-serve')
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0)); busy.listen(1)
        port = busy.getsockname()[1]
        assert_clean_error(run(['ml-serve', 'runs/my_run', '--port', port], my_project),
                           f'127.0.0.1:{port}', 'in use', '--port')
    assert_usage_error(run(['ml-serve', 'runs/my_run', '--max_batch', 0], my_project),
                       '--max_batch')


def test_a_cv_folder_serves_its_fold_ensemble_as_ml_inference_predicts(my_cv_project, tmp_path):
    [cv] = [p for p in (my_cv_project / 'runs').iterdir() if (p / 'cv_report.json').is_file()]
    images = split_images(my_cv_project)[:12]
    res = run(['ml-inference', '--checkpoint_path', cv, '--images', *images, '--format', 'json',
               '--output', 'cv_preds.json'], my_cv_project)
    assert_ok(res)
    want = json.loads((my_cv_project / 'cv_preds.json').read_text())['predictions']
    s = Served([cv, '--port', 0], my_cv_project, tmp_path)
    try:
        assert 'exported to ONNX in memory' in s.banner, s.banner   # no ensemble.onnx yet
        status, body = s.predict([(p.name, p.read_bytes()) for p in images])
        assert status == 200, body
        got = body['predictions']
        assert [p['label'] for p in got] == [w['predicted'] for w in want]
        assert max(abs(p['probability'] - w['probability']) for p, w in zip(got, want)) < 1e-4
    finally: assert s.stop() == 0, s.stderr


@needs_chromium
def test_the_page_classifies_an_image_in_chromium_offline(my_project, served, tmp_path):
    path = split_images(my_project)[0]
    want = served.predict([(path.name, path.read_bytes())])[1]['predictions'][0]
    data = 'data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / 'serve_page.png'
    netlog = tmp_path / 'netlog.json'
    dom = dump_dom(f'{served.url}/?image={data}', tmp_path, screenshot=shot,
                   extra=(f'--log-net-log={netlog}',))
    label = re.search(r'<div class="label"><b>([^<]*)</b>', dom)
    assert label and label.group(1) == want['label'], dom[-3000:]
    assert dom.count('class="row"') == len(want['top_k'])
    assert '10 classes' in dom   # the model's description, from /health
    urls = set(re.findall(r'"url":"([^"]+)"', netlog.read_text(errors='replace')))
    own = re.compile(r'https?://[^/]*\.(google\.com|googleapis\.com|gvt1\.com)/')
    page = {u for u in urls if not own.match(u)}
    assert all(u.startswith((served.url, 'data:', 'blob:')) for u in page), sorted(page)[:5]
    im = Image.open(shot).convert('L')
    lo, hi = im.getextrema()
    assert hi - lo > 100, (lo, hi)   # drawn, not blank
