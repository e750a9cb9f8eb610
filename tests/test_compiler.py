"""XLA's CPU options (presets, YNNPACK fusions, scheduler): reach the compiler, and leave results
as they are."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dnas import compiler, search


def test_options_name_the_preset_on_the_cpu():
  assert jax.default_backend() == "cpu"
  # This jaxlib knows the option, so the suite exercises the preset rather than the fallback.
  assert compiler._supported("CPU_OPT_PRESET_FAST_COMPILE")  # pylint: disable=protected-access
  assert not compiler._supported("CPU_OPT_PRESET_NO_SUCH")  # pylint: disable=protected-access
  assert compiler.options() == {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_COMPILE"}
  assert compiler.options("default") == {"xla_cpu_opt_preset": "CPU_OPT_PRESET_DEFAULT"}
  assert compiler.options("fast_runtime") == {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}
  assert compiler._supported("", compiler.YNN_OPTION)  # pylint: disable=protected-access
  assert compiler.options("default", ynn_fusions=False) == {
      "xla_cpu_opt_preset": "CPU_OPT_PRESET_DEFAULT", "xla_cpu_experimental_ynn_fusion_type": ""}


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match="fast_compile"):
    compiler.options("fastest")


def test_presets_give_the_same_search_step(tiny_search):
  """One search step compiled under XLA's default (YNNPACK fusions on) and under the
  fast-compile preset without them (the search default): same state."""
  model, strategy, weight_tx, arch_tx, bt, bv = tiny_search
  init = jax.jit(lambda k: search.init_search_state(model, strategy, weight_tx, arch_tx, k,
                                                   bt["image"]))
  results, texts = [], []
  for preset, ynn in (("default", True), ("fast_compile", False)):
    state = init(jax.random.key(0))
    alpha0 = jax.device_get(state.arch)
    step = search.make_search_step(model, strategy, weight_tx, arch_tx, cpu_preset=preset,
                                   ynn_fusions=ynn)
    compiled = step.lower(state, bt, bv).compile()
    texts.append(compiled.as_text())
    for _ in range(2):
      state, metrics = compiled(state, bt, bv)
    results.append(jax.device_get((state.params, state.arch, state.batch_stats, metrics)))
  # The options reached the compiler: the preset changes the executable, and YNNPACK fusions
  # are in it only when asked for.
  assert texts[0] != texts[1]
  assert ["__ynn_fusion" in t for t in texts] == [True, False]
  a, *others = (jax.tree.leaves(r) for r in results)
  assert len(a) > 10
  for b in others:
    assert len(b) == len(a)
    for x, y in zip(a, b):
      np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  # Both passes ran: alpha and the weights moved.
  assert not np.allclose(results[1][1]["normal"], alpha0["normal"], rtol=0, atol=1e-6)


# A `dnas search` whose run_search compiles a small search step instead and reports the buffer
# plan XLA made for it: what the command's flags do to the search step.
_SEARCH_PLAN = """
import json, os, sys
import jax
from dnas import cli, search, train_lib
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from conftest import small_search


def plan(config, workdir):
  model, strategy, weight_tx, arch_tx, bt, bv = small_search()  # JAX starts here
  state = jax.eval_shape(lambda k: search.init_search_state(
      model, strategy, weight_tx, arch_tx, k, bt["image"]), jax.random.key(0))
  step = search.make_search_step(model, strategy, weight_tx, arch_tx)
  compiled = step.lower(state, bt, bv).compile()
  print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}))
  return {}


train_lib.run_search = plan
cli.run(["dnas", "search", "--config", sys.argv[2], "--workdir", sys.argv[3]])
"""


def _search_plan(tmp_path, xla_flags):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  tests = os.path.dirname(os.path.abspath(__file__))
  config = os.path.join(os.path.dirname(tests), "experiments", "darts_cifar10.py")
  r = subprocess.run([sys.executable, "-c", _SEARCH_PLAN, os.path.join(tests, "conftest.py"),
                      f"{config}:smoke", str(tmp_path)],
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_dnas_search_schedules_for_memory_unless_told_otherwise(tmp_path):
  """``dnas search`` turns XLA's concurrency-optimised CPU scheduler off, which shrinks the
  search step's buffer plan; an ``XLA_FLAGS`` that names the option keeps the user's value."""
  default = _search_plan(tmp_path, None)
  concurrent = _search_plan(tmp_path, "--xla_cpu_enable_concurrency_optimized_scheduler=true")
  no_triton = "--xla_gpu_enable_triton_gemm=false"  # every compiling command sets it (GPUs)
  assert default["xla_flags"] == (
      f"--xla_cpu_enable_concurrency_optimized_scheduler=false {no_triton}")
  assert concurrent["xla_flags"] == (
      f"--xla_cpu_enable_concurrency_optimized_scheduler=true {no_triton}")
  assert default["temp_bytes"] < concurrent["temp_bytes"]


def test_low_memory_schedule_leaves_started_backends_alone(monkeypatch):
  jax.devices()  # XLA has read its flags: changing them now would only change cache keys
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert not compiler.low_memory_schedule()
  assert not compiler.no_triton_gemm()
  assert "XLA_FLAGS" not in os.environ


# A script that calls run_search / run_train itself (not through the `dnas` command).
_SCRIPT_FLAGS = """
import json, os, sys
from dnas import train_lib
c = train_lib.load_config(sys.argv[1], "smoke")
c.data.path = os.path.join(sys.argv[2], "missing.tar.gz")  # fails once the run starts loading
if sys.argv[3] == "started":
  import jax
  jax.devices()
try:
  train_lib.run_search(c, os.path.join(sys.argv[2], "run"))
except Exception as e:  # the missing archive
  error = type(e).__name__
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""), "error": error}))
"""


@pytest.mark.parametrize("when", ["fresh", "started"])
def test_run_search_sets_the_process_flags_before_jax_starts(tmp_path, when):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  tests = os.path.dirname(os.path.abspath(__file__))
  config = os.path.join(os.path.dirname(tests), "experiments", "darts_cifar10.py")
  r = subprocess.run([sys.executable, "-c", _SCRIPT_FLAGS, config, str(tmp_path), when],
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["error"] == "DataError"
  if when == "fresh":
    assert out["xla_flags"] == ("--xla_cpu_enable_concurrency_optimized_scheduler=false "
                                "--xla_gpu_enable_triton_gemm=false")
  else:  # XLA has read its flags: run_search leaves them alone
    assert out["xla_flags"] == ""
