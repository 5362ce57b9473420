"""`ml-visualise` end to end, as a user runs it: TensorBoard launched on a trained run, opened
in headless Chromium and stopped with Ctrl-C; the sample and prediction grids as PNG files and
TensorBoard images; every SPEC.md `--mode search` line writing Optuna's plots as self-contained
HTML that Chromium draws offline; a bad `--params` name refused with one clear line."""
from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import (HAVE_CHROMIUM, assert_clean_error, assert_ok, command, dump_dom, env,
                     fresh_copy, run, show)
from PIL import Image

SCALARS = {'train/loss', 'train/acc', 'val/loss', 'val/acc', 'val/macro_f1', 'val/balanced_acc',
           'lr'}


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def project(my_project) -> Path:
    "The shared trained project (conftest): data/my_dataset, its config, runs/my_run."
    return my_project


def make_study(project: Path, name: str = 'my_study', n_trials: int = 10) -> str:
    "A finished Optuna study made with the plain API, in runs/optuna_studies/{name}.db."
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    d = project / 'runs' / 'optuna_studies'
    d.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(d / f'{name}.db').as_posix()}"

    def objective(t):
        lr = t.suggest_float('optimizer.lr', 1e-5, 1e-1, log=True)
        bs = t.suggest_categorical('training.batch_size', [16, 32, 64])
        mom = t.suggest_float('optimizer.momentum', 0.8, 0.99)
        for epoch in range(3): t.report(1 - abs(np.log10(lr) + 2) / (epoch + 2), epoch)
        return 1 - abs(np.log10(lr) + 2) / 5 + mom / 10 - bs / 1000

    study = optuna.create_study(study_name=name, storage=url, direction='maximize',
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=n_trials)
    return url


@pytest.fixture(scope='session')
def _study_pristine(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('visualise_study')
    make_study(root)
    return root


@pytest.fixture
def study_project(tmp_path, _study_pristine) -> tuple[Path, str]:
    d = fresh_copy(_study_pristine, tmp_path / 'study_project')
    return d, f"sqlite:///{(d / 'runs' / 'optuna_studies' / 'my_study.db').as_posix()}"


# ---------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def rendered_text(dom: str) -> str:
    "The DOM without scripts and styles (what JavaScript built, not the code that built it)."
    dom = re.sub(r'<script\b.*?</script>', '', dom, flags=re.S | re.I)
    return re.sub(r'<style\b.*?</style>', '', dom, flags=re.S | re.I)


def visible_text(dom: str) -> str:
    return re.sub(r'\s+', ' ', re.sub(r'<[^>]+>', ' ', rendered_text(dom)))


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r: return json.loads(r.read())


def tb_images(log_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    return ea.Tags()['images']


def has_red(png: Path) -> bool:
    "Whether the image has strongly red pixels (titles and frames of mistakes)."
    a = np.asarray(Image.open(png).convert('RGB')).astype(int)
    return bool(((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).any())


# ---------------------------------------------------------------- launch

def test_launch_serves_the_runs_scalars_and_stops_on_ctrl_c(project, tmp_path):
    port = free_port()
    argv = [command('ml-visualise'), '--mode', 'launch', '--run_dir', 'runs/my_run',
            '--port', str(port)]
    proc = subprocess.Popen(argv, cwd=project, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    out, err = [], []

    def pump(stream, keep):
        for ln in stream:
            keep.append(ln)
            if keep is out: lines.put(ln)
        lines.put(None)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err), daemon=True)]
    for t in threads: t.start()
    try:
        url = None
        while url is None:
            ln = lines.get(timeout=120)
            assert ln is not None, f'ml-visualise ended early\n{"".join(out)}\n{"".join(err)}'
            m = re.search(r'http://127\.0\.0\.1:(\d+)/', ln)
            if m: url = m.group(0)
        assert url == f'http://127.0.0.1:{port}/'
        tags = {}
        for _ in range(300):  # TensorBoard reads the logs in a background thread
            tags = get_json(url + 'data/plugin/scalars/tags')
            if tags: break
            threading.Event().wait(0.2)
        assert list(tags) == ['my_run/tensorboard'], tags
        scalars = set(tags['my_run/tensorboard'])
        assert SCALARS <= scalars, scalars
        if HAVE_CHROMIUM:
            text = visible_text(dump_dom(url, tmp_path))
            assert 'my_run/tensorboard' in text, text[:3000]
            # the Time Series page lists each group of the run's scalars with its card count
            groups = {}
            for t in scalars: groups[t.split('/')[0]] = groups.get(t.split('/')[0], 0) + 1
            for g, k in groups.items():
                if k > 1: assert f'{g} {k} cards' in text, (g, k, text[:3000])
    finally:
        proc.send_signal(signal.SIGINT)
        try: code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill(); proc.wait()
            raise
        for t in threads: t.join(timeout=10)
    assert code == 0, f'exit {code}\n{"".join(out)}\n{"".join(err)}'
    assert 'TensorBoard stopped' in ''.join(out)
    assert 'Traceback' not in ''.join(out + err)
    with pytest.raises(urllib.error.URLError): get_json(url + 'data/runs')
    if not HAVE_CHROMIUM:
        pytest.skip('TensorBoard checked through its JSON API only: no Chromium was found '
                    '(.ci/services.sh installs it)')


def test_launch_without_logs_is_a_clear_error(project):
    res = run(['ml-visualise', '--mode', 'launch', '--run_dir', 'data/my_dataset'], project)
    assert_clean_error(res, 'data/my_dataset: no TensorBoard logs here')
    res = run(['ml-visualise', '--mode', 'launch', '--run-dir', 'runs/nothing'], project)
    assert_clean_error(res, 'runs/nothing: no such folder')


# ---------------------------------------------------------------- samples and predictions

def test_samples_and_predictions_as_png_and_in_tensorboard(project):
    rd = project / 'runs' / 'my_run'
    res = run(['ml-visualise', '--mode', 'samples', '--run_dir', 'runs/my_run'], project)
    assert_ok(res)
    png = rd / 'visualise' / 'samples.png'
    im = Image.open(png)
    assert im.format == 'PNG' and 600 <= im.width <= 4000 and 600 <= im.height <= 4000, im.size
    assert 'visualise/samples' in tb_images(rd / 'tensorboard')

    summary = json.loads((rd / 'summary.json').read_text())
    res = run(['ml-visualise', '--mode', 'predictions', '--run-dir', 'runs/my_run'], project)
    assert_ok(res)
    m = re.match(r'test: (\d+) mistakes, accuracy ([\d.]+);', res.stdout)
    assert m, show(res)
    n_test = summary['test']['n']
    assert float(m.group(2)) == pytest.approx(summary['test']['acc'], abs=1e-4)
    assert int(m.group(1)) == round((1 - summary['test']['acc']) * n_test)
    png = rd / 'visualise' / 'predictions_test.png'
    im = Image.open(png)
    assert im.format == 'PNG' and 600 <= im.width <= 4000 and 200 <= im.height <= 4000, im.size
    assert has_red(png) == (int(m.group(1)) > 0)  # every test image shown; mistakes in red
    assert 'visualise/predictions_test' in tb_images(rd / 'tensorboard')

    res = run(['ml-visualise', '--mode', 'predictions', '--checkpoint',
               'runs/my_run/weights/last.pt', '--mistakes_only', '--n', '4'], project)
    assert_ok(res)
    assert (rd / 'visualise' / 'predictions_test_last.png').is_file() or 'nothing' in res.stdout


def test_samples_from_a_config(project):
    res = run(['ml-visualise', '--mode', 'samples', '--config', 'configs/my_dataset_config.yaml',
               '--n', '3'], project)
    assert_ok(res)
    assert Image.open(project / 'runs' / 'visualise' / 'samples.png').format == 'PNG'
    assert 'visualise/samples' in tb_images(project / 'runs' / 'visualise' / 'tensorboard')


def test_views_refuse_bad_input_clearly(project):
    res = run(['ml-visualise', '--mode', 'predictions'], project)
    assert_clean_error(res, 'give a run folder (--run_dir) or a checkpoint (--checkpoint)')
    res = run(['ml-visualise', '--mode', 'samples', '--run_dir', 'runs'], project)
    assert_clean_error(res, 'runs: not a run folder (no config.yaml')
    res = run(['ml-visualise', '--mode', 'pictures'], project)
    assert_clean_error(res, '--mode must be one of launch, samples, predictions, search')


# ---------------------------------------------------------------- search

ALL_PLOTS = ['optimization_history', 'param_importances', 'contour', 'parallel_coordinate',
             'slice', 'rank', 'edf', 'intermediate_values', 'timeline']
SPEC_SEARCH = [  # a SPEC.md line, the plot files it writes, those drawn in Chromium (each once)
    (['--mode', 'search', '--study-name', 'my_study'], ALL_PLOTS, ['parallel_coordinate', 'slice']),
    (['--mode', 'search', '--study-name', 'my_study', '--plot-type', 'optimization_history'],
     ['optimization_history'], ['optimization_history']),
    (['--mode', 'search', '--study-name', 'my_study', '--plot-type', 'param_importances'],
     ['param_importances'], ['param_importances']),
    (['--mode', 'search', '--study-name', 'my_study', '--plot-type', 'contour', '--params', 'lr',
      'batch_size'], ['contour'], ['contour']),
]


@pytest.mark.parametrize('args,written,drawn', SPEC_SEARCH,
                         ids=['all', 'optimization_history', 'param_importances', 'contour'])
def test_spec_search_lines_write_self_contained_html(study_project, tmp_path, args, written,
                                                     drawn):
    project, url = study_project
    res = run(['ml-visualise', *args, '--storage', url], project)
    assert_ok(res)
    plots = project / 'runs' / 'optuna_studies' / 'my_study' / 'plots'
    assert sorted(p.stem for p in plots.glob('*.html')) == sorted(written), show(res)
    for name in written:
        html = (plots / f'{name}.html').read_text()
        assert f'wrote runs/optuna_studies/my_study/plots/{name}.html' in res.stdout
        assert '<script src="http' not in html and "<script src='http" not in html
        assert 'Plotly.newPlot' in html and len(html) > 1_000_000  # plotly.js is inside
        if name == 'contour' and '--params' in args:
            assert 'optimizer.lr' in html and 'training.batch_size' in html
            assert 'optimizer.momentum' not in html
        if name in drawn and HAVE_CHROMIUM:
            dom = rendered_text(dump_dom((plots / f'{name}.html').as_uri(), tmp_path))
            assert re.search(r'<svg class="main-svg"', dom), (name, dom[:2000])
            assert 'js-plotly-plot' in dom, name
    if not HAVE_CHROMIUM:
        pytest.skip('HTML checked without drawing it: no Chromium was found '
                    '(.ci/services.sh installs it)')


def test_spec_search_line_as_written_finds_the_study(study_project):
    "No --storage: the study is found in runs/optuna_studies/, where ml-search keeps it."
    project, _ = study_project
    res = run(['ml-visualise', '--mode', 'search', '--study-name', 'my_study', '--plot-type',
               'optimization_history'], project)
    assert_ok(res)
    assert (project / 'runs/optuna_studies/my_study/plots/optimization_history.html').is_file()


def test_search_refuses_an_unknown_param_or_study_clearly(study_project):
    project, url = study_project
    res = run(['ml-visualise', '--mode', 'search', '--study-name', 'my_study', '--plot-type',
               'contour', '--params', 'lr', 'dropout', '--storage', url], project)
    assert_clean_error(res, '--params dropout', 'optimizer.lr, optimizer.momentum, '
                       'training.batch_size')
    assert not (project / 'runs' / 'optuna_studies' / 'my_study' / 'plots').exists()
    res = run(['ml-visualise', '--mode', 'search', '--study_name', 'my_study', '--plot_type',
               'contours', '--storage', url], project)
    assert_clean_error(res, "unknown plot type 'contours'", 'contour')
    res = run(['ml-visualise', '--mode', 'search', '--study-name', 'nope', '--storage', url],
              project)
    assert_clean_error(res, "'nope'")
