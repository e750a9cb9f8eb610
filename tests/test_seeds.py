"""``search.num_seeds``: K searches as one vmapped program, each equal to its own run.

On the real CIFAR-10 archive, a tiny NAS-Bench-201 search (two nodes, three parameter-free
ops, 64 images, 2 epochs of 2 steps) runs for seeds 0 and 1 on its own and as one run of two
seeds; each seed's folder must hold what its own run wrote. A two-seed run stopped after 3 steps
and run again must end where the uninterrupted one ends, bit for bit.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from dnas import checkpoints, genotypes, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "nb201_darts_cifar10.py")
SPOS_CONFIG = os.path.join(REPO, "experiments", "nb201_spos_cifar10.py")
# Timings: the only values a rerun of the same computation may change.
TIMING_KEYS = ("images_per_s", "eval_s")


def _config(archive, caches, path=CONFIG):
  c = train_lib.load_config(path, "smoke")
  c.update_from_flattened_dict({
      "data.path": archive, "data.cache_dir": str(caches / "data"),
      "compilation_cache_dir": str(caches / "jax"), "data.train_size": 64,
      "log_every_steps": 1, "checkpoint_every_steps": 3, "xla_cpu_preset": "fast_compile",
      "model.nodes": 2, "model.ops": ("none", "skip_connect", "avg_pool_3x3")})
  c.seed = 0
  return c


@pytest.fixture(scope="module")
def runs(cifar10_archive, caches, tmp_path_factory):
  """Folders of: seeds 0 and 1 on their own, both in one run, and that run stopped and resumed."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)  # a few steps: mostly compilation
  try:
    root = tmp_path_factory.mktemp("seeds")
    out = {}
    for s in (0, 1):
      c = _config(cifar10_archive, caches)
      c.seed = s
      out[s] = train_lib.run_search(c, str(root / f"single_{s}"))
    c = _config(cifar10_archive, caches)
    c.search.num_seeds = 2
    out["both"] = train_lib.run_search(c, str(root / "both"))
    stopped = train_lib.run_search(c, str(root / "resumed"), stop_after_steps=3)
    assert stopped == {"step": 3, "stopped": True, "signal": None}
    out["resumed"] = train_lib.run_search(c, str(root / "resumed"))
    return root, out
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


def _lines(path):
  with open(path) as f:
    return [json.loads(l) for l in f.read().splitlines()]


def _alpha(folder):
  with open(os.path.join(folder, "alpha_history.json")) as f:
    return json.load(f)


def _state(folder):
  return traverse_util.flatten_dict(checkpoints.read(str(folder)), sep=".")


def test_each_seed_equals_its_own_run(runs):
  root, out = runs
  both = out["both"]
  assert both["step"] == 4 and sorted(both["seeds"]) == [0, 1]
  for s in (0, 1):
    own, mine = root / f"single_{s}", root / "both" / f"seed_{s}"
    assert genotypes.load(str(mine / "genotype.json")).to_json() == out[s]["genotype"]
    assert both["seeds"][s]["genotype"] == out[s]["genotype"]
    assert both["seeds"][s]["val_acc"] == pytest.approx(out[s]["val_acc"], abs=1e-6)
    a, b = _alpha(own), _alpha(mine)
    assert a["ops"] == b["ops"] and sorted(a["epochs"]) == sorted(b["epochs"])
    for k in a["epochs"]:
      assert np.asarray(b["epochs"][k]).shape == (2,) + np.asarray(a["epochs"][k]).shape[1:]
      np.testing.assert_allclose(b["epochs"][k], a["epochs"][k], rtol=0, atol=1e-5)
    for k, v in out[s]["op_weights"].items():
      np.testing.assert_allclose(both["seeds"][s]["op_weights"][k], v, rtol=0, atol=1e-5)
    # Its folder is its own run's: that seed's config, every metrics line, its final state.
    with open(own / "config.json") as f, open(mine / "config.json") as g:
      own_config, my_config = json.load(f), json.load(g)
    assert my_config["search"]["num_seeds"] == own_config["search"]["num_seeds"] == 1
    assert my_config == own_config
    la, lb = _lines(own / "metrics.jsonl"), _lines(mine / "metrics.jsonl")
    assert [sorted(l) for l in la] == [sorted(l) for l in lb]
    for x, y in zip(la, lb):
      for k, v in x.items():
        if k in TIMING_KEYS:
          continue
        if isinstance(v, float):
          assert y[k] == pytest.approx(v, abs=1e-4), (k, x, y)
        else:
          assert y[k] == v, (k, x, y)
    sa, sb = _state(own), _state(mine)
    assert sorted(sa) == sorted(sb)
    for k in sa:
      np.testing.assert_allclose(sb[k], sa[k], rtol=0, atol=1e-5, err_msg=k)
    assert os.path.exists(mine / "plots" / "genotype.png")
  # Each seed has its own data, init and keys: the two searches differ.
  assert _alpha(root / "both" / "seed_0") != _alpha(root / "both" / "seed_1")
  with open(root / "both" / "config.json") as f:
    assert json.load(f)["search"]["num_seeds"] == 2


def test_stopped_and_resumed_equals_uninterrupted(runs):
  root, out = runs
  assert out["resumed"]["step"] == 4
  a, b = root / "both", root / "resumed"
  assert checkpoints.steps(str(b))[-1] == 4
  sa, sb = _state(a), _state(b)
  assert sorted(sa) == sorted(sb)
  for k in sa:
    assert sa[k].shape[0] == 2, k  # the seed axis
    np.testing.assert_array_equal(sb[k], sa[k], err_msg=k)
  for s in (0, 1):
    for name in ("genotype.json", "alpha_history.json"):
      assert (a / f"seed_{s}" / name).read_bytes() == (b / f"seed_{s}" / name).read_bytes()
    drop = lambda lines: [{k: v for k, v in l.items() if k not in TIMING_KEYS} for l in lines]
    assert drop(_lines(b / f"seed_{s}" / "metrics.jsonl")) == drop(
        _lines(a / f"seed_{s}" / "metrics.jsonl"))


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", None])
def test_bad_num_seeds_is_refused_by_name(value, tmp_path, cifar10_archive, caches):
  c = _config(cifar10_archive, caches)
  del c.search["num_seeds"]  # a value of another type than the config's int
  c.search.num_seeds = value
  with pytest.raises(train_lib.ConfigError, match=r"config\.search\.num_seeds: must be"):
    train_lib.run_search(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_strategy_without_alpha_is_refused(tmp_path, cifar10_archive, caches):
  c = _config(cifar10_archive, caches, SPOS_CONFIG)
  c.search.num_seeds = 2
  with pytest.raises(train_lib.ConfigError, match=r"config\.search\.num_seeds: .*learns alpha"):
    train_lib.run_search(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
