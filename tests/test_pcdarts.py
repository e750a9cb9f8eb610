"""PC-DARTS: partial channel connections (the supernet) and edge normalisation (the strategy)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dnas import cli
from dnas.ops.sets import OpSet
from dnas.spaces import cell as cell_lib
from dnas.spaces.darts import DartsSearchNet
from dnas.spaces.nb201 import NB201SearchNet
from dnas.strategies import base, pcdarts as pcdarts_lib, registry
from dnas.strategies.base import BilevelProblem
from dnas.strategies.darts import darts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "nb201_pcdarts_cifar10.py")
SKIP = OpSet("skip", ("none", "skip_connect"))
CONV = OpSet("conv", ("none", "skip_connect", "nor_conv_1x1"))


def _shuffle_by_hand(x, groups):
  """``out[..., i * groups + g] = x[..., g * (C // groups) + i]``, written out as a loop."""
  c = x.shape[-1]
  perm = [None] * c
  for g in range(groups):
    for i in range(c // groups):
      perm[i * groups + g] = g * (c // groups) + i
  return np.asarray(x)[..., perm]


def _edge_by_hand(x, w, groups, ops_part):
  """PC-DARTS' reference edge, ``shuffle(concat(ops(x[:C/K]), x[C/K:]))``, times ``sum(w)``:
  the supernet's form, where the bypass is scaled by the edge's total op weight."""
  cp = x.shape[-1] // groups
  mixed = ops_part(np.asarray(x)[..., :cp])
  bypass = float(np.sum(w)) * np.asarray(x)[..., cp:]
  return _shuffle_by_hand(np.concatenate([mixed, bypass], -1), groups)


def _apply_cell(cell, x, weights, key=0):
  variables = cell.init(jax.random.key(key), [x], weights)
  out, _ = cell.apply(variables, [x], weights, mutable=["batch_stats"])
  return variables, out


def test_channel_shuffle_is_the_hand_written_permutation():
  x = jnp.arange(6.0)
  # Two groups [0 1 2 | 3 4 5] interleaved.
  np.testing.assert_array_equal(cell_lib.channel_shuffle(x, 2), [0, 3, 1, 4, 2, 5])
  y = jax.random.normal(jax.random.key(0), (2, 3, 3, 8))
  for groups in (1, 2, 4, 8):
    np.testing.assert_array_equal(cell_lib.channel_shuffle(y, groups),
                                  _shuffle_by_hand(y, groups))
  with pytest.raises(ValueError, match="groups"):
    cell_lib.channel_shuffle(y, 3)


def test_partial_edge_is_the_hand_computation_ops_see_a_quarter_the_rest_bypasses():
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8))
  cell = cell_lib.SearchCell(CONV, 8, n_inputs=1, n_nodes=1, partial_channels=4)
  for w in ([0.2, 0.3, 0.5], [0.1, 0.2, 0.3]):  # rows summing to 1, and to an edge weight 0.6
    weights = jnp.asarray([w])
    variables, (out,) = _apply_cell(cell, x, weights)
    (kernel,) = [v for p, v in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
                 if "nor_conv_1x1" in jax.tree_util.keystr(p)]
    assert kernel.shape == (1, 1, 1, 2, 2)  # [edges, kh, kw, C/4, C/4]: ops built for C/4

    def ops_part(xa):
      y = np.einsum("bhwc,cd->bhwd", np.maximum(xa, 0), np.asarray(kernel[0, 0, 0]))
      y = (y - y.mean((0, 1, 2))) / np.sqrt(y.var((0, 1, 2)) + 1e-5)  # BN, batch statistics
      return w[1] * xa + w[2] * y

    np.testing.assert_allclose(out, _edge_by_hand(x, w, 4, ops_part), rtol=1e-5, atol=1e-5)

  # The ops never see the last 3/4 of the channels, and those reach the output unchanged when
  # only `none` weighs.
  weights = jnp.asarray([[1.0, 0.0, 0.0]])
  _, (out,) = _apply_cell(cell, x, weights)
  expect = _shuffle_by_hand(np.concatenate([np.zeros((2, 4, 4, 2)), x[..., 2:]], -1), 4)
  np.testing.assert_array_equal(out, expect)
  weights = jnp.asarray([[0.0, 0.0, 1.0]])
  _, (a,) = _apply_cell(cell, x, weights)
  _, (b,) = _apply_cell(cell, x.at[..., 2:].add(5.0), weights)
  ops_channels = [i * 4 for i in range(2)]  # where the shuffle puts the ops' two channels
  np.testing.assert_array_equal(a[..., ops_channels], b[..., ops_channels])


def test_reduction_edge_max_pools_the_bypassed_channels():
  x = jax.random.normal(jax.random.key(2), (1, 4, 4, 4))
  edges = cell_lib.MixedEdges(SKIP, 4, 2, shared_input=True, partial_channels=2)
  mix = jnp.asarray([[1.0, 0.0]])[:, :, None]  # one edge, routed to one destination
  variables = edges.init(jax.random.key(0), x, mix)
  (out,), _ = edges.apply(variables, x, mix, mutable=["batch_stats"])
  pooled = np.asarray(x)[..., 2:].reshape(1, 2, 2, 2, 2, 2).max(axis=(2, 4))
  expect = _shuffle_by_hand(np.concatenate([np.zeros((1, 2, 2, 2)), pooled], -1), 2)
  np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("layout", [dict(), dict(pack=True), dict(scan_inputs=True),
                                    dict(scan_nodes=False)], ids=str)
def test_cell_of_partial_edges_every_layout(layout):
  """Three edges (``1<-0, 2<-0, 2<-1``), the edges between nodes in the scan or unrolled."""
  x = jax.random.normal(jax.random.key(3), (2, 3, 3, 6))
  w = np.asarray([[0.3, 0.7], [0.1, 0.4], [0.5, 0.25]])
  cell = cell_lib.SearchCell(SKIP, 6, n_inputs=1, n_nodes=2, partial_channels=3, **layout)
  _, (n1, n2) = _apply_cell(cell, x, jnp.asarray(w))
  edge = lambda x, we: _edge_by_hand(x, we, 3, lambda xa: we[1] * xa)
  h1 = edge(x, w[0])
  np.testing.assert_allclose(n1, h1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(n2, edge(x, w[1]) + edge(h1, w[2]), rtol=1e-6, atol=1e-6)


def test_partial_channels_refuse_what_they_cannot_run():
  x = jnp.ones((1, 2, 2, 6))
  with pytest.raises(ValueError, match="dividing"):
    cell_lib.SearchCell(SKIP, 6, 1, 1, partial_channels=4).init(jax.random.key(0), [x],
                                                                jnp.ones((1, 2)))


def test_partial_channel_cell_has_the_hand_counted_weights():
  """NB201 cell, C=8: per edge nor_conv_1x1 C*C and nor_conv_3x3 9*C*C weights (BN without
  affine), 6 edges: 6 * 10 * 64 = 3840; with K=4 the ops have C/4=2 channels: 6 * 10 * 4."""
  from dnas.ops.sets import NB201  # pylint: disable=g-import-not-at-top
  x = jnp.ones((1, 4, 4, 8))
  count = {}
  for k in (1, 4):
    cell = cell_lib.SearchCell(NB201, 8, n_inputs=1, n_nodes=3, partial_channels=k)
    shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), [x], jnp.ones((6, 5))))
    count[k] = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
  assert count == {1: 3840, 4: 240}


def test_edge_normalised_node_is_the_weighted_sum_of_its_edges():
  """node_2 = softmax(beta_2)_0 * edge(x_0) + softmax(beta_2)_1 * edge(x_1), each edge the
  reference's ``shuffle(concat(sum_k softmax(alpha)_k op_k(x[:C/K]), x[C/K:]))``."""
  alpha = jnp.asarray([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.4]])
  beta = (jnp.asarray([0.9]), jnp.asarray([0.8, -0.6]))
  arch = {"cell": {"alpha": alpha, "beta": beta}}
  w = pcdarts_lib.pcdarts_mix(arch)["cell"]
  sa = np.exp(alpha) / np.exp(alpha).sum(1, keepdims=True)
  sb = np.exp(beta[1]) / np.exp(beta[1]).sum()
  np.testing.assert_allclose(w, sa * np.asarray([1.0, sb[0], sb[1]])[:, None], rtol=1e-6)

  x = jax.random.normal(jax.random.key(4), (2, 3, 3, 4))
  cell = cell_lib.SearchCell(SKIP, 4, n_inputs=1, n_nodes=2, partial_channels=2)
  _, (n1, n2) = _apply_cell(cell, x, w)

  def edge(x, a):  # the reference's MixedOp: the bypass unscaled
    return _edge_by_hand(x, [1.0], 2, lambda xa: a[1] * xa)

  h1 = 1.0 * edge(x, sa[0])  # a node with one edge: softmax over one beta is 1
  np.testing.assert_allclose(n1, h1, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(n2, sb[0] * edge(x, sa[1]) + sb[1] * edge(h1, sa[2]), rtol=1e-5,
                             atol=1e-6)


def test_darts_genotype_ranks_edges_by_the_product_weights():
  ops = OpSet("g", ("none", "skip_connect", "sep_conv_3x3"))
  model = DartsSearchNet(channels=4, layers=3, nodes=2, multiplier=2, op_set=ops, edge_norm=True)
  # Node 0: edges from inputs 0, 1; node 1: from inputs 0, 1 and node 0. By alpha alone node 1
  # keeps its edges 0 and 1 (0.6 > 0.5 > 0.46); beta weighs its edge 2 up and edge 1 down.
  alpha = jnp.log(jnp.asarray([[0.1, 0.2, 0.7], [0.1, 0.6, 0.3],
                               [0.1, 0.3, 0.6], [0.1, 0.5, 0.4], [0.1, 0.46, 0.44]]))
  beta = (jnp.zeros(2), jnp.log(jnp.asarray([0.3, 0.2, 0.5])))
  arch = {k: {"alpha": alpha, "beta": beta} for k in ("normal", "reduce")}
  strategy = pcdarts_lib.pcdarts()
  g = model.genotype(base.derive_weights(strategy, arch, strategy.init(arch)))
  # Node 0 (beta even): 0.35 > 0.3, both kept. Node 1: edge 0: 0.3 * 0.6 = 0.18, edge 1:
  # 0.2 * 0.5 = 0.10, edge 2: 0.5 * 0.46 = 0.23: edges 2 and 0, each with its strongest op.
  expect = (("sep_conv_3x3", 0), ("skip_connect", 1), ("skip_connect", 2), ("sep_conv_3x3", 0))
  assert g.normal == g.reduce == expect
  plain = model.genotype({k: jax.nn.softmax(a["alpha"]) for k, a in arch.items()})
  assert [src for _, src in plain.normal[2:]] == [0, 1]  # alpha alone keeps edges 0 and 1


def _toy_problem():
  """A bilevel problem whose loss reads the op weights directly: ``params["m"]`` is ``[E, K]``."""
  def loss_fn(params, op_weights, batch):
    w = op_weights["cell"]
    loss = jnp.sum(batch["a"] * (params["m"] - w) ** 2) + jnp.sum(batch["b"] * params["m"] * w)
    return loss, (None, loss[None])

  k = jax.random.split(jax.random.key(5), 5)
  params = {"m": jax.random.normal(k[0], (3, 2))}
  bt = {"a": jax.random.uniform(k[1], (3, 2)), "b": jax.random.normal(k[2], (3, 2))}
  bv = {"a": jax.random.uniform(k[3], (3, 2)), "b": jax.random.normal(k[4], (3, 2))}
  tx = optax.sgd(0.1)
  return loss_fn, params, tx, BilevelProblem(loss_fn, tx, tx.init(params), bt, bv)


@pytest.mark.parametrize("order", [1, 2])
def test_arch_gradient_of_alpha_and_beta_is_the_finite_difference(order, x64):
  """First order: d L_val(w, W(alpha, beta)); second: d L_val(w', W) with DARTS' paper step
  ``w' = w - xi (g + lambda w)`` (no momentum buffer), both by central differences in float64."""
  del x64
  loss_fn, params, _, problem = _toy_problem()
  params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
  arch = {"cell": {"alpha": jnp.asarray([[0.2, -0.1], [0.4, 0.3], [-0.5, 0.1]]),
                   "beta": (jnp.asarray([0.3]), jnp.asarray([0.1, -0.4]))}}
  xi, lam = 0.1, 3e-4
  strategy = pcdarts_lib.pcdarts(order=order, learning_rate=xi, momentum=0.9,
                                 weight_decay=lam)
  g, aux = strategy.arch_grad(problem, params, arch, (), None)

  def objective(a):
    w = pcdarts_lib.pcdarts_mix(a)
    p = params
    if order == 2:
      grad = jax.grad(lambda p: loss_fn(p, w, problem.batch_train)[0])(params)
      p = jax.tree.map(lambda q, d: q - xi * (d + lam * q), params, grad)
    return loss_fn(p, w, problem.batch_val)[0]

  leaves, tree = jax.tree.flatten(arch)
  fd = []
  for i, leaf in enumerate(leaves):
    flat = np.zeros(leaf.size)
    for j in range(leaf.size):
      def at(s):
        moved = list(leaves)
        moved[i] = (np.asarray(leaf).reshape(-1) + s * 1e-6 * (np.arange(leaf.size) == j)
                    ).reshape(leaf.shape)
        return float(objective(jax.tree.unflatten(tree, moved)))
      flat[j] = (at(1) - at(-1)) / 2e-6
    fd.append(flat.reshape(leaf.shape))
  for got, want in zip(jax.tree.leaves(g), fd):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(aux["val_loss"], objective(arch), rtol=1e-12)


def test_strategy_needs_the_edge_weights_and_warms_up():
  with pytest.raises(ValueError, match="model.edge_norm=True"):
    pcdarts_lib.pcdarts().init({"cell": jnp.zeros((6, 5))})
  context = registry.StrategyContext(0.025, 0.9, 3e-4, total_steps=100, steps_per_epoch=10)
  strategy = registry.build("pcdarts", {"arch_warmup_epochs": 2}, context)
  assert [bool(strategy.arch_active((), s)) for s in (0, 19, 20)] == [False, False, True]
  assert registry.build("pcdarts", {}, context).arch_active is None
  with pytest.raises(ValueError, match="arch_warmup_epochs"):
    registry.build("pcdarts", {"arch_warmup_epochs": -1}, context)


def test_supernet_makes_beta_per_node_and_other_strategies_are_refused():
  model = NB201SearchNet(channels=4, cells_per_stage=1, partial_channels=4, edge_norm=True)
  x = jnp.ones((1, 8, 8, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  assert jax.tree.map(lambda a: a.shape, shapes["arch"]) == {
      "cell": {"alpha": (6, 5), "beta": ((1,), (2,), (3,))}}
  with pytest.raises(TypeError, match="pcdarts"):  # DARTS' softmax of {"alpha", "beta"}
    jax.eval_shape(lambda v: model.apply(
        {"params": v["params"], "batch_stats": v["batch_stats"]}, x,
        darts().mix(v["arch"], (), None), train=False), shapes)


def test_a_stopped_search_resumes_with_its_betas_bit_for_bit(cifar10_archive, tmp_path, caches,
                                                             fast_compile):
  """The smoke search stopped mid-epoch and run again ends where an uninterrupted one does: the
  checkpoint holds the nested edge betas (``{"alpha", "beta": (...)}``) and restores them."""
  from dnas import checkpoints, train_lib  # pylint: disable=g-import-not-at-top
  c = train_lib.load_config(CONFIG, "smoke")
  c.update_from_flattened_dict({
      "data.path": cifar10_archive, "data.cache_dir": str(caches / "data"),
      "compilation_cache_dir": str(caches / "jax"), "data.train_size": 64})
  ref, work = tmp_path / "ref", tmp_path / "run"
  full = train_lib.run_search(c, str(ref))
  assert train_lib.run_search(c, str(work), stop_after_steps=3)["stopped"]
  assert sorted(checkpoints.read(str(work))["arch"]["cell"]) == ["alpha", "beta"]
  assert train_lib.run_search(c, str(work))["genotype"] == full["genotype"]
  a, b = checkpoints.read(str(work)), checkpoints.read(str(ref))
  for (where, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(x, y), jax.tree_util.keystr(where)
  assert (work / "alpha_history.json").read_bytes() == (ref / "alpha_history.json").read_bytes()
  history = json.loads((work / "alpha_history.json").read_text())["epochs"]["cell"]
  # The product weights' rows sum to the edge weights: node 1's one edge weighs 1.
  assert np.allclose(np.sum(history[-1], axis=-1)[0], 1.0, atol=1e-5)


def test_config_values_the_supernet_cannot_build_name_the_key():
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  for key, value, needle in (("model.partial_channels", 3, "config.model.partial_channels"),
                             ("model.edge_norm", 1, "config.model.edge_norm")):
    c = train_lib.load_config(CONFIG, "smoke")
    section, name = key.split(".")
    del c[section][name]  # a value of another type than the config's
    c[section][name] = value
    with pytest.raises(train_lib.ConfigError, match=needle):
      train_lib.validate_search_config(c)


def test_info_names_the_edge_betas(capsys):
  assert cli.run(["dnas", "info", "--config", CONFIG, "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["arch_shapes"] == {"cell.alpha": [6, 5], "cell.beta.0": [1], "cell.beta.1": [2],
                                 "cell.beta.2": [3]}
  assert info["n_arch_params"] == 36
