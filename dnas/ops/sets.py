"""Op sets: the ordered candidate ops of a search space's mixed edges."""

from __future__ import annotations

from typing import NamedTuple, Tuple

from dnas.ops import registry


class OpSet(NamedTuple):
  """An ordered set of candidate ops.

  Attributes:
    name: a short name (``"darts"``, ``"nb201"``, or the user's).
    ops: op names in the order of alpha's last axis.
    bn_after: ops followed by an affine-free BatchNorm inside a search mixed op (DARTS puts one
      after each pooling op so that parameter-free ops are on the same scale as the convs).
  """
  name: str
  ops: Tuple[str, ...]
  bn_after: Tuple[str, ...] = ()

  def validate(self) -> "OpSet":
    if not self.ops:
      raise ValueError(f"op set {self.name!r} has no ops")
    if len(set(self.ops)) != len(self.ops):
      raise ValueError(f"op set {self.name!r} lists an op twice: {self.ops}")
    for op in self.ops + self.bn_after:
      registry.get(op)  # raises, listing valid names
    for op in self.bn_after:
      if op not in self.ops:
        raise ValueError(f"op set {self.name!r}: bn_after names {op!r}, not one of {self.ops}")
    return self

  def index(self, op: str) -> int:
    try:
      return self.ops.index(op)
    except ValueError:
      raise ValueError(f"op {op!r} is not in op set {self.name!r}: {list(self.ops)}") from None


DARTS = OpSet(
    "darts",
    ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
     "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"),
    bn_after=("max_pool_3x3", "avg_pool_3x3"))

NB201 = OpSet("nb201", ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))
