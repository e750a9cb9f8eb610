"""NB201 costs (dnas.costs): exact MAC counts, additive tables, dnas info's flops, the cache."""

import importlib.util
import os
import random

import jax
import jax.numpy as jnp
import numpy as np

from dnas import cli, costs, eval_net
from dnas.genotypes import NB201Genotype

_CONV3 = "nor_conv_3x3"


def _count(arch):
  return eval_net.param_count(eval_net.NB201Network(arch, 10, 16, 5), (1, 32, 32, 3))


def test_count_macs_formulas():
  a, b = jnp.ones((2, 3)), jnp.ones((3, 4))
  assert costs.count_macs(lambda a, b: a @ b, a, b) == 2 * 3 * 4
  # Batched contraction: 5 x (2x3 @ 3x4).
  assert costs.count_macs(lambda a, b: jnp.einsum("nij,njk->nik", a, b),
                          jnp.ones((5, 2, 3)), jnp.ones((5, 3, 4))) == 5 * 24
  x, w = jnp.ones((1, 5, 5, 4)), jnp.ones((3, 3, 2, 6))  # 2 groups of 2 input channels
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
  assert costs.count_macs(conv, x, w) == (5 * 5 * 6) * 2 * 3 * 3
  # Nested jit and a scan of length 3 around the product; elementwise work counts nothing.
  body = lambda c, _: (c, jax.jit(lambda a, b: jnp.tanh(a @ b) + 1)(a, b))
  assert costs.count_macs(lambda c: jax.lax.scan(body, c, None, length=3)[1], a) == 3 * 24


def test_macs_do_not_depend_on_the_conv_implementation(monkeypatch):
  arch = costs._arch([_CONV3, "nor_conv_1x1", "avg_pool_3x3", _CONV3, "none", "skip_connect"])
  got = []
  for impl in ("conv", "im2col"):
    monkeypatch.setenv("DNAS_DENSE_CONV", impl)
    got.append(costs.network_macs(arch, 4, 1))
  assert got[0] == got[1] > 0


def test_macs_exactly_additive_on_random_cells():
  rng = random.Random(0)
  base, per_edge = costs._mac_table(4, 1)
  assert per_edge[:, 0].sum() == 0  # none
  for _ in range(4):
    arch = costs._arch([rng.choice(costs.NB201_OPS) for _ in range(6)])
    assert costs.nb201_cost(arch, 4, 1)["macs"] == costs.network_macs(arch, 4, 1), arch
  # An edge whose output never reaches the cell's output counts too (node 1 is unused here).
  dead = costs._arch([_CONV3, "none", "none", "none", "none", "none"])
  assert costs.network_macs(dead, 4, 1) == base + per_edge[0, costs.NB201_OPS.index(_CONV3)]


def test_macs_extremes_match_nas_bench_201_flops():
  # NAS-Bench-201 reports FLOPs = conv and linear MACs + the classifier's 10 bias additions:
  # 7.78M (no convolutions in the cell) to 220.11M (all nor_conv_3x3, 220.1197M truncated).
  low = costs.network_macs(costs._uniform("none"))
  high = costs.network_macs(costs._uniform(_CONV3))
  assert low == 7_783_040 and high == 220_119_680
  assert round((low + 10) / 1e6, 2) == 7.78 and int((high + 10) / 1e4) / 100 == 220.11
  assert costs.network_macs(costs._uniform("avg_pool_3x3")) == low


def test_network_cost_equals_dnas_info():
  path = os.path.join(os.path.dirname(__file__), "..", "experiments", "train_cifar10.py")
  spec = importlib.util.spec_from_file_location("train_cifar10_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("nb201")
  cfg.model.channels, cfg.model.layers = 4, 1
  arch = costs._arch([_CONV3, "skip_connect", "nor_conv_1x1", "none", "avg_pool_3x3", _CONV3])
  info = cli._info(cfg, arch)
  assert costs.network_cost(arch, 4, 1) == {"params": info["n_params"],
                                            "xla_flops": info["flops"]}


def test_params_additive_on_random_cells():
  rng = random.Random(0)
  for _ in range(3):
    arch = costs._arch([rng.choice(costs.NB201_OPS) for _ in range(6)])
    base, per_edge = costs._param_table(16, 5)
    ops = NB201Genotype.from_arch(arch).ops
    assert base + sum(per_edge[op] for op in ops) == _count(arch), arch


def test_param_extremes_match_published_range():
  # NAS-Bench-201 (Dong & Yang, 2020): 0.073M to 1.531M parameters on CIFAR-10 (truncated).
  assert _count(costs._uniform("none")) == 73_306
  assert _count(costs._uniform(_CONV3)) == 1_531_546


def _fake_table(tmp_path, monkeypatch, calls):
  d = tmp_path / "nb"
  d.mkdir()
  (d / "nb201_hp12.csv").write_text(
      "index,arch,cifar10_valid\n0,|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10\n"
      "1,|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|,11\n")
  monkeypatch.setattr(costs, "nb201_cost",
                      lambda a: calls.append(a) or {"params": len(a), "macs": 2 * len(a)})
  return str(d)


def test_cache_reused_and_invalidated_by_source_hash(tmp_path, monkeypatch):
  calls = []
  nb = _fake_table(tmp_path, monkeypatch, calls)
  cache = str(tmp_path / "cache")
  monkeypatch.setattr(costs, "source_hash", lambda: "aaaa")
  t1 = costs.nb201_cost_table(nb, cache)
  assert len(calls) == 2 and list(t1["index"]) == [0, 1]
  t2 = costs.nb201_cost_table(nb, cache)
  assert len(calls) == 2  # read back, not recomputed
  np.testing.assert_array_equal(t1["macs"], t2["macs"])
  monkeypatch.setattr(costs, "source_hash", lambda: "bbbb")
  costs.nb201_cost_table(nb, cache)
  assert len(calls) == 4
  assert sorted(os.listdir(cache)) == ["nb201_costs-aaaa.npz", "nb201_costs-bbbb.npz"]


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
  nb = _fake_table(tmp_path, monkeypatch, [])
  cache = str(tmp_path / "cache")
  replaced = []

  def boom(src, dst):
    replaced.append((src, dst))
    raise OSError("disk full")

  monkeypatch.setattr(costs.os, "replace", boom)
  try:
    costs.nb201_cost_table(nb, cache)
  except OSError:
    pass
  assert replaced and os.path.dirname(replaced[0][0]) == cache  # temp file in the same folder
  assert os.listdir(cache) == []


def test_source_hash_tracks_sources():
  assert len(costs.source_hash()) == 16 and costs.source_hash() == costs.source_hash()
