"""Step benchmarks: the timing helper and `dnas bench`."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from dnas import bench, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIG = os.path.join(REPO, "experiments", "train_cifar10.py")
CONFIG = os.path.join(REPO, "experiments", "darts_cifar10.py")


def _ok(argv):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 0


def test_time_step_threads_the_state_and_reports_xla_flops():
  n = 64

  @jax.jit
  def step(state, x):
    return state + 1, x @ x

  seen = []

  def carry(out, args):
    seen.append(int(out[0]))
    return (out[0],) + tuple(args[1:])

  r = bench.time_step(step, (jnp.zeros((), jnp.int32), jnp.ones((n, n))), 3, carry)
  assert seen == [1, 2, 3, 4]  # one untimed call, then 3 timed ones, each on the last state
  assert r["steps"] == 3
  assert r["flops"] == pytest.approx(2 * n**3, rel=0.01)  # one n x n matmul
  assert 0 < r["step_ms_min"] <= r["step_ms_median"]
  assert r["compile_s"] >= 0
  assert r["peak_fraction"] is None  # no known peak for a CPU


def test_time_step_profiles_five_more_calls_on_the_threaded_state(tmp_path):
  seen = []

  def carry(out, args):
    seen.append(int(out))
    return (out,)

  r = bench.time_step(jax.jit(lambda s: s + 1), (jnp.zeros((), jnp.int32),), 2, carry,
                      profile_dir=str(tmp_path))
  assert seen == list(range(1, 9))  # untimed, 2 timed, then 5 traced calls, each on the last state
  assert list(tmp_path.rglob("*.xplane.pb"))  # the trace was written where asked
  p = r["profile"]
  assert p["profiled_calls"] == 5
  # The CPU backend records no device plane, so no kernels are summed here (GPUs have them).
  assert p["device_lines"] == []
  assert p["kernels"] == [] and p["kernel_launches_per_call"] == 0 and p["kernel_ms_per_call"] == 0


def test_time_step_zero_steps_compiles_only_and_negative_is_an_error():
  calls = []
  r = bench.time_step(jax.jit(lambda x: x), (1.0,), 0, lambda o, a: calls.append(o) or a)
  assert calls == [] and r["compile_s"] >= 0
  assert r["step_ms_median"] is None and r["step_ms_min"] is None and r["peak_fraction"] is None
  with pytest.raises(ValueError, match="steps"):
    bench.time_step(jax.jit(lambda x: x), (1.0,), -1, lambda o, a: a)


def test_bench_train_counts_the_weights_dnas_info_counts(capsys):
  tiny = ["--config", f"{TRAIN_CONFIG}:smoke", "--genotype", "DARTS_V2",
          "--config.model.channels=4", "--config.model.layers=3", "--config.data.batch_size=4",
          "--json"]
  _ok(["dnas", "bench", "train", "--steps", "2", "--dtypes", "float32,bfloat16", *tiny])
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [r["dtype"] for r in rows] == ["float32", "bfloat16"]
  _ok(["dnas", "info", *tiny])
  info = json.loads(capsys.readouterr().out)
  for r in rows:
    assert r["benchmark"] == "train" and r["batch"] == 4 and r["steps"] == 2
    assert r["n_params"] == info["n_params_aux"]  # float32 master weights in both
    assert r["images_per_s"] == pytest.approx(4 / (r["step_ms_median"] / 1e3), rel=1e-2)
    assert r["flops"] > 0


@pytest.mark.parametrize("args,needle", [
    (["bench"], "bench"),
    (["bench", "fly", "--config", f"{CONFIG}:smoke"], "fly"),
    (["bench", "search"], "--config"),
    (["bench", "search", "--config", f"{CONFIG}:smoke", "--steps", "-1"], "--steps"),
    (["bench", "train", "--config", f"{TRAIN_CONFIG}:smoke"], "--genotype"),
    (["bench", "train", "--config", f"{TRAIN_CONFIG}:smoke", "--genotype", "DARTS_V2",
      "--dtypes", "float16"], "float16"),
])
def test_bench_usage_errors_exit_2(args, needle, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["dnas", *args])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert needle in err and "Traceback" not in err


def test_xla_memory_counts_arguments_outputs_and_donation():
  n = 256
  x = jnp.ones((n, n))
  plain = bench.xla_memory(jax.jit(lambda x: x * 2).lower(x).compile())
  donated = bench.xla_memory(jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile())
  size = n * n * 4
  assert plain["xla_peak_bytes_estimate"] == 2 * size + plain["xla_temp_bytes"]
  # A donated input's buffer is reused for the output: one array less at the peak.
  assert donated["xla_peak_bytes_estimate"] == size + donated["xla_temp_bytes"]
