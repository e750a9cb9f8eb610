"""Data parallelism over several (simulated CPU) devices and processes: search, retraining,
resume, errors.

JAX fixes its device count when it starts, so every case runs ``dnas`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``; a multi-process run starts two such
processes on this machine, joined through ``jax.distributed`` (CPU collectives: gloo).
"""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np

from dnas import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_CONFIG = os.path.join(REPO, "experiments", "nb201_darts_cifar10.py")
TRAIN_CONFIG = os.path.join(REPO, "experiments", "train_cifar10.py")
NB201_CELL = {"space": "nb201", "arch": "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|"
                                         "skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|"}


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _start(devices, *args):
  return subprocess.Popen([sys.executable, "-m", "dnas.cli", *args], cwd=REPO,
                          env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(p, timeout=600):
  out, err = p.communicate(timeout=timeout)
  return p.returncode, out, err


def _data_flags(archive, caches):
  return [f"--config.data.path={archive}", f"--config.data.cache_dir={caches / 'data'}",
          f"--config.compilation_cache_dir={caches / 'jax'}"]


def _arch(workdir):
  state = checkpoints.read(str(workdir))
  return state["step"], {k: np.asarray(v) for k, v in state["arch"].items()}


def test_search_on_8_devices_ends_with_the_alpha_of_1(cifar10_archive, tmp_path, caches):
  # One epoch of 4 steps at the same global batch (16: 2 images per device on 8). No crop
  # padding: with the zero-padded crops of this tiny supernet, merely reversing a batch on one
  # device moved the first step's alpha gradient by 3.6 %, and 8 devices (another summation
  # order) as much; without it alpha agreed to 7e-7 (values up to 3e-3).
  flags = ["search", "--config", f"{SEARCH_CONFIG}:smoke", *_data_flags(cifar10_archive, caches),
           "--config.data.train_size=128", "--config.search.epochs=1", "--config.seed=0",
           "--config.data.crop_padding=0"]
  runs = {n: _start(n, *flags, "--workdir", str(tmp_path / f"dev{n}")) for n in (1, 8)}
  for n, p in runs.items():
    code, _, err = _finish(p)
    assert code == 0, f"{n} devices: {err[-3000:]}"
  (step1, arch1), (step8, arch8) = _arch(tmp_path / "dev1"), _arch(tmp_path / "dev8")
  assert int(step1) == int(step8) == 4
  assert arch1.keys() == arch8.keys()
  for k in arch1:
    # The same global batch: the only difference is the order of floating-point sums.
    np.testing.assert_allclose(arch8[k], arch1[k], rtol=0, atol=1e-5, err_msg=k)


def test_retraining_on_8_devices_stops_and_resumes(cifar10_archive, tmp_path, caches):
  geno = tmp_path / "cell.json"
  geno.write_text(json.dumps(NB201_CELL))
  work = tmp_path / "train"
  flags = ["train", "--config", f"{TRAIN_CONFIG}:nb201_smoke", "--genotype", str(geno),
           "--workdir", str(work), *_data_flags(cifar10_archive, caches),
           "--config.data.train_size=128", "--config.data.test_size=64"]
  # Stopped after 2 of its 4 steps, then resumed, as the CLI runs it; both times the state the
  # step starts from (initialised, then restored) must be a copy on each of the 8 devices.
  code, out, err = _finish(_start_script(8, _PLACED.format(flags=flags, stop=2)))
  assert code == 0, err[-3000:]
  assert "state on 8 devices" in out, out
  assert int(checkpoints.read(str(work))["step"]) == 2
  assert not (work / "final_metrics.json").exists()
  code, out, err = _finish(_start_script(8, _PLACED.format(flags=flags, stop=None)))
  assert code == 0, err[-3000:]
  assert f"resuming {work} from step 2" in out and "state on 8 devices" in out, out
  final = json.loads((work / "final_metrics.json").read_text())
  assert final["step"] == 4 and 0.0 <= final["test_acc"] <= 1.0


# `dnas` as the CLI runs it, stopped after `stop` steps, checking where the step's state lives.
_PLACED = """
import functools, jax
from dnas import cli, run_io, train_lib
init_and_compile = run_io.init_and_compile
def checked(*args, **kwargs):
  result = init_and_compile(*args, **kwargs)
  for x in jax.tree.leaves(result[0]):
    assert x.sharding.is_fully_replicated and len(x.sharding.device_set) == 8, x.sharding
  print("state on 8 devices", flush=True)
  return result
run_io.init_and_compile = checked
train_lib.run_train = functools.partial(train_lib.run_train, stop_after_steps={stop})
cli.main(["dnas"] + {flags!r})
"""


def _start_script(devices, script):
  return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_batch_not_divisible_by_the_device_count_is_one_error_line(cifar10_archive, tmp_path,
                                                                    caches):
  code, out, err = _finish(_start(
      8, "search", "--config", f"{SEARCH_CONFIG}:smoke", "--workdir", str(tmp_path / "run"),
      *_data_flags(cifar10_archive, caches), "--config.data.batch_size=12"), timeout=300)
  assert code == 2, err[-3000:]
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  assert "data.batch_size=12" in lines[0] and "8 devices" in lines[0], lines[0]
  assert not (tmp_path / "run").exists()  # refused before anything is written


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# `dnas` as the CLI runs it; process 1 kills itself once checkpoint 2 is committed (mid-run, as
# a lost host), leaving process 0 waiting in the next step's collectives.
_KILLED_AFTER_2 = """
import os, signal
from dnas import checkpoints, cli
save = checkpoints.Checkpoints.save
def save_then_die(self, step, *args, **kwargs):
  save(self, step, *args, **kwargs)
  if step == 2 and {process_id} == 1:
    os.kill(os.getpid(), signal.SIGKILL)
checkpoints.Checkpoints.save = save_then_die
cli.main(["dnas"] + {flags!r})
"""


def _two_processes(flags, script=None):
  """Starts process 0 and 1 of one run on this machine (one CPU device each)."""
  port = _free_port()
  procs = []
  for i in (0, 1):
    f = flags + [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                 f"--process_id={i}"]
    procs.append(_start(1, *f) if script is None else
                 _start_script(1, script.format(process_id=i, flags=f)))
  return procs


def test_search_on_2_processes_writes_one_run_and_resumes_after_a_kill(
    cifar10_archive, tmp_path, caches):
  """Two processes (one device each) run one search: process 0 writes the run folder, both
  checkpoint together, the genotype is the one-process run's; when one process dies, running
  both again resumes from the last checkpoint and ends bit for bit as the uninterrupted run."""
  flags = ["search", "--config", f"{SEARCH_CONFIG}:smoke", *_data_flags(cifar10_archive, caches),
           "--config.data.train_size=128", "--config.search.epochs=1", "--config.seed=0",
           "--config.data.crop_padding=0", "--config.checkpoint_every_steps=1"]
  one, two, killed = (tmp_path / n for n in ("one", "two", "killed"))
  single = _start(1, *flags, "--workdir", str(one))
  procs = _two_processes(flags + ["--workdir", str(two)])
  results = [_finish(p) for p in [single] + procs]
  for name, (code, _, err) in zip(("1 process", "process 0", "process 1"), results):
    assert code == 0, f"{name}: {err[-3000:]}"
  assert "genotype:" in results[1][1] and not results[2][1].strip(), results[2][1]
  assert json.loads((two / "genotype.json").read_text()) == json.loads(
      (one / "genotype.json").read_text())
  assert len([f for f in os.listdir(two) if f.startswith("events.out")]) == 1
  assert len((two / "metrics.jsonl").read_text().splitlines()) == len(
      (one / "metrics.jsonl").read_text().splitlines())
  (step1, arch1), (step2, arch2) = _arch(one), _arch(two)
  assert int(step1) == int(step2) == 4
  for k in arch1:  # another summation order only (two devices), as on 8 simulated devices
    np.testing.assert_allclose(arch2[k], arch1[k], rtol=0, atol=1e-5, err_msg=k)

  # Process 1 dies after checkpoint 2; process 0 waits for it in the next step, and the job is
  # stopped (as a scheduler stops a job that lost a host).
  p0, p1 = _two_processes(flags + ["--workdir", str(killed)], _KILLED_AFTER_2)
  code1, _, err1 = _finish(p1)
  assert code1 == -signal.SIGKILL, err1[-3000:]
  p0.kill()
  _finish(p0)
  assert checkpoints.steps(str(killed))[-1] == 2
  assert not (killed / "genotype.json").exists()
  results = [_finish(p) for p in _two_processes(flags + ["--workdir", str(killed)])]
  for i, (code, _, err) in enumerate(results):
    assert code == 0, f"process {i}: {err[-3000:]}"
  assert f"resuming {killed} from step 2" in results[0][1], results[0][1]
  assert (killed / "genotype.json").read_bytes() == (two / "genotype.json").read_bytes()
  a, b = checkpoints.read(str(killed)), checkpoints.read(str(two))
  for (where, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(x, y), jax.tree_util.keystr(where)


def test_distributed_flags_that_do_not_fit_are_one_error_line(tmp_path):
  for bad, name in [(["--num_processes=2", "--process_id=2"], "--process_id=2"),
                    (["--coordinator_address=localhost:1"], "--coordinator_address"),
                    (["--num_processes=0", "--process_id=0"], "--num_processes=0")]:
    code, _, err = _finish(_start(1, "search", "--config", f"{SEARCH_CONFIG}:smoke",
                                  "--workdir", str(tmp_path / "run"), *bad), timeout=120)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and name in lines[0], err
    assert not (tmp_path / "run").exists()
