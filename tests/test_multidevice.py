"""Data parallelism over several (simulated CPU) devices: search, retraining, resume, errors.

JAX fixes its device count when it starts, so every case runs ``dnas`` in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""

import json
import os
import subprocess
import sys

import numpy as np
from flax import serialization

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
  payload = serialization.msgpack_restore((workdir / "checkpoint.msgpack").read_bytes())
  return payload["state"]["step"], {k: np.asarray(v) for k, v in payload["state"]["arch"].items()}


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
  payload = serialization.msgpack_restore((work / "checkpoint.msgpack").read_bytes())
  assert int(payload["step"]) == 2
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
