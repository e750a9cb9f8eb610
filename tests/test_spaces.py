"""Supernets: parameter counts against the reference, alpha kept apart, user op sets."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnas.ops import layers, registry
from dnas.rng import fast_init_key
from dnas.ops.sets import OpSet
from dnas.spaces import DartsSearchNet, NB201SearchNet
from dnas.spaces import darts as darts_space


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _shapes(model, hw=32):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, hw, hw, 3)),
                                           train=True))


def test_darts_supernet_parameter_count_matches_reference():
  # Measured on the reference PyTorch search model (C=16, 8 cells, 10 classes).
  v = _shapes(DartsSearchNet())
  assert _count(v["params"]) == 1_930_618
  # The default layout runs a normal cell's input edges in its node scan; the other layout
  # (one vmapped group for them) holds the same weights.
  assert "edges" in v["params"]["cell0"] and "edges" not in v["params"]["cell2"]
  grouped = _shapes(DartsSearchNet(scan_inputs=False, pack=False))
  assert _count(grouped["params"]) == 1_930_618
  assert "edges_from_inputs" in grouped["params"]["cell0"]
  assert {k: x.shape for k, x in v["arch"].items()} == {"normal": (14, 8), "reduce": (14, 8)}
  assert _count(v["arch"]) == 2 * 14 * 8


def test_reductions_at_thirds():
  assert darts_space.reduction_layers(8) == (2, 5)
  assert darts_space.reduction_layers(20) == (6, 13)


def test_alpha_initialisation_scale():
  # Parameter-free ops keep the init cheap; alpha's shape does not depend on the ops' cost.
  model = DartsSearchNet(channels=4, layers=3, op_set=OpSet("cheap", ("none", "skip_connect")))
  v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(v["arch"])])
  assert 0.5e-3 < a.std() < 1.5e-3 and abs(a.mean()) < 5e-4


def test_nb201_supernet_builds_and_has_one_alpha():
  v = _shapes(NB201SearchNet())
  assert {k: x.shape for k, x in v["arch"].items()} == {"cell": (6, 5)}
  # An explicit count of the NB201 supernet's weights (C=16, N=5, affine-free cell BN):
  # stem conv 3*3*3*16 + BN 2*16; per cell at C: 6 edges x (1x1 C*C + 3x3 9*C*C);
  # reduction blocks: conv_a 9*Ci*Co + 2Co, conv_b 9*Co*Co + 2Co, shortcut Ci*Co;
  # last BN 2*64; classifier 64*10 + 10.
  def cells(c):
    return 5 * 6 * (c * c + 9 * c * c)

  def block(ci, co):
    return 9 * ci * co + 2 * co + 9 * co * co + 2 * co + ci * co

  want = (27 * 16 + 32 + cells(16) + block(16, 32) + cells(32) + block(32, 64) + cells(64)
          + 128 + 64 * 10 + 10)
  assert _count(v["params"]) == want


def test_forward_shapes_and_eval_mode():
  model = DartsSearchNet(channels=4, layers=3, nodes=2, multiplier=2, num_classes=7)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  v = jax.jit(model.init)(fast_init_key(jax.random.key(1)), x)
  logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  assert logits.shape == (2, 7)
  logits_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  assert logits_eval.shape == (2, 7) and np.all(np.isfinite(logits_eval))


class _Negate(nn.Module):

  def __call__(self, x, train):
    return -x


def test_user_op_set_and_node_count_need_no_library_edits():
  with registry.temporary("negate", lambda c, s: _Negate() if s == 1 else
                          layers.FactorizedReduce(c)):
    op_set = OpSet("mine", ("none", "negate", "nor_conv_3x3"))
    model = DartsSearchNet(channels=4, layers=3, nodes=3, multiplier=2, op_set=op_set)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    v = jax.jit(model.init)(jax.random.key(1), x)
    assert v["arch"]["normal"].shape == (2 + 3 + 4, 3)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        v, x)
    assert logits.shape == (2, 10)


def _unstack_stages(tree, n):
  """Scanned NB201 variables (``stageS_cells/cell`` stacked over cells) -> unrolled names."""
  out = {}
  for name, sub in tree.items():
    if name.endswith("_cells"):
      stage = name[:-len("_cells")]
      for i in range(n):
        out[f"{stage}_cell{i}"] = jax.tree.map(lambda a, i=i: a[i], sub["cell"])
    else:
      out[name] = sub
  return out


def test_nb201_scanned_stages_equal_unrolled_cells():
  kw = dict(num_classes=3, channels=4, cells_per_stage=2)
  scanned, unrolled = NB201SearchNet(**kw), NB201SearchNet(scan_cells=False, **kw)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  w = {"cell": jax.nn.softmax(jax.random.normal(jax.random.key(1), (6, 5)), -1)}
  v = jax.jit(scanned.init)(fast_init_key(jax.random.key(2)), x)
  # Each scanned cell has its own weights (stacked, not shared).
  kernel = jax.tree.leaves(v["params"]["stage0_cells"])[0]
  assert kernel.shape[0] == 2 and not np.allclose(kernel[0], kernel[1])
  v2 = {k: _unstack_stages(v[k], 2) for k in ("params", "batch_stats")}
  assert _count(v2["params"]) == _count(jax.eval_shape(unrolled.init, jax.random.key(2),
                                                       x)["params"])
  apply = lambda m, v: m.apply(v, x, w, train=True, mutable=["batch_stats"])
  got, got_stats = jax.jit(lambda v: apply(scanned, v))(v)
  want, want_stats = jax.jit(lambda v: apply(unrolled, v))(v2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(_unstack_stages(got_stats["batch_stats"], 2)),
                  jax.tree.leaves(want_stats["batch_stats"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nb201_supernet_has_no_grouped_convolution(monkeypatch):
  """Edges reading one shared input vmap only their weights: XLA sees dense convolutions with
  the edges' channels side by side, not grouped ones over stacked copies of the input (slow on
  the CPU). Checked on the native convolution (the CPU default, im2col, has none at all)."""
  monkeypatch.setenv("DNAS_DENSE_CONV", "conv")
  model = NB201SearchNet(channels=4, cells_per_stage=1)
  x = jnp.zeros((2, 8, 8, 3))
  v = _shapes(model, hw=8)
  fwd = lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]  # noqa: E731
  hlo = jax.jit(fwd).lower(v, x).as_text()
  assert hlo.count("stablehlo.convolution") >= 2
  groups = [int(g) for g in re.findall(r"feature_group_count = (\d+)", hlo)]
  assert groups and all(g == 1 for g in groups), groups
