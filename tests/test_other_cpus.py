"""What an x86 CPU with AVX2 only (no AVX512, no VNNI, no native bfloat16) makes of imgcls, checked
on whatever CPU runs the tests: the code runs under QEMU's user-mode emulator as a Haswell, through
`tools/avx2_emulated.sh` (which also says how it makes imgcls read the emulated CPU), whose CPUID
is what torch and ONNX Runtime choose their kernels by.

- The default int8 file (7-bit weights) gives the same probabilities there as on this CPU, and a
  full-range file is warned about there.
- A config made there trains in float32 (`standard`), and `mixed_precision` there says why it is
  slow."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_ok, env, run, show, tiny_config

QEMU = shutil.which('qemu-x86_64')
pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ('x86_64', 'amd64') or QEMU is None,
    reason='needs an x86_64 machine with QEMU user-mode emulation (Debian: apt-get install '
           'qemu-user; .ci/services.sh installs it)')

EMULATE = Path(__file__).resolve().parent.parent / 'tools' / 'avx2_emulated.sh'


def emulated(args: list, cwd, timeout: float = 1800) -> subprocess.CompletedProcess:
    "`python ...` or a console command and its flags, run on the emulated AVX2-only CPU."
    return subprocess.run([str(EMULATE), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**env(), 'OMP_NUM_THREADS': '1'}, timeout=timeout)


CPU = """
import json, torch
from imgcls.core import cpu_features
print(json.dumps({'capability': torch.backends.cpu.get_cpu_capability(), **cpu_features()}))
"""


@pytest.fixture(scope='module')
def avx2_cpu(tmp_path_factory) -> dict:
    "What imgcls and torch read of the emulated CPU; skips where this QEMU cannot emulate AVX2."
    res = emulated(['python', '-c', CPU], tmp_path_factory.mktemp('cpu'))
    assert res.returncode == 0, show(res)
    f = json.loads(res.stdout.splitlines()[-1])
    if f['capability'] != 'AVX2':
        ver = subprocess.run([QEMU, '--version'], capture_output=True, text=True).stdout
        pytest.skip(f'this QEMU ({ver.splitlines()[0] if ver else "?"}) does not emulate AVX2 '
                    f'(torch sees {f["capability"]}); QEMU 7.2 and newer do')
    return f


def test_the_emulated_cpu_is_avx2_only(avx2_cpu):
    f = avx2_cpu
    assert (f['avx2'], f['avx512'], f['vnni'], f['bf16']) == (True, False, False, False), f


PROBS = """
import json, sys, torch
from imgcls.onnx_runtime import OnnxPredictor
paths = json.loads(open(sys.argv[1]).read())
print(json.dumps({m: OnnxPredictor(m, threads=1).predict_proba(paths).tolist()
                  for m in sys.argv[2:]}))
"""


def test_int8_default_gives_the_same_answers_on_an_avx2_only_cpu(avx2_cpu, my_project):
    from imgcls.onnx_runtime import OnnxPredictor
    w = my_project / 'runs' / 'my_run' / 'weights'
    for rng in ('reduced', 'full'):    # made here, by the command a user runs
        assert_ok(run(['ml-export', '--checkpoint', w / 'best.pt', '--quantize', 'int8',
                       '--int8_range', rng, '--calib_images', '32', '--bench_iters', '2',
                       '--bench_warmup', '0'], my_project))
        shutil.copy(w / 'best.int8.onnx', w / f'{rng}.int8.onnx')
    assert_ok(run(['ml-export', '--checkpoint', w / 'best.pt', '--quantize', 'int8',
                   '--calib_images', '32', '--bench_iters', '2', '--bench_warmup', '0'],
                  my_project))            # no --int8_range: the default
    models = [w / 'best.onnx', w / 'best.int8.onnx', w / 'full.int8.onnx']
    paths = sorted(map(str, (my_project / 'data' / 'my_dataset' / 'raw').rglob('*.png')))
    (my_project / 'paths.json').write_text(json.dumps(paths))
    here = {str(m): OnnxPredictor(m, threads=1).predict_proba(paths) for m in models}
    res = emulated(['python', '-c', PROBS, 'paths.json', *models], my_project)
    assert res.returncode == 0, show(res)
    there = {k: np.asarray(v) for k, v in json.loads(res.stdout.splitlines()[-1]).items()}
    fp32, q7, q8 = (str(m) for m in models)
    assert np.abs(there[fp32] - here[fp32]).max() < 1e-4       # float kernels differ in rounding
    # the default file: the same int8 arithmetic on both CPUs, so the same answers
    assert OnnxPredictor(q7).meta['int8_range'] == 'reduced'
    assert np.abs(there[q7] - here[q7]).max() < 1e-5, np.abs(there[q7] - here[q7]).max()
    assert (there[q7].argmax(1) == here[q7].argmax(1)).all()
    # full range: loading it there is warned about, with the fix
    assert f'{q8} has full-range (8-bit) int8 weights' in res.stderr, show(res)
    assert 'has no VNNI' in res.stderr and '--int8_range reduced' in res.stderr
    assert f'{q7} has full-range' not in res.stderr
    d = np.abs(there[q8] - here[q8]).max()
    print(f'full-range int8, max |prob diff| between this CPU and an AVX2-only one: {d:.3g}; '
          f'7-bit: {np.abs(there[q7] - here[q7]).max():.3g}')


def test_an_avx2_only_cpu_gets_float32_and_a_reason(avx2_cpu, tiny_split):
    root = tiny_split.parent.parent
    res = emulated(['ml-init-config', 'data/tiny'], root)
    assert res.returncode == 0, show(res)
    lines = (root / 'configs' / 'tiny_config.yaml').read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.strip().startswith('trainer_type:'))
    assert lines[i].split()[:2] == ['trainer_type:', 'standard'], lines[i - 1:i + 1]
    assert 'float32: this CPU has no native bfloat16' in lines[i - 1], lines[i - 1:i + 1]
    machine = next(ln for ln in lines if ln.startswith('# Machine:'))
    assert 'bfloat16' not in machine, machine
    # asked for anyway, mixed precision works there (bf16 emulated in software) and says so
    cfg = tiny_config(root, 'configs/mp.yaml', training__num_epochs=1,
                      training__trainer_type='mixed_precision')
    res = emulated(['ml-train', '--config', cfg.relative_to(root)], root)
    assert res.returncode == 0, show(res)
    assert 'this CPU has no native bfloat16; mixed precision may be slower than standard' \
        in res.stderr + res.stdout, show(res)
    [run_dir] = (root / 'runs').iterdir()
    assert (run_dir / 'weights' / 'best.pt').is_file()
    assert 'bfloat16 autocast on cpu' in (run_dir / 'logs' / 'train.log').read_text()

