"""Discrete search spaces: an architecture is an int32 vector of choices.

A space is a tuple of cardinalities; entry ``i`` of a code vector lies in
``[0, cardinalities[i])``. A ``Space`` turns code vectors into the objects they stand for
(``decode``) and back (``encode``); strategies only ever see the codes.

Built in:

- ``nb201_space()``: NAS-Bench-201's cell (Dong & Yang, ICLR 2020), 6 edges x 5 ops, decoding
  to its arch string. Bound to a table (``nb201_space(table)``), ``table_index(codes)`` is a
  pure ``jnp`` gather giving the table row of a code vector.
- ``darts_space(nodes=4)``: DARTS' cells (Liu et al., ICLR 2019), decoding to a
  ``DartsGenotype``.
- ``categorical_space({name: choices})``: any named choices, decoding to a dict.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

from dnas import genotypes
from dnas.ops import sets

# Codes beyond int32 cannot be flattened into one table row index.
_MAX_FLAT = 2 ** 31 - 1


class SpaceError(ValueError):
  """An object outside a space, or a space used in a way it does not support."""


@dataclasses.dataclass(frozen=True, eq=False)
class Space:
  """A discrete search space.

  Attributes:
    name: a short name for messages.
    cardinalities: the number of choices of every dimension.
    dim_names: a name per dimension (for messages and plots).
    encode_fn: object -> sequence of ints.
    decode_fn: sequence of ints -> object.
    key_fn: object -> the key a benchmark table lists it under (None: not table-backed).
    lookup: ``[prod(cardinalities)]`` int32, table row of every flat code (None: unbound).
  """
  name: str
  cardinalities: Tuple[int, ...]
  dim_names: Tuple[str, ...]
  encode_fn: Callable[[Any], Sequence[int]]
  decode_fn: Callable[[Sequence[int]], Any]
  key_fn: Optional[Callable[[Any], str]] = None
  lookup: Optional[Any] = None

  def __post_init__(self):
    if not self.cardinalities or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.cardinalities):
      raise SpaceError(f"space {self.name!r}: cardinalities must be positive ints, got "
                       f"{self.cardinalities!r}")
    if len(self.dim_names) != len(self.cardinalities):
      raise SpaceError(f"space {self.name!r}: {len(self.dim_names)} names for "
                       f"{len(self.cardinalities)} dimensions")

  @property
  def num_dims(self) -> int:
    return len(self.cardinalities)

  @property
  def size(self) -> int:
    """The number of architectures in the space."""
    return math.prod(self.cardinalities)

  def check(self, codes: Any) -> np.ndarray:
    """``codes`` as an int32 numpy vector, after checking every entry is in range."""
    a = np.asarray(codes)
    if a.shape != (self.num_dims,) or not np.issubdtype(a.dtype, np.integer):
      raise SpaceError(f"space {self.name!r}: codes must be {self.num_dims} ints, got "
                       f"{a.dtype} of shape {a.shape}")
    for i, (v, c) in enumerate(zip(a.tolist(), self.cardinalities)):
      if not 0 <= v < c:
        raise SpaceError(f"space {self.name!r}: dimension {i} ({self.dim_names[i]}) is {v}, "
                         f"must be in [0, {c})")
    return a.astype(np.int32)

  def encode(self, obj: Any) -> np.ndarray:
    """The int32 code vector of ``obj``."""
    return self.check(np.asarray(self.encode_fn(obj), np.int64))

  def decode(self, codes: Any) -> Any:
    """The object a code vector stands for."""
    return self.decode_fn(tuple(int(v) for v in self.check(codes)))

  def flat_index(self, codes: Any) -> Any:
    """Mixed-radix number of ``codes`` (dimension 0 most significant); pure ``jnp``."""
    if self.size > _MAX_FLAT:
      raise SpaceError(f"space {self.name!r} has {self.size} architectures, too many to number "
                       f"with int32")
    strides = np.cumprod((1,) + self.cardinalities[:0:-1])[::-1]
    return jnp.sum(jnp.asarray(codes, jnp.int32) * jnp.asarray(strides, jnp.int32), axis=-1)

  def all_codes(self) -> np.ndarray:
    """``[size, num_dims]`` int32, every code vector in ``flat_index`` order."""
    if self.size > 10 ** 7:
      raise SpaceError(f"space {self.name!r} has {self.size} architectures, too many to list")
    return np.array(list(itertools.product(*(range(c) for c in self.cardinalities))),
                    np.int32).reshape(self.size, self.num_dims)

  def with_table(self, table: Any) -> "Space":
    """This space bound to ``table``: ``table_index`` gives each code's row of ``table``.

    Raises:
      SpaceError: the space has no table keys, or the table lacks one of its architectures.
    """
    if self.key_fn is None:
      raise SpaceError(f"space {self.name!r} does not name table rows; it cannot be bound to "
                       f"table {getattr(table, 'name', table)!r}")
    codes = self.all_codes()
    lookup = np.empty(self.size, np.int32)
    for flat, c in enumerate(codes):
      key = self.key_fn(self.decode_fn(tuple(int(v) for v in c)))
      try:
        lookup[flat] = table.row_of(key)
      except (KeyError, ValueError) as e:
        raise SpaceError(f"space {self.name!r}: table {table.name!r} lacks {key} ({e})") from None
    if len(np.unique(lookup)) != self.size:
      raise SpaceError(f"space {self.name!r}: two architectures map to one row of table "
                       f"{table.name!r}")
    return dataclasses.replace(self, lookup=jnp.asarray(lookup))

  def table_index(self, codes: Any) -> Any:
    """The table row of ``codes`` (``[..., num_dims]`` -> ``[...]``), a pure ``jnp`` gather."""
    if self.lookup is None:
      raise SpaceError(f"space {self.name!r} is not bound to a table; use "
                       f"space.with_table(table) (or nb201_space(table))")
    return self.lookup[self.flat_index(codes)]


# --- NAS-Bench-201 ---------------------------------------------------------------------------

# NAS-Bench-201's edges in arch-string order: (node, source) for nodes 1..3.
NB201_EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


def _nb201_encode(obj: Any) -> Sequence[int]:
  ops = sets.get("nb201").ops
  g = obj if isinstance(obj, genotypes.NB201Genotype) else None
  if g is None:
    try:
      g = genotypes.NB201Genotype.from_arch(obj)
    except genotypes.GenotypeError as e:
      raise SpaceError(f"nb201 space: {obj!r} is not an NB201 arch string ({e})") from None
  edges = {(i + 1, s): op for i, node in enumerate(g.nodes) for op, s in node}
  if set(edges) != set(NB201_EDGES):
    raise SpaceError(f"nb201 space: {g.arch!r} is not a 4-node NB201 cell")
  out = []
  for e in NB201_EDGES:
    if edges[e] not in ops:
      raise SpaceError(f"nb201 space: op {edges[e]!r} of {g.arch!r} is not one of {list(ops)}")
    out.append(ops.index(edges[e]))
  return out


def _nb201_decode(codes: Sequence[int]) -> str:
  ops = sets.get("nb201").ops
  nodes = [[] for _ in range(3)]
  for (node, src), c in zip(NB201_EDGES, codes):
    nodes[node - 1].append(f"{ops[c]}~{src}")
  return "+".join("|" + "|".join(n) + "|" for n in nodes)


def nb201_space(table: Any = None) -> Space:
  """NAS-Bench-201's cell space: 6 edges x 5 ops, 15,625 cells (Dong & Yang, ICLR 2020).

  Dimension ``i`` is the op (index into ``sets.get("nb201").ops``) on edge ``NB201_EDGES[i]``,
  the order of NB201's arch strings. NB201's own index does not follow any base-5 ordering of
  these codes, so ``table_index`` gathers from a lookup array built from the table.

  Args:
    table: a table keyed by NB201 arch strings (``load_nb201()``) to bind, or None.

  Returns:
    A ``Space`` decoding to arch strings.
  """
  ops = sets.get("nb201").ops
  space = Space("nb201", (len(ops),) * len(NB201_EDGES),
                tuple(f"edge_{n}<-{s}" for n, s in NB201_EDGES), _nb201_encode, _nb201_decode,
                key_fn=lambda arch: arch)
  return space if table is None else space.with_table(table)


# --- DARTS -----------------------------------------------------------------------------------


def _source_pairs(node: int) -> Tuple[Tuple[int, int], ...]:
  """The distinct input pairs ``a < b`` of intermediate node ``node`` (states 0..node+1)."""
  return tuple(itertools.combinations(range(node + 2), 2))


def darts_space(nodes: int = 4) -> Space:
  """DARTS' genotype space (Liu et al., "DARTS: Differentiable Architecture Search", ICLR 2019).

  For the normal then the reduction cell, each intermediate node ``i`` takes two inputs from
  distinct earlier states, each through one of DARTS' 7 non-``none`` ops. Per node three
  dimensions: the op on its lower-numbered input, the op on its higher one, and the pair of
  inputs ``a < b`` as one categorical over the ``C(i + 2, 2)`` pairs (distinct by
  construction). All intermediate nodes are concatenated, as in DARTS.

  Args:
    nodes: intermediate nodes per cell.

  Returns:
    A ``Space`` of ``6 * nodes`` dimensions decoding to a ``DartsGenotype``.
  """
  if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
    raise SpaceError(f"darts_space: nodes must be a positive int, got {nodes!r}")
  ops = tuple(op for op in sets.get("darts").ops if op != "none")
  cards, names = [], []
  for cell in ("normal", "reduce"):
    for i in range(nodes):
      cards += [len(ops), len(ops), len(_source_pairs(i))]
      names += [f"{cell}_{i}_op_a", f"{cell}_{i}_op_b", f"{cell}_{i}_inputs"]
  concat = tuple(range(2, nodes + 2))

  def decode(codes):
    cells = []
    for c in range(2):
      edges = []
      for i in range(nodes):
        op_a, op_b, pair = codes[(c * nodes + i) * 3:(c * nodes + i) * 3 + 3]
        a, b = _source_pairs(i)[pair]
        edges += [(ops[op_a], a), (ops[op_b], b)]
      cells.append(tuple(edges))
    return genotypes.DartsGenotype(cells[0], concat, cells[1], concat)

  def encode(g):
    if not isinstance(g, genotypes.DartsGenotype):
      raise SpaceError(f"darts space: expected a DartsGenotype, got {type(g).__name__}")
    out = []
    for field in ("normal", "reduce"):
      edges = tuple(getattr(g, field))
      if len(edges) != 2 * nodes:
        raise SpaceError(f"darts space: '{field}' has {len(edges) // 2} nodes, the space has "
                         f"{nodes}")
      for i in range(nodes):
        (op_x, x), (op_y, y) = sorted(edges[2 * i:2 * i + 2], key=lambda e: e[1])
        if x == y:
          raise SpaceError(f"darts space: '{field}' node {i} takes input {x} twice; inputs "
                           f"must be distinct")
        for op in (op_x, op_y):
          if op not in ops:
            raise SpaceError(f"darts space: '{field}' node {i}: op {op!r} is not one of "
                             f"{list(ops)}")
        if (x, y) not in _source_pairs(i):
          raise SpaceError(f"darts space: '{field}' node {i}: inputs {(x, y)} must be in "
                           f"[0, {i + 2})")
        out += [ops.index(op_x), ops.index(op_y), _source_pairs(i).index((x, y))]
    return out

  return Space(f"darts{nodes}", tuple(cards), tuple(names), encode, decode)


# --- Generic categorical choices ------------------------------------------------------------


def categorical_space(choices: Mapping[str, Sequence[Any]], name: str = "categorical"
                      ) -> Space:
  """A space of named categorical choices (layer types, widths, hyperparameters).

  Example::

      space = categorical_space({"width": [16, 32, 64], "act": ["relu", "gelu"]})
      space.decode([2, 0])   # {"width": 64, "act": "relu"}

  Args:
    choices: name -> its possible values, in a fixed order (the dimensions' order).
    name: the space's name in messages.

  Returns:
    A ``Space`` decoding to a dict ``{name: value}``.
  """
  if not isinstance(choices, Mapping) or not choices:
    raise SpaceError(f"categorical_space {name!r}: expected a non-empty dict of name -> list "
                     f"of choices, got {choices!r}")
  items: Dict[str, Tuple[Any, ...]] = {}
  for k, values in choices.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise SpaceError(f"categorical_space {name!r}: choices[{k!r}] must be a non-empty list, "
                       f"got {values!r}")
    items[k] = tuple(values)
  keys = tuple(items)

  def decode(codes):
    return {k: items[k][c] for k, c in zip(keys, codes)}

  def encode(obj):
    if not isinstance(obj, Mapping) or set(obj) != set(keys):
      raise SpaceError(f"categorical_space {name!r}: expected a dict with keys {list(keys)}, "
                       f"got {obj!r}")
    out = []
    for k in keys:
      if obj[k] not in items[k]:
        raise SpaceError(f"categorical_space {name!r}: {k}={obj[k]!r} is not one of "
                         f"{list(items[k])}")
      out.append(items[k].index(obj[k]))
    return out

  return Space(name, tuple(len(items[k]) for k in keys), keys, encode, decode)
