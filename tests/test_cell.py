"""The vectorised cell equals the explicit DARTS sum over edges and ops."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas.ops import layers, registry
from dnas.ops.sets import DARTS, NB201, OpSet
from dnas.spaces import cell as cell_lib


def test_edge_numbering_matches_darts():
  # DARTS numbers node j's edges after all of node j-1's: 2 + 3 + 4 + 5 = 14.
  assert cell_lib.edge_count(2, 4) == 14
  assert [cell_lib.edge_index(2, 3, s) for s in range(5)] == [9, 10, 11, 12, 13]
  assert cell_lib.edge_count(1, 3) == 6  # NB201: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2
  assert [cell_lib.edge_index(1, 2, s) for s in range(3)] == [3, 4, 5]
  groups = cell_lib.edge_groups(2, 4)
  covered = sorted(cell_lib.edge_index(2, j, s) for _, edges in groups for s, j in edges)
  assert covered == list(range(14))
  # Each edge's weights have their own row in the compact (scanned) layout.
  for scan, inputs in ((True, False), (False, False), (True, True)):
    where = {cell_lib.param_location(2, 4, s, j, scan, inputs)
             for j in range(4) for s in range(2 + j)}
    assert len(where) == 14


def _explicit_cell(op_set, params, batch_stats, inputs, weights, n_inputs, n_nodes, channels,
                   reduction, scan_nodes, scan_inputs=False):
  """DARTS' cell forward, one op instance per (edge, op), params taken from the stacked tree.

  Returns the node states and the updated BatchNorm statistics of every (edge, op).
  """
  states = list(inputs)
  new_stats = {}
  for j in range(n_nodes):
    total = 0.0
    for s in range(n_inputs + j):
      gname, e = cell_lib.param_location(n_inputs, n_nodes, s, j, scan_nodes,
                                         scan_inputs and not reduction)
      stride = 2 if (reduction and s < n_inputs) else 1
      for k, op in enumerate(op_set.ops):
        w = weights[cell_lib.edge_index(n_inputs, j, s), k]
        if op == "none":
          continue
        sub_p = jax.tree.map(lambda a: a[e], params[gname].get(op, {}))
        sub_s = jax.tree.map(lambda a: a[e], batch_stats.get(gname, {}).get(op, {}))
        mod = cell_lib._EdgeOp(op, channels, stride, False, op in op_set.bn_after, True)
        y, upd = mod.apply({"params": sub_p, "batch_stats": sub_s}, states[s],
                           mutable=["batch_stats"])
        new_stats[(gname, e, op)] = upd.get("batch_stats", {})
        total = total + w * y
    states.append(total)
  return states[n_inputs:], new_stats


LAYOUTS = [(True, False, False), (False, False, False), (True, True, False), (True, False, True),
           (True, True, True)]  # (scan_nodes, scan_inputs, pack)


@pytest.mark.parametrize("n_inputs,n_nodes,from_inputs", [
    (2, 4, True), (2, 4, False), (1, 3, True), (1, 3, False), (2, 2, True), (2, 5, True),
    (2, 1, True), (3, 3, False)])
def test_packed_schedule_runs_every_edge_once_after_its_source_is_complete(n_inputs, n_nodes,
                                                                         from_inputs):
  real = cell_lib.scan_edges(n_inputs, n_nodes, from_inputs)
  for pack in (False, True):
    schedule = cell_lib.scan_schedule(n_inputs, n_nodes, from_inputs, pack)
    ran = [e for edges in schedule for e in edges]
    assert sorted(ran) == sorted(real)
    when = {e: it for it, edges in enumerate(schedule) for e in edges}
    for (s, j), it in when.items():
      if s >= n_inputs:  # a node: every edge into it ran in an earlier iteration
        assert all(when[e] < it for e in real if e[1] == s - n_inputs), (pack, s, j)
  packed = cell_lib.scan_schedule(n_inputs, n_nodes, from_inputs, True)
  unpacked = cell_lib.scan_schedule(n_inputs, n_nodes, from_inputs, False)
  slots = lambda sch: len(sch) * max(len(edges) for edges in sch)
  assert slots(packed) <= slots(unpacked)


def test_packed_schedule_of_the_darts_cell_wastes_no_slot():
  # A normal cell with its input edges: 7 iterations x 2 slots for 14 edges (20 unpacked).
  packed = cell_lib.scan_schedule(2, 4, True, pack=True)
  assert [len(edges) for edges in packed] == [2] * 7
  assert len(cell_lib.scan_schedule(2, 4, True, pack=False)) * 4 == 20
  # The 6 edges between nodes: 3 x 2 slots (3 x 3 unpacked).
  assert [len(edges) for edges in cell_lib.scan_schedule(2, 4, False, pack=True)] == [2, 2, 2]
  assert [len(e) for e in cell_lib.scan_schedule(2, 4, False, pack=False)] == [3, 2, 1]


@pytest.mark.parametrize("scan_nodes,scan_inputs,pack", LAYOUTS)
@pytest.mark.parametrize("op_set,n_inputs,n_nodes,reduction", [
    (DARTS, 2, 4, False), (DARTS, 2, 4, True), (NB201, 1, 3, False), (DARTS, 2, 2, True)])
def test_cell_equals_explicit_weighted_sum(op_set, n_inputs, n_nodes, reduction, scan_nodes,
                                           scan_inputs, pack):
  c = 4
  keys = jax.random.split(jax.random.key(0), n_inputs + 2)
  inputs = [jax.random.normal(keys[i], (2, 8, 8, c)) for i in range(n_inputs)]
  n_edges = cell_lib.edge_count(n_inputs, n_nodes)
  weights = jax.nn.softmax(jax.random.normal(keys[-1], (n_edges, len(op_set.ops))), -1)
  cell = cell_lib.SearchCell(op_set, c, n_inputs, n_nodes, reduction=reduction,
                             scan_nodes=scan_nodes, scan_inputs=scan_inputs, pack=pack)
  variables = cell.init(keys[-2], inputs, weights)
  got, updated = cell.apply(variables, inputs, weights, mutable=["batch_stats"])
  want, want_stats = _explicit_cell(op_set, variables["params"], variables["batch_stats"],
                                    inputs, weights, n_inputs, n_nodes, c, reduction, scan_nodes,
                                    scan_inputs)
  assert len(got) == n_nodes
  for g, w in zip(got, want):
    assert g.shape == (2, 8 // (2 if reduction else 1), 8 // (2 if reduction else 1), c)
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Every edge's BatchNorm statistics move exactly as in the explicit forward pass.
  checked = 0
  for (gname, e, op), stats in want_stats.items():
    for a, b in zip(jax.tree.leaves(stats),
                    jax.tree.leaves(updated["batch_stats"][gname].get(op, {}))):
      np.testing.assert_allclose(b[e], a, rtol=1e-5, atol=1e-6, err_msg=f"{gname}/{op}/{e}")
      checked += 1
  assert checked > 0
  # The compact layout holds one weight set per real edge: as many as the unrolled cell.
  unrolled = cell_lib.SearchCell(op_set, c, n_inputs, n_nodes, reduction=reduction,
                                 scan_nodes=False)
  shapes = jax.eval_shape(unrolled.init, keys[-2], inputs, weights)
  assert (sum(a.size for a in jax.tree.leaves(variables["params"])) ==
          sum(a.size for a in jax.tree.leaves(shapes["params"])))


@pytest.mark.parametrize("scan_nodes,scan_inputs,pack", LAYOUTS)
def test_init_keeps_initial_statistics_and_runs_no_forward_pass(scan_nodes, scan_inputs, pack):
  # As flax's BatchNorm (and PyTorch's running averages, which start at 0 and 1): init creates
  # the statistics without updating them, so nothing init returns depends on the forward pass
  # and JAX drops that pass from the compiled init.
  c = 4
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, c)) * 3.0 + 1.0
  weights = jnp.full((cell_lib.edge_count(2, 4), len(DARTS.ops)), 1.0 / len(DARTS.ops))
  cell = cell_lib.SearchCell(DARTS, c, 2, 4, scan_nodes=scan_nodes, scan_inputs=scan_inputs,
                             pack=pack)
  variables = cell.init(jax.random.key(1), [x, x], weights)
  stats = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]
  assert len(stats) > 0
  for path, a in stats:
    name = jax.tree_util.keystr(path)
    np.testing.assert_array_equal(a, 0.0 if name.endswith("['mean']") else 1.0, err_msg=name)
  init_hlo = jax.jit(cell.init).lower(jax.random.key(1), [x, x], weights).as_text()
  apply_hlo = jax.jit(lambda v: cell.apply(v, [x, x], weights, mutable=["batch_stats"])).lower(
      variables).as_text()
  assert "reduce_window" in apply_hlo  # the pools of the forward pass
  assert "reduce_window" not in init_hlo


@pytest.mark.parametrize("scan_nodes,scan_inputs,pack", LAYOUTS)
def test_recomputing_the_ops_changes_no_gradient_and_saves_memory(scan_nodes, scan_inputs, pack):
  c = 4
  keys = jax.random.split(jax.random.key(0), 4)
  inputs = [jax.random.normal(keys[i], (8, 8, 8, c)) for i in range(2)]
  weights = jax.nn.softmax(jax.random.normal(keys[2], (cell_lib.edge_count(2, 4), 8)), -1)
  cells = {r: cell_lib.SearchCell(DARTS, c, 2, 4, scan_nodes=scan_nodes, scan_inputs=scan_inputs,
                                  remat=r, pack=pack) for r in (False, True)}
  variables = cells[False].init(keys[3], inputs, weights)

  def loss(remat, params, inputs, weights):
    v = {**variables, "params": params}
    nodes, upd = cells[remat].apply(v, inputs, weights, mutable=["batch_stats"])
    return sum(jnp.sum(jnp.sin(n)) for n in nodes), upd

  grads, plans = {}, {}
  for r in (False, True):
    fn = jax.jit(jax.grad(functools.partial(loss, r), argnums=(0, 1, 2), has_aux=True))
    compiled = fn.lower(variables["params"], inputs, weights).compile()
    grads[r] = compiled(variables["params"], inputs, weights)
    plans[r] = compiled.memory_analysis().temp_size_in_bytes
  flat = {r: jax.tree.leaves(grads[r]) for r in grads}
  assert len(flat[True]) == len(flat[False]) > 10
  for a, b in zip(flat[False], flat[True]):  # float32: the recomputed ops round differently
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  assert plans[True] < plans[False]


def test_one_hot_weights_select_a_single_op():
  c = 4
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, c))
  op_set = OpSet("pools", ("none", "max_pool_3x3", "avg_pool_3x3"))
  cell = cell_lib.SearchCell(op_set, c, n_inputs=1, n_nodes=1)
  weights = jnp.array([[0.0, 0.0, 1.0]])
  v = cell.init(jax.random.key(1), [x], weights)
  (node,), _ = cell.apply(v, [x], weights, mutable=["batch_stats"])
  np.testing.assert_allclose(node, layers.avg_pool_3x3(x, 1), rtol=1e-6)


def test_cell_rejects_wrong_weight_shape():
  cell = cell_lib.SearchCell(DARTS, 4, 2, 4)
  x = jnp.zeros((1, 4, 4, 4))
  with pytest.raises(ValueError, match="shape"):
    cell.init(jax.random.key(0), [x, x], jnp.zeros((13, 8)))




def test_cell_with_shifted_depthwise_equals_explicit_sum(monkeypatch):
  """Under the CPU's shifted-sum depthwise form, DARTS' depthwise ops get the shared input
  broadcast along the edge axis while pools and skips read it unbatched: both paths in one cell
  (one cell input, so every group has a single source)."""
  monkeypatch.setenv("DNAS_DEPTHWISE", "shift")
  assert not cell_lib._reads_shared_input("sep_conv_3x3")
  assert cell_lib._reads_shared_input("max_pool_3x3")
  test_cell_equals_explicit_weighted_sum(DARTS, 1, 3, False, scan_nodes=True, scan_inputs=False,
                                         pack=False)
  test_cell_equals_explicit_weighted_sum(DARTS, 1, 3, False, scan_nodes=True, scan_inputs=True,
                                         pack=False)
  # Packed: slots of one iteration read different sources, every op gets its own input.
  test_cell_equals_explicit_weighted_sum(DARTS, 1, 3, False, scan_nodes=True, scan_inputs=True,
                                         pack=True)


def test_a_users_depthwise_op_takes_the_path_its_registration_asks_for(monkeypatch):
  """``register(..., depthwise=True)`` is what routes an op to the broadcast path (not its name);
  the hint changes no result."""
  monkeypatch.setenv("DNAS_DEPTHWISE", "shift")
  sep = lambda c, s, affine=True: layers.SepConv(c, 3, s, 1, affine=affine)
  with registry.temporary("my_sep", sep, depthwise=True), \
      registry.temporary("my_sep_without_hint", sep):
    assert registry.is_depthwise("my_sep") and not registry.is_depthwise("my_sep_without_hint")
    assert not cell_lib._reads_shared_input("my_sep")
    assert cell_lib._reads_shared_input("my_sep_without_hint")
    ops = OpSet("mine", ("none", "my_sep", "my_sep_without_hint", "max_pool_3x3"),
                bn_after=("max_pool_3x3",))
    test_cell_equals_explicit_weighted_sum(ops, 1, 3, False, scan_nodes=True, scan_inputs=False,
                                         pack=False)
  monkeypatch.setenv("DNAS_DEPTHWISE", "conv")  # the native form: every op reads it unbatched
  assert cell_lib._reads_shared_input("sep_conv_3x3")
