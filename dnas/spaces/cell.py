"""Generic search-cell machinery: mixed edges vectorised over a source's outgoing edges.

A cell has ``n_inputs`` input states and ``n_nodes`` intermediate nodes; node ``j`` sums one
mixed edge from every input and every earlier node. Edges are numbered node by node, sources in
order, as in DARTS: node ``j``'s edges start at ``sum_{t<j} (n_inputs + t)``.

A mixed edge computes ``sum_k w_k * op_k(x)`` (DARTS eq. 2 with ``w`` given). Unrolling every op on
every edge makes a graph of ``edges x ops`` sub-networks, and XLA's compile time grows with that
size. Here the edges that leave the same source (all cell inputs at once, then each node) are
computed together: each op runs once per group under ``nn.vmap`` with parameters stacked along a
leading edge axis. A DARTS cell is then 4 groups x 8 ops instead of 14 x 8 op instances, and the
results are identical to the unrolled form (tests check it against an explicit sum).

The edges between intermediate nodes go further (``scan_nodes=True``, the default): they run as
one ``lax.scan`` over their source node, each iteration computing the edges that leave node
``i`` through ``n_nodes - 1`` slots (slots past the last node carry zero weight). XLA then
compiles the ops of a cell twice (cell inputs, and the scan body) instead of ``n_nodes`` times,
which roughly halves the supernet's compile time for about 20 % more edge evaluations in a
DARTS cell. Weights stay compact: one stacked set per real edge, gathered into the slots, so
the parameter count is the reference's.

With ``scan_inputs`` a cell's stride-1 input edges join that scan (its ops compile once), and
with ``pack`` the scan takes its edges in destination order, each slot reading its own source,
so that no slot runs padding: a DARTS normal cell is 7 iterations of 2 edges (``scan_schedule``).
Both are the DARTS supernet's defaults (benchmarks/RESULTS.md, "Packing the node scans").

With ``partial_channels = P > 1`` every mixed edge is PC-DARTS' partial channel connection
(Xu et al., ICLR 2020, section 3.2; yuhuixu1993/PC-DARTS, ``model_search.py``, ``MixedOp``):
the ops, built for ``C / P`` channels, see the first ``C / P`` channels of the edge's input;
the other channels bypass them (max-pooled 2x2 on a stride-2 edge, as the reference's
``self.mp``), scaled by the edge's total op weight ``sum_k w_k``; the two parts are
concatenated and shuffled (``channel_shuffle``, ``P`` groups)::

    edge(x) = shuffle(concat(sum_k w_k op_k(x[:C/P]), (sum_k w_k) * bypass(x[C/P:])))

``sum_k w_k`` is 1 for a softmax or a Dirichlet sample, the reference's unscaled bypass, and
``softmax(beta)_e`` under PC-DARTS' edge normalisation (``dnas.strategies.pcdarts``), whose
reference multiplies the whole edge by it. Concatenation and shuffle are linear and the same
on every edge, so a node's edges are summed in each part first and joined once per group or
scan slot. Dense op weights only (a ``SampledOps`` is refused).

A cell's op weights may also be a ``dnas.types.SampledOps`` (GDAS and other sampling
strategies): one op per edge, ``index[e]``, with one-hot valued ``weights``. Each edge then
computes only its picked op, GDAS' forward (D-X-Y/AutoDL-Projects,
``lib/models/cell_searchs/search_cells.py``, ``SearchCell.forward_gdas``)::

    edge(x) = weights[e, index[e]] * op_{index[e]}(x) + sum_{k != index[e]} weights[e, k]

whose second term is zero-valued and carries the other ops' (straight-through) gradients. The
edges of a group (``MixedEdges``) or of a node scan (``NodeEdges``) run as a ``lax.scan``, one
edge per iteration, each a ``lax.switch`` over the ops (a switch under ``vmap`` turns into a
select that computes every branch, so the picked op is never vmapped over edges). The scan takes
the edges in their stacking order, which already runs every edge after all the edges into its
source, so it needs no schedule, runs no padding (``pack`` changes nothing), and reads each op's
stacked weights as they are: the same ``params`` and ``batch_stats`` as the dense path, of which
only the picked ops' statistics change in training. The backward pass recomputes the picked op
whatever ``remat`` says (``_run_sampled_edges``: keeping its insides would keep every op's),
and only reverse-mode autodiff is defined. ``init`` always runs the dense path (a
``SampledOps`` given to ``init`` is run as its dense ``weights``), and the index is an ordinary
traced array: one compilation serves every sampled architecture.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dnas.ops import layers, registry
from dnas.ops.sets import OpSet
from dnas.types import SampledOps


def edge_count(n_inputs: int, n_nodes: int) -> int:
  """Number of edges of a cell in which each node sees all inputs and all earlier nodes."""
  return sum(n_inputs + j for j in range(n_nodes))


def edge_index(n_inputs: int, node: int, source: int) -> int:
  """Row of alpha for the edge ``source -> node`` (sources: inputs first, then nodes)."""
  return sum(n_inputs + t for t in range(node)) + source


def edge_groups(n_inputs: int, n_nodes: int) -> List[Tuple[Tuple[int, ...], List[Tuple[int, int]]]]:
  """Edges grouped by when their source becomes available.

  Returns:
    A list of ``(sources, edges)``: the group's sources (indices into inputs + nodes) and its
    edges as ``(source, node)`` pairs. The first group holds every edge leaving a cell input;
    group ``i + 1`` the edges leaving node ``i``.
  """
  groups = [(tuple(range(n_inputs)),
             [(s, j) for s in range(n_inputs) for j in range(n_nodes)])]
  for i in range(n_nodes - 1):
    groups.append(((n_inputs + i,), [(n_inputs + i, j) for j in range(i + 1, n_nodes)]))
  return groups


class _EdgeOp(nn.Module):
  """One candidate op on one edge (vmapped over edges by ``MixedEdges``)."""
  op: str
  channels: int
  stride: int
  affine: bool
  bn_after: bool
  train: bool

  @nn.compact
  def __call__(self, x):
    y = registry.build(self.op, self.channels, self.stride, affine=self.affine)(x, self.train)
    if self.bn_after:
      y = layers.batch_norm(self.train, affine=False)(y)
    return y


_VmappedEdgeOp = nn.vmap(
    _EdgeOp, in_axes=0, out_axes=0,
    variable_axes={"params": 0, "batch_stats": 0},
    split_rngs={"params": True, "dropout": True})


def _reads_shared_input(op: str) -> bool:
  """Whether an op on edges with one shared input runs on it unbatched (only its weights vmapped).

  That is faster for dense convolutions and pools (measured on the CPU: NAS-Bench-201's
  ``nor_conv_3x3`` 3x, pools 1.6-3.4x) but 3-10x slower for the shifted-sum depthwise
  convolution of DARTS' ``sep_conv_*`` / ``dil_conv_*``, whose input gradient then reduces over
  the edges once per kernel tap; ops registered with ``depthwise=True`` get the input broadcast
  along the edge axis instead while that form is in use.
  """
  shifted = layers._depthwise_impl() == "shift"  # pylint: disable=protected-access
  return not (shifted and registry.is_depthwise(op))


@functools.lru_cache(maxsize=None)
def _shared_input_edge_op(n_edges: int):
  """``_EdgeOp`` vmapped over ``n_edges`` stacked weights applied to one shared input.

  Unbatched input with batched weights lets XLA run one convolution with ``n_edges`` times the
  output channels (a dense convolution) instead of a grouped one over stacked copies of the
  input, which the CPU backend runs through a slow generic path.
  """
  return nn.vmap(_EdgeOp, in_axes=None, out_axes=0, axis_size=n_edges,
                 variable_axes={"params": 0, "batch_stats": 0},
                 split_rngs={"params": True, "dropout": True})


class RoutedSample(NamedTuple):
  """A group's sampled op weights, as ``MixedEdges`` takes them in place of a dense ``mix``.

  Attributes:
    index: ``[E]`` int, the op picked on each edge (``SampledOps.index`` rows).
    weights: ``[E, K]``, the edges' one-hot valued weights (``SampledOps.weights`` rows).
    source: ``[E]`` int (numpy), the row of ``xs`` each edge reads (unused with
      ``shared_input``).
    route: ``[E, D]`` 0/1 (numpy), each edge's destination.
  """
  index: jax.Array
  weights: jax.Array
  source: np.ndarray
  route: np.ndarray


def _sampled_value(w, i, y):
  """GDAS' edge value: ``w[i] * y + sum_{k != i} w[k]``, the sum a zero-valued broadcast scalar.

  D-X-Y/AutoDL-Projects, ``lib/models/cell_searchs/search_cells.py``,
  ``SearchCell.forward_gdas``: ``sum(w[k] * op_k(x) if k == index else w[k] for k ...)``. Its
  gradient is ``<g, op_i(x)>`` for ``w[i]`` and ``sum(g)`` for every other ``w[k]``.
  """
  picked = jax.lax.dynamic_index_in_dim(w, i, keepdims=False)
  rest = jnp.sum(jnp.where(jnp.arange(w.shape[-1]) == i, jnp.zeros_like(w), w))
  return picked.astype(y.dtype) * y + rest.astype(y.dtype)


def _op_branches(op_set: OpSet, modules: Dict[str, nn.Module], out_shape, update_stats: bool):
  """``lax.switch`` branches, one per op of ``op_set`` in alpha's order: ``(x, v) -> (y, stats)``.

  ``v`` maps each op but ``none`` to its variables on one edge (``{"params": ...,
  "batch_stats": ...}``); ``stats`` maps the ops that have ``batch_stats`` to theirs: the picked
  op's updated (when ``update_stats``), the others' as they came in. ``none`` gives zeros of
  ``out_shape`` (its dense form is left out of the sum: it contributes exactly zero).
  """

  def passed_through(v):
    if not update_stats:
      return {}
    return {op: vo["batch_stats"] for op, vo in v.items() if "batch_stats" in vo}

  def make(op):
    if op == "none":
      def zero(x, v):
        return jnp.zeros(out_shape, x.dtype), passed_through(v)
      return zero
    module = modules[op]

    def branch(x, v):
      stats = passed_through(v)
      if op in stats:
        y, upd = module.apply(v[op], x, mutable=["batch_stats"])
        stats[op] = upd["batch_stats"]
      else:
        y = module.apply(v[op], x)
      return y, stats
    return branch

  return [make(op) for op in op_set.ops]


def _run_sampled_edges(branches, states, params, index, weights, src, dst, outputs=None):
  """Runs sampled edges in order, one per ``lax.scan`` iteration, each computing its op alone.

  Edge ``e`` adds ``_sampled_value(weights[e], index[e], y)`` to ``outputs[dst[e]]``, with
  ``y = branches[index[e]](states[src[e]], params[e])[0]`` (a ``lax.switch``); without
  ``outputs`` the edges read and write ``states`` itself (a cell's nodes, each complete before
  an edge reads it).

  The scan's iterations are differentiated by hand (``jax.custom_vjp``), for two reasons:

  * Autodiff of a ``lax.switch`` keeps every branch's residuals (zero-filled for the branches
    not taken): every op's insides would be written and kept. Here an iteration keeps its
    input, weights and index, and the backward pass runs branch ``index[e]`` again under
    ``jax.vjp`` (as ``remat`` does for the dense path).
  * Autodiff of the scan turns each read ``states[src]`` into an addition of a zero-padded
    ``[S, B, H, W, C]`` array to the carry's cotangent. Here the cotangent of ``states[src]``
    is added to that row in place.

  Measured on the CPU (2-core VM, NB201 supernet, C=16, 5 cells per stage, batch 16, the
  weights' and op weights' gradients with every edge on ``none``; the layers outside the cells
  take 42 ms): a plain switch 1213 ms, each branch under ``jax.checkpoint`` 324 ms, both fixes
  167 ms. Unrolling the edges in Python instead of scanning them measured faster again (132 ms
  against 212 ms with ``scan_inputs``, where one scan runs all 6 edges) but compiled 40 %
  longer, and far longer for DARTS' 14-edge cells: the scan stays. Reverse mode only: a
  sampled edge has no forward-mode derivative.

  Returns:
    ``(states, outputs, stats)`` after the last edge (``outputs`` None if not given), ``stats``
    the branches' statistics stacked over the edges.
  """
  same = outputs is None

  def split(carry):
    return (carry, carry) if same else carry

  def join(ins, outs):
    return outs if same else (ins, outs)

  def forward(carry, v, i, w, s, d):
    ins, outs = split(carry)
    x = jax.lax.dynamic_index_in_dim(ins, s, keepdims=False)
    y, stats = jax.lax.switch(i, branches, x, v)
    node = jax.lax.dynamic_index_in_dim(outs, d, keepdims=False) + _sampled_value(w, i, y)
    return (join(ins, jax.lax.dynamic_update_index_in_dim(outs, node, d, 0)), stats), x

  @jax.custom_vjp
  def edge(carry, v, i, w, s, d):
    return forward(carry, v, i, w, s, d)[0]

  def edge_fwd(carry, v, i, w, s, d):
    out, x = forward(carry, v, i, w, s, d)
    return out, (x, v, i, w, s, d)

  def edge_bwd(res, cotangents):
    x, v, i, w, s, d = res
    ct_carry, _ = cotangents  # the statistics carry no gradient
    ct_ins, ct_outs = split(ct_carry)
    ct_node = jax.lax.dynamic_index_in_dim(ct_outs, d, keepdims=False)

    def grads_of(branch):
      def grads(x, v, w):
        y, op_vjp = jax.vjp(lambda x, v: branch(x, v)[0], x, v)
        ct_w, ct_y = jax.vjp(lambda w, y: _sampled_value(w, i, y), w, y)[1](ct_node)
        return op_vjp(ct_y) + (ct_w,)
      return grads

    dx, dv, dw = jax.lax.switch(i, [grads_of(b) for b in branches], x, v, w)
    # outs[d] += value passes its cotangent through; states[s] also gets the op's input's.
    row = jax.lax.dynamic_index_in_dim(ct_ins, s, keepdims=False) + dx
    ct_ins = jax.lax.dynamic_update_index_in_dim(ct_ins, row, s, 0)
    ct_carry = ct_ins if same else (ct_ins, ct_outs)
    no_grad = lambda a: np.zeros(np.shape(a), jax.dtypes.float0)
    return ct_carry, dv, no_grad(i), dw, no_grad(s), no_grad(d)

  edge.defvjp(edge_fwd, edge_bwd)
  carry = states if same else (states, outputs)
  carry, stats = jax.lax.scan(lambda c, e: edge(c, *e), carry,
                              (params, index, weights, jnp.asarray(src, jnp.int32),
                               jnp.asarray(dst, jnp.int32)))
  states, outputs = (carry, None) if same else carry
  return states, outputs, stats


def _out_shape(x_shape, stride: int, channels: int) -> Tuple[int, ...]:
  b, h, w = x_shape[-4:-1]
  return (b, -(-h // stride), -(-w // stride), channels)


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """ShuffleNet's channel shuffle on the last axis, as PC-DARTS applies it after every edge.

  The ``C`` channels, ``groups`` blocks of ``C / groups``, are interleaved::

      out[..., i * groups + g] = x[..., g * (C // groups) + i]

  (yuhuixu1993/PC-DARTS, ``model_search.py``, ``channel_shuffle``: a ``[groups, C / groups]``
  view of the channels, transposed.)
  """
  *lead, c = x.shape
  if c % groups:
    raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
  return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


def _max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
  """2x2 max-pooling, stride 2, no padding, over the ``H, W`` axes of ``[..., H, W, C]``."""
  window = (1,) * (x.ndim - 3) + (2, 2, 1)
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, window, window,
                               "VALID")


def _join_partial(mixed, rest, scale, shared: bool, groups: int):
  """Partial channel edges summed per destination: ``shuffle(concat(mixed, bypass))``.

  ``mixed``: ``[D, B, H, W, C/P]``, the ops' weighted sums already routed; ``rest``: the
  bypassed channels ``[E, B, H, W, C - C/P]`` (``[B, H, W, C - C/P]`` when ``shared``);
  ``scale``: ``[E, D]``, each edge's total op weight routed to its destination.
  """
  scale = scale.astype(rest.dtype)
  if shared:
    bypass = jnp.einsum("d,bhwc->dbhwc", jnp.sum(scale, axis=0), rest)
  else:
    bypass = jnp.einsum("ed,ebhwc->dbhwc", scale, rest)
  return channel_shuffle(jnp.concatenate([mixed, bypass.astype(mixed.dtype)], axis=-1), groups)


class MixedEdges(nn.Module):
  """``E`` mixed edges of the same stride, computed together.

  Call with ``xs`` of shape ``[E, B, H, W, C]`` and ``mix`` of shape ``[E, K, D]``, which holds
  each edge's op weights already routed to one of ``D`` destinations. Returns ``[D, B, H', W', C]``:
  ``out[d] = sum_{e, k} mix[e, k, d] * op_k(xs[e]; params of edge e)``. With ``shared_input``,
  ``xs`` is one ``[B, H, W, C]`` input that every edge reads (``xs[e] = xs``).

  With ``mix`` a ``RoutedSample``, each edge computes only its picked op (the module docstring):
  ``xs`` is then ``[S, B, H, W, C]``, edge ``e`` reading ``xs[mix.source[e]]`` (or the one shared
  input), and ``out[d] = sum_e route[e, d] * edge_e(x)``.

  With ``partial_channels = P > 1`` (dense ``mix`` only) the ops are built for ``channels / P``
  and every edge is a partial channel connection (the module docstring).
  """
  op_set: OpSet
  channels: int
  stride: int
  affine: bool = False
  train: bool = True
  shared_input: bool = False
  remat: bool = True
  partial_channels: int = 1

  @nn.compact
  def __call__(self, xs, mix):
    if isinstance(mix, RoutedSample):
      return self._sampled(xs, mix)
    out = None
    n_edges = mix.shape[0]
    pc = self.partial_channels
    channels = self.channels // pc
    if pc > 1:
      xs, rest = xs[..., :channels], xs[..., channels:]
    for k, op in enumerate(self.op_set.ops):
      if op == "none":
        continue  # contributes exactly zero
      if self.shared_input and _reads_shared_input(op):
        edge_op, x = _shared_input_edge_op(n_edges), xs
      elif self.shared_input:
        edge_op, x = _VmappedEdgeOp, jnp.broadcast_to(xs, (n_edges,) + xs.shape)
      else:
        edge_op, x = _VmappedEdgeOp, xs
      if self.remat:
        edge_op = nn.remat(edge_op)
      y = edge_op(op, channels, self.stride, self.affine,
                  op in self.op_set.bn_after, self.train, name=op)(x)
      term = jnp.einsum("ed,ebhwc->dbhwc", mix[:, k, :].astype(y.dtype), y)
      out = term if out is None else out + term
    if out is None:  # every op is `none`
      b, h, w = xs.shape[-4:-1]
      s = self.stride
      out = jnp.zeros((mix.shape[-1], b, -(-h // s), -(-w // s), channels), xs.dtype)
    if pc > 1:
      if self.stride == 2:
        rest = _max_pool_2x2(rest)
      out = _join_partial(out, rest, jnp.sum(mix, axis=1), self.shared_input, pc)
    return out

  def _sampled(self, xs, mix: RoutedSample):
    """The picked op on every edge, one edge per ``lax.scan`` iteration.

    Reads the variables the dense path's vmapped ops keep under their op names (stacked along
    the edge axis), so that both paths share them; ``init`` runs the dense path.
    """
    if self.is_initializing():
      raise ValueError("initialise the supernet with dense op weights (SearchCell does)")
    stacked, modules = {}, {}
    for op in self.op_set.ops:
      if op == "none":
        continue
      modules[op] = _EdgeOp(op, self.channels, self.stride, self.affine,
                            op in self.op_set.bn_after, self.train)
      stacked[op] = {c: self.get_variable(c, op) for c in ("params", "batch_stats")
                     if self.has_variable(c, op)}
    update_stats = self.train and self.is_mutable_collection("batch_stats")
    x_shape = xs.shape if self.shared_input else xs.shape[1:]
    branches = _op_branches(self.op_set, modules, _out_shape(x_shape, self.stride, self.channels),
                            update_stats)
    states = xs[None] if self.shared_input else xs
    dst = np.argmax(mix.route, axis=1)  # each edge has one destination
    out_shape = (mix.route.shape[1],) + _out_shape(x_shape, self.stride, self.channels)
    _, out, stats = _run_sampled_edges(
        branches, states, stacked, mix.index, mix.weights, mix.source, dst,
        outputs=jnp.zeros(out_shape, xs.dtype))
    if update_stats:
      for op, s in stats.items():
        self.put_variable("batch_stats", op, s)
    return out


def node_edges(n_nodes: int) -> List[Tuple[int, int]]:
  """Edges between intermediate nodes as ``(source_node, dest_node)``, in their stacking order."""
  return [(i, j) for i in range(n_nodes - 1) for j in range(i + 1, n_nodes)]


def scan_edges(n_inputs: int, n_nodes: int, from_inputs: bool) -> List[Tuple[int, int]]:
  """The edges a ``NodeEdges`` scan runs, as ``(source, node)`` in their stacking order.

  ``source`` indexes inputs then nodes (as in ``edge_index``). With ``from_inputs`` the edges
  leaving the cell inputs come first, then those between nodes.
  """
  first = [(s, j) for s in range(n_inputs) for j in range(n_nodes)] if from_inputs else []
  return first + [(n_inputs + i, j) for i, j in node_edges(n_nodes)]


def scan_schedule(n_inputs: int, n_nodes: int, from_inputs: bool,
                  pack: bool) -> List[List[Tuple[int, int]]]:
  """The iterations of a ``NodeEdges`` scan: each a list of ``(source, node)`` edges (its slots).

  Without ``pack``, iteration ``i`` runs every edge leaving source ``i`` (one shared input per
  iteration; shorter iterations are padded up to the longest). With ``pack``, the edges are taken
  in destination order and cut into iterations of ``S`` slots, an iteration ending early where an
  edge's source node is not complete before it; ``S`` is chosen to run the fewest slots in all,
  then the fewest iterations. A DARTS normal cell (2 inputs, 4 nodes, input edges included) runs
  7 iterations of 2 slots, 14 slots for 14 edges, against 20 unpacked; the 6 edges between nodes
  alone run in 3 x 2 slots against 3 x 3.
  """
  real = scan_edges(n_inputs, n_nodes, from_inputs)
  if not pack:
    first = 0 if from_inputs else n_inputs
    return [[(s, j) for s, j in real if s == g] for g in range(first, n_inputs + n_nodes - 1)]
  order = sorted(real, key=lambda e: (e[1], e[0]))  # every edge into a node precedes its outputs
  best = None
  for width in range(1, len(order) + 1):
    its: List[List[Tuple[int, int]]] = [[]]
    last = {}  # node -> the iteration holding its last incoming edge
    for s, j in order:
      source_open = s >= n_inputs and last.get(s - n_inputs, -1) == len(its) - 1
      if len(its[-1]) == width or source_open:
        its.append([])
      its[-1].append((s, j))
      last[j] = len(its) - 1
    cost = (width * len(its), len(its))
    if best is None or cost < best[0]:
      best = (cost, its)
  return best[1]


def param_location(n_inputs: int, n_nodes: int, source: int, node: int,
                   scan_nodes: bool = True, scan_inputs: bool = False) -> Tuple[str, int]:
  """Where the weights of edge ``source -> node`` live: ``(submodule name, row in its stack)``.

  ``source`` indexes inputs then nodes (as in ``edge_index``). ``scan_inputs``: whether the
  cell ran its input edges inside the scan too (``SearchCell.scan_inputs`` on a cell whose
  input edges have stride 1).
  """
  if scan_nodes and scan_inputs:
    return "edges", scan_edges(n_inputs, n_nodes, True).index((source, node))
  if source < n_inputs:
    return "edges_from_inputs", source * n_nodes + node
  i = source - n_inputs
  if scan_nodes:
    return "edges_from_nodes", node_edges(n_nodes).index((i, node))
  return f"edges_from_node{i}", node - i - 1


def _stack_init(module: nn.Module, key, n: int, x_shape, dtype):
  keys = jax.random.split(key, n)
  return jax.vmap(lambda k: module.init({"params": k}, jnp.zeros(x_shape, dtype)))(keys)


class NodeEdges(nn.Module):
  """Mixed edges as one ``lax.scan`` over their source state.

  Call with ``states`` of shape ``[S, B, H, W, C]`` and the cell's op weights ``[E, K]``.
  Without ``from_inputs``, ``states`` holds the ``n_nodes`` partial node sums (each node's sum
  over its edges from the cell inputs) and the scan runs the edges between nodes: iteration ``i``
  reads node ``i`` (complete by then) and adds its edges into nodes ``> i`` through
  ``n_nodes - 1`` slots. With ``from_inputs``, ``states`` is the cell inputs followed by
  ``n_nodes`` zeros, and the first ``n_inputs`` iterations run the edges leaving the inputs
  (all of stride 1) through ``n_nodes`` slots, so the ops compile once for the whole cell.
  Slots past a source's last edge carry zero weight. With ``pack`` the iterations follow
  ``scan_schedule(..., pack=True)`` instead: each slot reads its own source (gathered from
  ``states``), so nearly every slot is a real edge. Returns the completed node states.

  With ``weights`` a ``SampledOps``, the scan runs one real edge per iteration, in stacking
  order, computing only its picked op (the module docstring); ``pack`` then changes nothing.
  With ``partial_channels = P > 1`` (dense weights only) the ops are built for ``channels / P``
  and every edge is a partial channel connection, joined per iteration (the module docstring).
  """
  op_set: OpSet
  channels: int
  n_inputs: int
  n_nodes: int
  affine: bool = False
  train: bool = True
  from_inputs: bool = False
  remat: bool = True
  pack: bool = False
  partial_channels: int = 1

  @nn.compact
  def __call__(self, states, weights):
    n, n_in = self.n_nodes, self.n_inputs
    offset = n_in if self.from_inputs else 0  # position of node 0 in `states`
    first = 0 if self.from_inputs else n_in   # first source, indexing inputs then nodes
    real = scan_edges(n_in, n, self.from_inputs)
    pc = self.partial_channels
    cp = states.shape[-1] // pc  # the channels the ops see
    ops, variables = self._variables(len(real), states.shape[1:-1] + (cp,), states.dtype)
    update_stats = self.train and self.is_mutable_collection("batch_stats")
    params = {op: {c: (x if c == "params" else x.value) for c, x in v.items()}
              for op, v in variables.items()}
    if isinstance(weights, SampledOps):
      if self.is_initializing():
        raise ValueError("initialise the supernet with dense op weights (SearchCell does)")
      states, new_stats = self._sampled(states, weights, params, ops, real, first, offset,
                                        update_stats)
      if update_stats:
        for op, stats in new_stats.items():
          variables[op]["batch_stats"].value = stats
      return states[offset:]

    schedule = scan_schedule(n_in, n, self.from_inputs, self.pack)
    iters, slots = len(schedule), max(len(edges) for edges in schedule)
    # One source per iteration: every slot reads the same state (see _reads_shared_input).
    shared = all(len({s for s, _ in edges}) == 1 for edges in schedule)
    src = np.zeros((iters, slots), np.int32)             # position in `states` a slot reads
    idx = np.zeros((iters, slots), np.int32)             # which stacked weights a slot uses
    mix = np.zeros((iters, slots, weights.shape[0]), np.float32)  # selects the alpha row
    route = np.zeros((iters, slots, states.shape[0]), np.float32)  # slot -> destination
    where = [None] * len(real)  # (iteration, slot) of each real edge
    for it, edges in enumerate(schedule):
      src[it] = edges[0][0] - first  # padding slots (zero weight, no route) read a real state
      for t, (g, j) in enumerate(edges):
        src[it, t] = g - first
        idx[it, t] = real.index((g, j))
        where[idx[it, t]] = (it, t)
        mix[it, t, edge_index(n_in, j, g)] = 1.0
        route[it, t, offset + j] = 1.0
    slot_weights = jnp.einsum("ite,ek->itk", mix, weights)  # zero for the padding slots
    remat = jax.checkpoint if self.remat else (lambda f: f)

    def body(states, xs):
      src, rows, w, r = xs
      if shared:
        x = jax.lax.dynamic_index_in_dim(states, src[0], 0, keepdims=False)
      else:
        x = jnp.take(states, src, axis=0)  # [slots, B, H, W, C]
      if pc > 1:
        x, rest = x[..., :cp], x[..., cp:]
      total, new_stats = None, {}
      for k, op, module in ops:
        v = jax.tree.map(lambda a: a[rows], params[op])
        if not shared:
          xin, axes = x, (0, 0)
        elif _reads_shared_input(op):
          xin, axes = x, (0, None)
        else:
          xin, axes = jnp.broadcast_to(x, (slots,) + x.shape), (0, 0)
        if update_stats and "batch_stats" in v:
          y, upd = jax.vmap(remat(lambda v, x: module.apply(v, x, mutable=["batch_stats"])),
                            in_axes=axes, axis_size=slots)(v, xin)
          new_stats[op] = upd["batch_stats"]
        else:
          y = jax.vmap(remat(module.apply), in_axes=axes, axis_size=slots)(v, xin)
        term = w[:, k, None, None, None, None].astype(y.dtype) * y
        total = term if total is None else total + term
      if pc > 1:
        mixed = (jnp.zeros(states.shape[:-1] + (cp,), states.dtype) if total is None else
                 jnp.einsum("td,tbhwc->dbhwc", r.astype(total.dtype), total))
        scale = jnp.sum(w, axis=-1)[:, None] * r  # zero on the padding slots
        states = states + _join_partial(mixed, rest, scale, shared, pc)
      elif total is not None:
        states = states + jnp.einsum("td,tbhwc->dbhwc", r.astype(total.dtype), total)
      return states, new_stats

    states, new_stats = jax.lax.scan(body, states, (src, idx, slot_weights, route))
    # Init keeps the statistics' initial values, as flax's BatchNorm does (PyTorch's running
    # averages also start at 0 and 1): nothing init returns then depends on the forward pass,
    # which JAX drops from the compiled init (paper-size DARTS supernet: 30k lines of StableHLO
    # to 7.6k, and half the compile time on a CPU).
    if update_stats and not self.is_initializing():
      # Each real edge updated its statistics in exactly one slot; padding slots are dropped.
      it, tt = np.array([a for a, _ in where]), np.array([b for _, b in where])
      for op, stats in new_stats.items():
        variables[op]["batch_stats"].value = jax.tree.map(lambda a: a[it, tt], stats)
    return states[offset:]

  def _variables(self, n_edges: int, x_shape, dtype):
    """Each op's weights and statistics, stacked over the ``n_edges`` real edges.

    Returns ``(ops, variables)``: ``ops`` lists ``(k, name, module)`` for every op but ``none``
    (``k`` its position in alpha), ``variables`` maps its name to ``{"params": array tree,
    "batch_stats": flax Variable}`` (either left out when the op has none).
    """
    ops, variables = [], {}
    for op in self.op_set.ops:
      if op == "none":
        continue  # contributes exactly zero
      module = _EdgeOp(op, self.channels // self.partial_channels, 1, self.affine,
                       op in self.op_set.bn_after, self.train)
      init = functools.partial(_stack_init, module, n=n_edges, x_shape=x_shape, dtype=dtype)
      if self.is_initializing():
        cols = jax.eval_shape(init, jax.random.key(0)).keys()
      else:
        cols = [c for c in ("params", "batch_stats") if self.has_variable(c, op)]
      v = {}
      if "params" in cols:
        v["params"] = self.param(op, lambda rng, init=init: init(rng)["params"])
      if "batch_stats" in cols:
        v["batch_stats"] = self.variable(
            "batch_stats", op, lambda init=init: init(jax.random.key(0))["batch_stats"])
      ops.append((self.op_set.ops.index(op), op, module))
      variables[op] = v
    return ops, variables

  def _sampled(self, states, sample: SampledOps, params, ops, real, first: int, offset: int,
               update_stats: bool):
    """The picked op of every real edge, one edge per scan iteration, in stacking order.

    The stacking order (``scan_edges``) already runs every edge after all the edges into its
    source, so the scan reads the stacked weights in order and needs no padding slot.
    Returns the states and each op's new statistics (stacked like its weights).
    """
    rows = np.array([edge_index(self.n_inputs, j, g) for g, j in real])
    src = np.array([g - first for g, _ in real], np.int32)
    dst = np.array([offset + j for _, j in real], np.int32)
    branches = _op_branches(self.op_set, {op: module for _, op, module in ops},
                            _out_shape(states.shape[1:], 1, self.channels), update_stats)
    states, _, stats = _run_sampled_edges(branches, states, params, sample.index[rows],
                                          sample.weights[rows], src, dst)
    return states, stats


class SearchCell(nn.Module):
  """A cell of mixed edges: returns the states of its ``n_nodes`` intermediate nodes.

  Attributes:
    op_set: candidate ops on every edge.
    channels: channels of every state inside the cell (inputs must have them already).
    n_inputs: number of input states (2 in DARTS, 1 in NAS-Bench-201).
    n_nodes: number of intermediate nodes.
    reduction: edges leaving the inputs have stride 2.
    affine: affine BatchNorm inside ops (DARTS searches with affine-free BN).
    train: BatchNorm uses batch statistics and updates its running averages.
    scan_nodes: run the edges between intermediate nodes as one ``lax.scan`` (``NodeEdges``);
      False unrolls one group per source node (same results, longer compile).
    scan_inputs: with ``scan_nodes``, run the edges leaving the cell inputs in the same scan
      when they have stride 1 (not in a reduction cell): XLA compiles the ops once per cell
      instead of twice, for ``n_nodes`` slots per input instead of one vmapped group (a DARTS
      cell evaluates 20 edges instead of 17; 14 are real). Same results and parameter count.
    remat: the backward pass recomputes each candidate op's inside from the op's input
      (``jax.checkpoint`` around every op) instead of keeping it: same results, about 20 % more
      FLOPs, and far less memory (benchmarks/RESULTS.md). The sampled path always recomputes.
    pack: with ``scan_nodes``, pack the scan's edges by destination (``scan_schedule``) so that
      nearly every slot is a real edge: a DARTS normal cell with ``scan_inputs`` evaluates 14
      edges instead of 20, a reduction cell 14 instead of 17. Same results and parameters.
    partial_channels: ``P``: PC-DARTS' partial channel connections, the ops on every edge
      built for ``channels / P`` (module docstring); 1 (the default) is off.

  Call with the cell's inputs and its op weights: a dense ``[E, K]`` array or a
  ``dnas.types.SampledOps`` (each edge then computes only its picked op; module docstring).
  """
  op_set: OpSet
  channels: int
  n_inputs: int
  n_nodes: int
  reduction: bool = False
  affine: bool = False
  train: bool = True
  scan_nodes: bool = True
  scan_inputs: bool = False
  remat: bool = True
  pack: bool = False
  partial_channels: int = 1

  @nn.compact
  def __call__(self, inputs: Sequence[jnp.ndarray],
               weights: Union[jnp.ndarray, SampledOps]) -> List[jnp.ndarray]:
    n_edges = edge_count(self.n_inputs, self.n_nodes)
    if len(inputs) != self.n_inputs:
      raise ValueError(f"cell expects {self.n_inputs} inputs, got {len(inputs)}")
    pc = self.partial_channels
    if isinstance(pc, bool) or not isinstance(pc, int) or pc < 1 or self.channels % pc:
      raise ValueError(f"partial_channels must be an int >= 1 dividing the cell's {self.channels} "
                       f"channels, got {pc!r}")
    if pc > 1 and isinstance(weights, SampledOps) and not self.is_initializing():
      raise ValueError("partial channel connections (partial_channels > 1) take dense op "
                       "weights; a sampling strategy's SampledOps is not supported")
    if isinstance(weights, Mapping):
      raise TypeError(f"cell op weights must be an [E, K] array or a SampledOps, got a mapping "
                      f"with keys {sorted(weights)}: architecture parameters with edge weights "
                      f"(model.edge_norm) need a strategy that turns them into op weights "
                      f"(search.strategy='pcdarts')")
    dense = weights.weights if isinstance(weights, SampledOps) else weights
    if dense.shape != (n_edges, len(self.op_set.ops)):
      raise ValueError(f"cell op weights must have shape {(n_edges, len(self.op_set.ops))}, "
                       f"got {dense.shape}")
    if isinstance(weights, SampledOps):
      if weights.index.shape != (n_edges,):
        raise ValueError(f"SampledOps.index must have shape {(n_edges,)}, got "
                         f"{weights.index.shape}")
      if self.is_initializing():
        # Init creates the variables the dense path reads (the sampled path shares them); the
        # one-hot valued weights make it the same function.
        weights = dense
    states = list(inputs)
    if self.scan_nodes and self.scan_inputs and not self.reduction:
      zeros = jnp.zeros((self.n_nodes,) + inputs[0].shape, inputs[0].dtype)
      out = NodeEdges(self.op_set, self.channels, self.n_inputs, self.n_nodes, self.affine,
                      self.train, from_inputs=True, remat=self.remat, pack=self.pack,
                      partial_channels=pc, name="edges")(
                          jnp.concatenate([jnp.stack(states), zeros]), weights)
      return list(out)
    partial = [None] * self.n_nodes
    groups = edge_groups(self.n_inputs, self.n_nodes)
    if self.scan_nodes and self.n_nodes > 1:
      out = self._group(states, groups[0], 0, weights)  # destinations: every node, in order
      out = NodeEdges(self.op_set, self.channels, self.n_inputs, self.n_nodes, self.affine,
                      self.train, remat=self.remat, pack=self.pack, partial_channels=pc,
                      name="edges_from_nodes")(out, weights)
      return list(out)
    for g, group in enumerate(groups):
      sources, edges = group
      dests = sorted({j for _, j in edges})
      out = self._group(states, group, g, weights)
      for d, j in enumerate(dests):
        partial[j] = out[d] if partial[j] is None else partial[j] + out[d]
      # Node g's sum is complete once every earlier source has contributed.
      states.append(partial[g])
    return states[self.n_inputs:]

  def _group(self, states, group, g, weights):
    """The mixed edges of one group, summed per destination node: ``[D, B, H, W, C]``."""
    sources, edges = group
    dests = sorted({j for _, j in edges})
    rows = np.array([edge_index(self.n_inputs, j, s) for s, j in edges])
    route = np.zeros((len(edges), len(dests)), np.float32)
    for e, (_, j) in enumerate(edges):
      route[e, dests.index(j)] = 1.0
    shared = len(sources) == 1
    if isinstance(weights, SampledOps):
      # Each edge reads its source from the stacked sources: no copy per edge.
      xs = states[sources[0]] if shared else jnp.stack([states[s] for s in sources])
      mix = RoutedSample(weights.index[rows], weights.weights[rows],
                         np.array([sources.index(s) for s, _ in edges], np.int32), route)
    else:
      xs = states[sources[0]] if shared else jnp.stack([states[s] for s, _ in edges])
      mix = weights[rows][:, :, None] * route[:, None, :]
    stride = 2 if (self.reduction and g == 0) else 1
    name = f"edges_from_{'inputs' if g == 0 else f'node{g - 1}'}"
    return MixedEdges(self.op_set, self.channels, stride, self.affine, self.train, shared,
                      self.remat, self.partial_channels, name=name)(xs, mix)
