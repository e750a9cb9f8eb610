"""Op sets: the ordered candidate ops of a search space's mixed edges."""

from __future__ import annotations

import inspect
from typing import Any, Dict, NamedTuple, Tuple

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


# Op sets by name (``config.model.op_set``); the built-ins first.
_REGISTRY: Dict[str, OpSet] = {}
_REGISTERED_BY: Dict[str, Any] = {}


class UnknownOpSetError(KeyError):
  """An op set name that is not registered."""

  def __str__(self):
    return str(self.args[0])


def register(op_set: OpSet, *, overwrite: bool = False) -> OpSet:
  """Registers ``op_set`` under ``op_set.name`` (its ops need not be registered yet).

  Returns:
    ``op_set``, so that ``MY_SET = register(OpSet("mine", (...)))`` reads naturally.

  Raises:
    ValueError: the name is taken and ``overwrite`` is False.
  """
  if not isinstance(op_set, OpSet):
    raise TypeError(f"register takes an OpSet, got {type(op_set).__name__}")
  if op_set.name in _REGISTRY and not overwrite:
    raise ValueError(f"op set {op_set.name!r} is already registered; registered op sets: "
                     f"{sorted(_REGISTRY)}. Pass overwrite=True to replace it.")
  _REGISTRY[op_set.name] = op_set
  frame = inspect.currentframe().f_back
  _REGISTERED_BY[op_set.name] = frame.f_globals.get("__name__") if frame else None
  return op_set


def unregister(name: str) -> None:
  """Removes a registered op set (mainly for tests)."""
  get(name)
  del _REGISTRY[name]
  _REGISTERED_BY.pop(name, None)


def get(name: str) -> OpSet:
  """The op set registered as ``name``; the error lists the valid names."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise UnknownOpSetError(f"config.model.op_set: unknown op set {name!r}; registered op sets: "
                            f"{', '.join(sorted(_REGISTRY))} (or list the ops in "
                            f"config.model.ops)") from None


def names() -> list:
  """The registered op set names, sorted."""
  return sorted(_REGISTRY)


def registered_by(name: str) -> Any:
  """The name of the module that registered op set ``name`` (None if unknown)."""
  get(name)
  return _REGISTERED_BY.get(name)


register(DARTS)
register(NB201)
