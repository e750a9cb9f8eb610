"""Genotypes: the discrete cells a search produces, as plain records saved to JSON.

DARTS space (Liu et al., 2019)::

    {"space": "darts",
     "normal": [["sep_conv_3x3", 0], ...],   # two (op, source) pairs per node
     "normal_concat": [2, 3, 4, 5],
     "reduce": [...], "reduce_concat": [2, 3, 4, 5]}

Sources count the two cell inputs as 0 and 1 and intermediate node ``i`` as ``i + 2``.

NAS-Bench-201 space (Dong & Yang, 2020), in NAS-Bench-201's own arch-string format::

    {"space": "nb201",
     "arch": "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"}
"""

from __future__ import annotations

import json
from typing import Any, Dict, NamedTuple, Sequence, Tuple, Union

from dnas import io
from dnas.ops import registry

Edge = Tuple[str, int]


class GenotypeError(ValueError):
  """A malformed genotype; the message names the file and the field."""


class DartsGenotype(NamedTuple):
  normal: Tuple[Edge, ...]
  normal_concat: Tuple[int, ...]
  reduce: Tuple[Edge, ...]
  reduce_concat: Tuple[int, ...]

  space = "darts"

  @property
  def nodes(self) -> int:
    return len(self.normal) // 2

  @property
  def ops(self) -> Tuple[str, ...]:
    """The op of every edge, normal cell then reduction cell."""
    return tuple(op for op, _ in tuple(self.normal) + tuple(self.reduce))

  def to_json(self) -> Dict[str, Any]:
    return {"space": "darts",
            "normal": [[op, s] for op, s in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, s] for op, s in self.reduce],
            "reduce_concat": list(self.reduce_concat)}


class NB201Genotype(NamedTuple):
  """A NAS-Bench-201 cell: ``nodes[i]`` lists ``(op, source)`` for node ``i + 1``."""
  nodes: Tuple[Tuple[Edge, ...], ...]

  space = "nb201"

  @property
  def ops(self) -> Tuple[str, ...]:
    """The op of every edge, node by node."""
    return tuple(op for node in self.nodes for op, _ in node)

  @property
  def arch(self) -> str:
    return "+".join("|" + "|".join(f"{op}~{s}" for op, s in node) + "|" for node in self.nodes)

  def to_json(self) -> Dict[str, Any]:
    return {"space": "nb201", "arch": self.arch}

  @classmethod
  def from_arch(cls, arch: str, where: str = "arch") -> "NB201Genotype":
    """Parses an NB201 arch string such as ``|nor_conv_3x3~0|+|...|``."""
    if not isinstance(arch, str) or not arch:
      raise GenotypeError(f"{where}: expected an NB201 arch string, got {arch!r}")
    nodes = []
    for i, part in enumerate(arch.split("+")):
      if not (part.startswith("|") and part.endswith("|")) or len(part) < 3:
        raise GenotypeError(f"{where}: node {i + 1} {part!r} is not of the form |op~src|...|")
      edges = []
      for item in part[1:-1].split("|"):
        op, sep, src = item.partition("~")
        if not sep or not (src.isascii() and src.isdigit()):  # int() takes other digits too
          raise GenotypeError(f"{where}: edge {item!r} of node {i + 1} is not 'op~source'")
        edges.append((op, int(src)))
      nodes.append(tuple(edges))
    g = cls(tuple(nodes))
    validate(g, where)
    return g


Genotype = Union[DartsGenotype, NB201Genotype]


def _known_op(op: Any, where: str) -> None:
  if not isinstance(op, str):
    raise GenotypeError(f"{where}: op must be a string, got {op!r}")
  try:
    registry.get(op)
  except registry.UnknownOpError as e:
    raise GenotypeError(f"{where}: {e}") from None


def validate(g: Genotype, where: str = "genotype") -> Genotype:
  """Checks ops exist and every edge's source precedes its node; returns ``g``."""
  if isinstance(g, DartsGenotype):
    for field in ("normal", "reduce"):
      edges = getattr(g, field)
      if len(edges) == 0 or len(edges) % 2:
        raise GenotypeError(f"{where}: '{field}' must hold two (op, source) pairs per node, "
                            f"got {len(edges)} pairs")
      for i, (op, src) in enumerate(edges):
        _known_op(op, f"{where}: {field}[{i}]")
        node = i // 2
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < node + 2:
          raise GenotypeError(f"{where}: {field}[{i}] source {src!r} must be an int in "
                              f"[0, {node + 2}) for node {node}")
      concat = getattr(g, field + "_concat")
      n_states = len(edges) // 2 + 2
      if not concat or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n_states
                           for c in concat):
        raise GenotypeError(f"{where}: '{field}_concat' must list states in [0, {n_states}), "
                            f"got {list(concat)!r}")
  elif isinstance(g, NB201Genotype):
    if not g.nodes:
      raise GenotypeError(f"{where}: an NB201 cell needs at least one node")
    for i, node in enumerate(g.nodes):
      sources = sorted(src for _, src in node)
      if sources != list(range(i + 1)):
        raise GenotypeError(f"{where}: node {i + 1} must have one edge from each of sources "
                            f"0..{i} ({i + 1} edges), got sources {sources}")
      for op, src in node:
        _known_op(op, f"{where}: node {i + 1}")
        if not 0 <= src <= i:
          raise GenotypeError(f"{where}: node {i + 1} has source {src}; sources must be < {i + 1}")
  else:
    raise GenotypeError(f"{where}: not a genotype: {type(g).__name__}")
  return g


def _pairs(value: Any, where: str) -> Tuple[Edge, ...]:
  if not isinstance(value, (list, tuple)):
    raise GenotypeError(f"{where}: expected a list of [op, source] pairs, got {value!r}")
  out = []
  for i, pair in enumerate(value):
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
      raise GenotypeError(f"{where}[{i}]: expected [op, source], got {pair!r}")
    out.append((pair[0], pair[1]))
  return tuple(out)


def from_json(obj: Any, where: str = "genotype") -> Genotype:
  """Builds and validates a genotype from its JSON form."""
  if not isinstance(obj, dict):
    raise GenotypeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  space = obj.get("space")
  if space == "darts":
    fields = ("normal", "normal_concat", "reduce", "reduce_concat")
    missing = [f for f in fields if f not in obj]
    extra = sorted(set(obj) - set(fields) - {"space"})
    if missing or extra:
      raise GenotypeError(f"{where}: DARTS genotype needs keys {list(fields)}; "
                          f"missing {missing}, unknown {extra}")
    for f in ("normal_concat", "reduce_concat"):
      if not isinstance(obj[f], (list, tuple)):
        raise GenotypeError(f"{where}: '{f}' must be a list of ints, got {obj[f]!r}")
    g = DartsGenotype(_pairs(obj["normal"], f"{where}: normal"), tuple(obj["normal_concat"]),
                      _pairs(obj["reduce"], f"{where}: reduce"), tuple(obj["reduce_concat"]))
    return validate(g, where)
  if space == "nb201":
    extra = sorted(set(obj) - {"space", "arch"})
    if "arch" not in obj or extra:
      raise GenotypeError(f"{where}: NB201 genotype needs keys ['space', 'arch']; unknown {extra}")
    return NB201Genotype.from_arch(obj["arch"], f"{where}: arch")
  raise GenotypeError(f"{where}: 'space' must be 'darts' or 'nb201', got {space!r}")


def save(g: Genotype, path: str) -> None:
  """Writes ``g`` to ``path`` as JSON, atomically."""
  io.atomic_write_json(path, g.to_json())


def load(path: str) -> Genotype:
  """Reads a genotype JSON file; errors name the file and the field."""
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise GenotypeError(f"genotype file not found: {path}") from None
  except OSError as e:  # a folder, no permission
    raise GenotypeError(f"{path}: cannot be read ({e.strerror or e})") from None
  except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, nested too deep
    raise GenotypeError(f"{path}: not valid JSON ({type(e).__name__}: {e})") from None
  return from_json(obj, where=path)


def darts(normal: Sequence[Edge], reduce: Sequence[Edge],
          normal_concat: Sequence[int] = (2, 3, 4, 5),
          reduce_concat: Sequence[int] = (2, 3, 4, 5)) -> DartsGenotype:
  """Convenience constructor for DARTS-space genotypes (validated)."""
  g = DartsGenotype(tuple((op, s) for op, s in normal), tuple(normal_concat),
                    tuple((op, s) for op, s in reduce), tuple(reduce_concat))
  return validate(g)


