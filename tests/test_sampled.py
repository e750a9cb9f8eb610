"""Sampled op weights (``dnas.types.SampledOps``): only the picked op runs on each edge.

The sampled path must equal the dense path with one-hot weights in value (logits, gradients of
the weights), read the same variables, update only the picked ops' BatchNorm statistics, and
give the op weights GDAS' gradient (D-X-Y/AutoDL-Projects ``SearchCell.forward_gdas``):
``<g, op_i(x)>`` for the picked op ``i`` and ``sum(g)`` for every other op.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import compiler
from dnas.ops.sets import DARTS, NB201, OpSet
from dnas.spaces import cell as cell_lib
from dnas.spaces import DartsSearchNet, NB201SearchNet
from dnas.spaces.darts import reduction_layers
from dnas.types import SampledOps

# Every layout flag takes both values in one of these (each supernet costs two compilations);
# the cell tests below run every combination of the cell's flags.
NB201_LAYOUTS = {
    "default": {},  # scan_nodes, pack, remat, scan_cells; no scan_inputs
    "scan_inputs_unpacked_no_remat": {"scan_inputs": True, "pack": False, "remat": False},
    "unrolled_nodes_and_cells": {"scan_nodes": False, "scan_cells": False},
}
# A small DARTS op set: a parameter-free op with BN after it, identity / factorized reduce,
# and a convolution (the full set compiles several times longer for no new code path).
TINY = OpSet("tiny", ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"),
             bn_after=("avg_pool_3x3",))
DARTS_LAYOUTS = {
    "default": {},  # normal cells: one scan from the inputs; reductions: MixedEdges + scan
    "unpacked_no_input_scan": {"scan_inputs": False, "pack": False},
    "darts_ops": {"op_set": DARTS},  # every DARTS op, stride 1 and 2
}


def _model(space, layout):
  if space == "nb201":
    return NB201SearchNet(num_classes=3, channels=4, cells_per_stage=1, **NB201_LAYOUTS[layout])
  return DartsSearchNet(num_classes=3, channels=4, layers=3, nodes=2, multiplier=2,
                        **{"op_set": TINY, **DARTS_LAYOUTS[layout]})


def _random_variables(init, *args):
  """Variables shaped as ``init(*args)`` makes them, drawn at random without compiling ``init``.

  Weights ~ N(0, 0.5^2), running means ~ N(0, 0.1^2), running variances in [0.5, 1.5): the
  statistics differ from their initial values, so a wrongly updated one shows.
  """
  shapes = jax.eval_shape(init, *args)
  rng = np.random.default_rng(0)

  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype)
    scale = 0.1 if name.endswith("['mean']") else 0.5
    return jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _draws(shapes, key):
  """Two draws of op indices per cell type, as dense one-hot weights and as ``SampledOps``.

  The first puts ``none`` on edge 0 (its branch must give zeros); the second zeroes the weights
  of the last edge, as a padding slot's (it must contribute exactly zero).
  """
  draws = []
  for d, k in enumerate(jax.random.split(key, 2)):
    dense, sampled = {}, {}
    for (name, (n_edges, n_ops)), kk in zip(sorted(shapes.items()), jax.random.split(k, 2)):
      index = jax.random.randint(kk, (n_edges,), 0, n_ops)
      if d == 0:
        index = index.at[0].set(0)
      weights = jax.nn.one_hot(index, n_ops)
      if d == 1:
        weights = weights.at[-1].set(0.0)
      dense[name], sampled[name] = weights, SampledOps(index.astype(jnp.int32), weights)
    draws.append((dense, sampled))
  return draws


@functools.lru_cache(maxsize=None)
def _compare(space, layout):
  """Runs the dense one-hot and the sampled path on both draws, each compiled once.

  The weight gradients are taken for the default layouts only (a backward pass triples the
  compile time; the cell tests compare every layout's gradients).

  Returns ``(model, variables, draws, results, sampled_traces)`` with ``results[d][path] =
  (logits, batch_stats, param_grads or None)``, ``path`` ``"dense"`` or ``"sampled"``.
  """
  model = _model(space, layout)
  with_grads = layout == "default"
  kx, ku, kd = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (2, 8, 8, 3))
  variables = _random_variables(functools.partial(model.init, train=True), jax.random.key(0), x)
  upstream = jax.random.normal(ku, (2, 3))
  traces = {"sampled": 0}

  @compiler.jit
  def run(params, batch_stats, op_weights):
    if any(isinstance(w, SampledOps) for w in op_weights.values()):
      traces["sampled"] += 1

    def loss(p):
      logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, op_weights,
                                train=True, mutable=["batch_stats"])
      return jnp.sum(logits * upstream), (logits, upd["batch_stats"])

    if not with_grads:
      return loss(params)[1] + (None,)
    (_, (logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return logits, stats, grads

  draws = _draws(model.arch_shapes(), kd)
  results = []
  for dense, sampled in draws:
    results.append({path: jax.device_get(run(variables["params"], variables["batch_stats"], w))
                    for path, w in (("dense", dense), ("sampled", sampled))})
  return model, variables, draws, results, traces["sampled"]


def _cases():
  return ([("nb201", layout) for layout in NB201_LAYOUTS]
          + [("darts", layout) for layout in DARTS_LAYOUTS])


def _edge_of(n_inputs, n_nodes, scan_nodes, scan_inputs):
  """``{(group name, row in its stack): alpha row}`` for a cell layout."""
  out = {}
  for j in range(n_nodes):
    for s in range(n_inputs + j):
      where = cell_lib.param_location(n_inputs, n_nodes, s, j, scan_nodes, scan_inputs)
      out[where] = cell_lib.edge_index(n_inputs, j, s)
  return out


def _cell_of(model, path):
  """``(cell type, {(group, row): alpha row}, op name, group)`` of a searched-edge variable at
  ``path`` (a tuple of keys), or None for the variables outside the cells' edges."""
  keys = [getattr(k, "key", None) for k in path]
  groups = [i for i, k in enumerate(keys) if isinstance(k, str) and k.startswith("edges")]
  if not groups:
    return None
  g = groups[0]
  if isinstance(model, NB201SearchNet):
    cell_type, n_inputs, scan_inputs = "cell", 1, model.scan_inputs
  else:
    i = next(int(m.group(1)) for k in keys if isinstance(k, str)
             for m in [re.fullmatch(r"cell(\d+)", k)] if m)
    reduction = i in reduction_layers(model.layers)
    cell_type, n_inputs = ("reduce" if reduction else "normal"), 2
    scan_inputs = model.scan_inputs and not reduction
  edges = _edge_of(n_inputs, model.nodes, model.scan_nodes, scan_inputs and model.scan_nodes)
  return cell_type, edges, keys[g + 1], keys[g]


@pytest.mark.parametrize("space,layout", _cases())
def test_sampled_logits_equal_the_dense_path_with_one_hot_weights(space, layout):
  _, _, _, results, _ = _compare(space, layout)
  for r in results:
    # The two paths sum a node's edges in different orders, and XLA's fast_compile preset
    # rounds differently again; BatchNorm over the last stage's 8 values per channel magnifies
    # that to ~1e-4 here (float64: 3e-16). A wrong op or edge moves the logits by ~1.
    np.testing.assert_allclose(r["sampled"][0], r["dense"][0], rtol=5e-4, atol=5e-4)


@pytest.mark.parametrize("space,layout", [("nb201", "default"), ("darts", "default")])
def test_sampled_weight_gradients_equal_the_dense_path(space, layout):
  _, _, _, results, _ = _compare(space, layout)
  for r in results:
    flat_s = jax.tree_util.tree_flatten_with_path(r["sampled"][2])[0]
    flat_d = jax.tree.leaves(r["dense"][2])
    assert len(flat_s) == len(flat_d)
    for (path, gs), gd in zip(flat_s, flat_d):
      scale = max(float(np.max(np.abs(gd))), 1e-3)
      np.testing.assert_allclose(gs, gd, rtol=1e-4, atol=1e-5 * scale,
                                 err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("space,layout", _cases())
def test_train_mode_updates_only_the_picked_ops_statistics(space, layout):
  model, variables, draws, results, _ = _compare(space, layout)
  ops = model.op_set.ops
  for (_, sampled), r in zip(draws, results):
    before = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
    after_s = jax.tree.leaves(r["sampled"][1])
    after_d = jax.tree.leaves(r["dense"][1])
    assert len(before) == len(after_s) == len(after_d)
    changed = 0
    for (path, old), new_s, new_d in zip(before, after_s, after_d):
      where = _cell_of(model, path)
      if where is None:  # stem, reductions, last BN: the same batch in both paths
        np.testing.assert_allclose(new_s, new_d, rtol=1e-5, atol=1e-6)
        continue
      cell_type, edges, op, group = where
      index = np.asarray(sampled[cell_type].index)
      for row in range(old.shape[-2]):
        picked = ops[index[edges[(group, row)]]] == op
        want = new_d[..., row, :] if picked else np.asarray(old)[..., row, :]
        np.testing.assert_allclose(new_s[..., row, :], want, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{jax.tree_util.keystr(path)} row {row}")
        changed += picked
    assert changed > 0  # the check saw picked ops


@pytest.mark.parametrize("space,layout", [("nb201", "default"), ("darts", "default")])
def test_one_compilation_serves_every_sampled_path(space, layout):
  *_, sampled_traces = _compare(space, layout)
  assert sampled_traces == 1  # two draws, one trace


def _explicit_gdas_cell(op_set, variables, inputs, sample, n_inputs, n_nodes, channels,
                        reduction, scan_nodes, scan_inputs):
  """GDAS' ``forward_gdas`` written out: every edge runs its picked op alone, with that edge's
  weights taken from the stacked tree; the other ops add their (zero) weights."""
  params, stats = variables["params"], variables.get("batch_stats", {})
  states = list(inputs)
  for j in range(n_nodes):
    total = 0.0
    for s in range(n_inputs + j):
      e = cell_lib.edge_index(n_inputs, j, s)
      i = int(sample.index[e])
      w = sample.weights[e]
      rest = jnp.sum(w) - w[i]
      op = op_set.ops[i]
      if op == "none":
        y = jnp.zeros_like(states[s][:, ::2, ::2] if reduction and s < n_inputs else states[s])
      else:
        gname, row = cell_lib.param_location(n_inputs, n_nodes, s, j, scan_nodes,
                                             scan_inputs and not reduction)
        v = {c: jax.tree.map(lambda a: a[row], tree[gname][op])
             for c, tree in (("params", params), ("batch_stats", stats))
             if op in tree.get(gname, {})}
        stride = 2 if (reduction and s < n_inputs) else 1
        module = cell_lib._EdgeOp(op, channels, stride, False, op in op_set.bn_after, True)
        y, _ = module.apply(v, states[s], mutable=["batch_stats"])
      total = total + w[i] * y + rest
    states.append(total)
  return states[n_inputs:]


CELL_LAYOUTS = [(True, False, False), (False, False, False), (True, True, False),
                (True, False, True), (True, True, True)]  # (scan_nodes, scan_inputs, pack)


@pytest.mark.parametrize("op_set,n_inputs,n_nodes,reduction", [
    (NB201, 1, 3, False), (TINY, 2, 3, True)])
@pytest.mark.parametrize("scan_nodes,scan_inputs,pack", CELL_LAYOUTS)
def test_sampled_cell_equals_explicit_gdas_forward_and_gradients(op_set, n_inputs, n_nodes,
                                                                 reduction, scan_nodes,
                                                                 scan_inputs, pack):
  c = 4
  cell = cell_lib.SearchCell(op_set, c, n_inputs, n_nodes, reduction=reduction,
                             scan_nodes=scan_nodes, scan_inputs=scan_inputs, pack=pack)
  k = jax.random.split(jax.random.key(3), n_inputs + 3)
  inputs = [jax.random.normal(k[i], (2, 6, 6, c)) for i in range(n_inputs)]
  n_edges, n_ops = cell_lib.edge_count(n_inputs, n_nodes), len(op_set.ops)
  variables = _random_variables(cell.init, k[-3], inputs, jnp.ones((n_edges, n_ops)) / n_ops)
  index = jax.random.randint(k[-2], (n_edges,), 0, n_ops).at[0].set(0).astype(jnp.int32)
  weights = jax.nn.one_hot(index, n_ops)
  upstream = [jax.random.normal(kk, (2, 3 if reduction else 6, 3 if reduction else 6, c))
              for kk in jax.random.split(k[-1], n_nodes)]

  def loss(fn, params, w, x):
    nodes = fn({**variables, "params": params}, SampledOps(index, w), x)
    return sum(jnp.sum(n * u) for n, u in zip(nodes, upstream)), nodes

  run = lambda v, s, x: cell.apply(v, x, s, mutable=["batch_stats"])[0]
  explicit = lambda v, s, x: _explicit_gdas_cell(op_set, v, x, s, n_inputs, n_nodes, c,
                                                 reduction, scan_nodes, scan_inputs)
  grad = lambda fn: jax.value_and_grad(functools.partial(loss, fn), argnums=(0, 1, 2),
                                       has_aux=True)
  (_, got), g_got = compiler.jit(grad(run))(variables["params"], weights, inputs)
  (_, want), g_want = grad(explicit)(variables["params"], weights, inputs)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Alpha's weights, every edge's op weights and the cell inputs' gradients.
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scan_inputs", [False, True])  # MixedEdges, NodeEdges
def test_op_weight_gradient_is_gdas_straight_through_by_hand(scan_inputs):
  # One edge: its output is the node. d loss / d w[k] = sum(g) for k != i, <g, op_i(x)> for i.
  c = 4
  cell = cell_lib.SearchCell(NB201, c, n_inputs=1, n_nodes=1, scan_inputs=scan_inputs)
  kx, kg, ki = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(kx, (2, 6, 6, c))
  g = np.asarray(jax.random.normal(kg, (2, 6, 6, c)))
  n_ops = len(NB201.ops)
  variables = _random_variables(cell.init, ki, [x], jnp.ones((1, n_ops)) / n_ops)

  @compiler.jit
  def sampled_grad(index, weights):
    f = lambda w: jnp.sum(cell.apply(variables, [x], SampledOps(index, w),
                                     mutable=["batch_stats"])[0][0] * g)
    return jax.grad(f)(weights)

  @compiler.jit
  def dense_out(weights):  # op_i(x) through the dense path
    return cell.apply(variables, [x], weights, mutable=["batch_stats"])[0][0]

  for i in range(n_ops):
    one_hot = jax.nn.one_hot(jnp.array([i]), n_ops)
    op_out = np.asarray(dense_out(one_hot))
    if NB201.ops[i] == "none":
      assert not op_out.any()
    want = np.full(n_ops, g.sum())
    want[i] = np.sum(g * op_out)
    got = sampled_grad(jnp.array([i], jnp.int32), one_hot)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=NB201.ops[i])


@pytest.mark.parametrize("scan_inputs", [False, True])  # MixedEdges, NodeEdges
def test_eval_mode_uses_the_running_statistics_of_the_picked_ops(scan_inputs):
  cell = cell_lib.SearchCell(NB201, 4, n_inputs=1, n_nodes=3, train=False,
                             scan_inputs=scan_inputs)
  kx, ki = jax.random.split(jax.random.key(6))
  x = jax.random.normal(kx, (2, 6, 6, 4))
  variables = _random_variables(cell.init, jax.random.key(0), [x], jnp.ones((6, 5)) / 5)
  index = jax.random.randint(ki, (6,), 0, 5).at[0].set(0).astype(jnp.int32)
  weights = jax.nn.one_hot(index, 5)
  apply = compiler.jit(lambda w: cell.apply(variables, [x], w))
  for got, want in zip(apply(SampledOps(index, weights)), apply(weights)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sampled_ops_of_the_wrong_shape_are_rejected():
  cell = cell_lib.SearchCell(NB201, 4, n_inputs=1, n_nodes=3)
  x = jnp.zeros((1, 4, 4, 4))
  variables = _random_variables(cell.init, jax.random.key(0), [x], jnp.ones((6, 5)) / 5)
  apply = lambda s: jax.eval_shape(  # the checks run while tracing
      lambda: cell.apply(variables, [x], s, mutable=["batch_stats"]))
  apply(SampledOps(jnp.zeros((6,), jnp.int32), jnp.ones((6, 5))))
  with pytest.raises(ValueError, match="index must have shape"):
    apply(SampledOps(jnp.zeros((5,), jnp.int32), jnp.ones((6, 5))))
  with pytest.raises(ValueError, match="must have shape"):
    apply(SampledOps(jnp.zeros((6,), jnp.int32), jnp.ones((6, 4))))


def test_init_with_sampled_ops_makes_the_dense_variables():
  model = NB201SearchNet(num_classes=3, channels=4, cells_per_stage=1)
  x = jnp.zeros((2, 8, 8, 3))
  dense = jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0), x)
  index = jnp.zeros((6,), jnp.int32)
  sampled_ops = {"cell": SampledOps(index, jax.nn.one_hot(index, 5))}
  sampled = jax.eval_shape(
      lambda k: model.init(k, x, sampled_ops, train=True), jax.random.key(0))
  assert jax.tree.structure(sampled) == jax.tree.structure(dense)
  assert jax.tree.map(lambda a: a.shape, sampled) == jax.tree.map(lambda a: a.shape, dense)
