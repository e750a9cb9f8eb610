"""Parameter and multiply-accumulate counts of NAS-Bench-201 cells in dnas' NB201 network.

The network is ``eval_net.NB201Network`` at NAS-Bench-201's size (C=16, N=5 cells per stage,
one 32x32x3 CIFAR-10 image, 10 classes). Two exact figures per cell:

- ``params``: ``eval_net.param_count`` (PyTorch's ``sum(p.numel())``).
- ``macs``: multiply-accumulates of the convolutions and dense layers of the inference forward
  pass, read from its traced jaxpr (``count_macs``): for ``conv_general_dilated``, output
  elements x kernel input channels (input channels / ``feature_group_count``) x kernel height
  x kernel width; for ``dot_general``, output elements x the contracted size. Taps over zero
  padding count (a 3x3 convolution at HxW costs ``H W 9 C_in C_out``). ReLU, BatchNorm,
  pooling, additions and biases count nothing. Every op of the cell counts, also on an edge
  whose result never reaches the cell's output: the count is of the network as written, not
  of what a compiler keeps.

This is NAS-Bench-201's convention (Dong & Yang, ICLR 2020; its ``get_model_infos`` sums the
forward hooks of ``nn.Conv2d`` and ``nn.Linear`` modules: ``k_h k_w C_in C_out / groups`` per
output position, plus, for the classifier, one addition per output for its bias; every module
that runs counts, whether or not its output is used). dnas' network is the same network, so
``macs`` is NAS-Bench-201's FLOPs minus the classifier's 10 bias additions: 7,783,040 for a
cell without convolutions (NAS-Bench-201: 7.78M) and 220,119,680 for the all-``nor_conv_3x3``
cell (220.12M, listed truncated as 220.11M).

Because nothing is simplified away, ``macs`` is additive: a backbone (stem, the two residual
blocks, classifier) plus, for every edge, the MACs of its op summed over the ``3 N`` cells.
``nb201_cost`` sums those contributions, measured once from 25 traced networks, so the table
of all 15,625 cells takes seconds; the tests check the sum equals a full trace on random cells.

``network_cost`` is a different figure: XLA's cost analysis of the compiled network, the
``flops`` that ``dnas info`` prints. It counts a multiply-add as two flops, also elementwise
work, and only what survives compilation (dead code goes; fused elementwise producers count
once per consumer), so it is neither additive over edges nor comparable with papers' FLOPs.
"""

from __future__ import annotations

import functools
import hashlib
import io as io_lib
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from dnas import bench, eval_net, io
from dnas.data import sources as data_sources
from dnas.genotypes import NB201Genotype

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_EDGES = 6
CHANNELS, CELLS_PER_STAGE, NUM_CLASSES, IMAGE_SHAPE = 16, 5, 10, (32, 32, 3)
# The sources whose code determines the figures; a change to any invalidates cached tables.
_SOURCES = ("costs.py", "eval_net.py", "genotypes.py", "spaces/common.py", "ops/layers.py",
            "ops/nb201_ops.py", "ops/darts_ops.py", "ops/registry.py")


def _eqn_macs(eqn) -> int:
  name = eqn.primitive.name
  out = math.prod(eqn.outvars[0].aval.shape)
  if name == "conv_general_dilated":
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    return out * math.prod(kernel[d] for d in spec[1:])
  if name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return out * math.prod(lhs[d] for d in contract)
  return 0


def jaxpr_macs(jaxpr: jcore.Jaxpr) -> int:
  """Multiply-accumulates of the convolutions and matrix products in ``jaxpr``.

  Walks into nested jaxprs (``jit``, ``custom_jvp``/``custom_vjp`` calls, ``remat``); a
  ``scan`` body counts ``length`` times, a ``cond`` counts its branches' MACs if they agree.

  Args:
    jaxpr: a ``Jaxpr`` (``jax.make_jaxpr(fn)(*args).jaxpr``).

  Returns:
    The MAC count (module docstring for the formulas).

  Raises:
    ValueError: a ``while`` loop containing MACs (its trip count is unknown), or a ``cond``
      whose branches differ.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    total += _eqn_macs(eqn)
    if name == "cond":
      counts = {jaxpr_macs(b.jaxpr) for b in eqn.params["branches"]}
      if len(counts) > 1:
        raise ValueError(f"cond branches have different MAC counts {sorted(counts)}")
      total += counts.pop()
      continue
    inner = 0
    for v in eqn.params.values():
      if isinstance(v, jcore.ClosedJaxpr):
        inner += jaxpr_macs(v.jaxpr)
      elif isinstance(v, jcore.Jaxpr):
        inner += jaxpr_macs(v)
    if name == "while" and inner:
      raise ValueError("a while loop with convolutions or matrix products has no fixed MACs")
    total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def count_macs(fn: Callable[..., Any], *args) -> int:
  """MACs of ``fn(*args)`` by tracing it (no compilation; ``args`` may be shape structs).

  Example::

    count_macs(lambda a, b: a @ b, jnp.ones((2, 3)), jnp.ones((3, 4)))  # 24
  """
  return jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _network(arch: str, channels: int, cells_per_stage: int):
  model = eval_net.NB201Network(arch, NUM_CLASSES, channels, cells_per_stage)
  x = jax.ShapeDtypeStruct((1,) + IMAGE_SHAPE, jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=True), x)
  return (lambda v, im: model.apply(v, im, train=False)[0]), shapes, x, model


def network_macs(arch: str, channels: int = CHANNELS,
                 cells_per_stage: int = CELLS_PER_STAGE) -> int:
  """MACs of one NB201 network's inference pass on one image, by tracing it (about 1 s)."""
  forward, shapes, x, _ = _network(arch, channels, cells_per_stage)
  return count_macs(forward, shapes, x)


def network_cost(arch: str, channels: int = CHANNELS,
                 cells_per_stage: int = CELLS_PER_STAGE) -> Dict[str, int]:
  """Params and XLA flops of one NB201 network, compiled as ``dnas info`` compiles it.

  ``xla_flops`` is XLA's cost analysis of ``jit(model.apply(v, image, train=False)[0])`` on one
  ``32x32x3`` image, compiled with default options: ``dnas info``'s ``flops`` for this network
  (``experiments/train_cifar10.py:nb201``). Backend-dependent and not additive over edges
  (module docstring); tens of seconds per network on a CPU. Use ``nb201_cost``'s ``macs`` to
  compare cells.

  Returns:
    ``{"params": int, "xla_flops": int}``.
  """
  forward, shapes, x, model = _network(arch, channels, cells_per_stage)
  compiled = jax.jit(forward).lower(shapes, x).compile()
  return {"params": eval_net.param_count(model, x.shape),
          "xla_flops": int(bench.xla_cost(compiled)["flops"])}


def _arch(ops) -> str:
  o = list(ops)
  return f"|{o[0]}~0|+|{o[1]}~0|{o[2]}~1|+|{o[3]}~0|{o[4]}~1|{o[5]}~2|"


def _uniform(op: str) -> str:
  return _arch([op] * NUM_EDGES)


@functools.lru_cache(maxsize=None)
def _param_table(channels: int, cells_per_stage: int) -> Tuple[int, Dict[str, int]]:
  """(backbone params, per-edge params of each op summed over all cells)."""
  count = lambda arch: eval_net.param_count(
      eval_net.NB201Network(arch, NUM_CLASSES, channels, cells_per_stage), (1,) + IMAGE_SHAPE)
  base = count(_uniform("none"))
  return base, {op: (count(_uniform(op)) - base) // NUM_EDGES for op in NB201_OPS}


@functools.lru_cache(maxsize=None)
def _mac_table(channels: int, cells_per_stage: int) -> Tuple[int, np.ndarray]:
  """(backbone MACs, ``[6, 5]`` MACs of op ``NB201_OPS[k]`` on edge ``e`` over all cells).

  Each contribution is the trace of a network with that one edge set and every other edge
  ``none``, less the all-``none`` network: 25 traces.
  """
  base = network_macs(_uniform("none"), channels, cells_per_stage)
  table = np.zeros((NUM_EDGES, len(NB201_OPS)), np.int64)
  for e in range(NUM_EDGES):
    for k, op in enumerate(NB201_OPS[1:], 1):
      ops = ["none"] * NUM_EDGES
      ops[e] = op
      table[e, k] = network_macs(_arch(ops), channels, cells_per_stage) - base
  return base, table


def _op_indices(arch: str) -> list:
  ops = NB201Genotype.from_arch(arch).ops
  bad = [op for op in ops if op not in NB201_OPS]
  if bad or len(ops) != NUM_EDGES:
    raise ValueError(f"{arch!r} is not a NAS-Bench-201 cell (6 edges over {NB201_OPS})")
  return [NB201_OPS.index(op) for op in ops]


def nb201_cost(arch: str, channels: int = CHANNELS,
               cells_per_stage: int = CELLS_PER_STAGE) -> Dict[str, int]:
  """Params and MACs of NAS-Bench-201 cell ``arch`` in dnas' NB201 network (both exact).

  Sums per-edge contributions measured once per ``(channels, cells_per_stage)`` (the first
  call traces ~30 networks, about 30 s at C=16, N=5; later calls take microseconds). Equal to
  ``eval_net.param_count`` and ``network_macs`` of the whole network.

  Args:
    arch: an NB201 arch string (``"|nor_conv_3x3~0|+|...|"``) over NB201's five ops.
    channels: ``C`` (16 in NAS-Bench-201).
    cells_per_stage: ``N`` (5).

  Returns:
    ``{"params": int, "macs": int}``; ``macs`` is NAS-Bench-201's FLOPs less 10 (module
    docstring).
  """
  idx = _op_indices(arch)
  pbase, per_op = _param_table(channels, cells_per_stage)
  mbase, per_edge = _mac_table(channels, cells_per_stage)
  return {"params": int(pbase + sum(per_op[NB201_OPS[k]] for k in idx)),
          "macs": int(mbase + sum(per_edge[e, k] for e, k in enumerate(idx)))}


def source_hash() -> str:
  """A hash of the dnas sources that determine the table and of JAX's version.

  The figures do not depend on the backend or on how a convolution is implemented (a native
  convolution and dnas' im2col product have the same MACs), so neither is part of the key.
  """
  root = os.path.dirname(os.path.abspath(__file__))
  h = hashlib.sha256()
  for rel in _SOURCES:
    h.update(rel.encode())
    with open(os.path.join(root, rel), "rb") as f:
      h.update(f.read())
  h.update(f"jax={jax.__version__}".encode())
  return h.hexdigest()[:16]


def default_nb201_dir() -> str:
  """``$DNAS_NB201_DIR``, else ``<repo>/../shared/nasbench``."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.environ.get("DNAS_NB201_DIR",
                        os.path.join(repo, "..", "shared", "nasbench"))


def default_cache_dir() -> str:
  """``$DNAS_CACHE_DIR``, else ``~/.cache/dnas`` (``dnas.data.default_cache_dir``)."""
  return data_sources.default_cache_dir()


def read_nb201_archs(nb201_dir: Optional[str] = None) -> list:
  """The arch strings of ``nb201_hp12.csv`` in NAS-Bench-201's index order
  (``dnas.benchmarks.load_nb201``)."""
  from dnas import benchmarks  # pylint: disable=g-import-not-at-top
  table = benchmarks.load_nb201(nb201_dir or default_nb201_dir(), latency=False)
  if not np.array_equal(table.index, np.arange(len(table))):
    raise ValueError(f"{nb201_dir or default_nb201_dir()}: nb201_hp12.csv's rows are not in "
                     f"index order")
  return list(table.archs)


def _save_atomic(path: str, arrays: Dict[str, np.ndarray]) -> None:
  buf = io_lib.BytesIO()
  np.savez(buf, **arrays)
  io.atomic_write_bytes(path, buf.getvalue())


def nb201_cost_table(nb201_dir: Optional[str] = None,
                     cache_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
  """Params and MACs of all NAS-Bench-201 cells in dnas' NB201 network, in its index order.

  Read from ``<cache_dir>/nb201_costs-<source_hash()>.npz`` if present; otherwise computed
  with ``nb201_cost`` (about 30 s, nearly all of it the first call's traces) and written there
  atomically (a temporary file in the same folder, then ``os.replace``), so a reader never
  sees a partial table and a changed source never reuses a stale one.

  Args:
    nb201_dir: folder of ``nb201_hp12.csv`` (default ``default_nb201_dir()``).
    cache_dir: cache folder (default ``default_cache_dir()``).

  Returns:
    ``{"index": int64[15625], "params": int64[15625], "macs": int64[15625]}``.
  """
  path = os.path.join(cache_dir or default_cache_dir(), f"nb201_costs-{source_hash()}.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  archs = read_nb201_archs(nb201_dir)
  costs = [nb201_cost(a) for a in archs]
  table = {"index": np.arange(len(archs), dtype=np.int64),
           "params": np.array([c["params"] for c in costs], np.int64),
           "macs": np.array([c["macs"] for c in costs], np.int64)}
  _save_atomic(path, table)
  return table
