"""Operations registered by name.

An op is a factory ``(channels, stride, *, affine=True) -> flax.linen.Module`` whose module is
called as ``module(x, train)`` on NHWC inputs. A stride-1 op keeps the input's shape; a stride-2
op halves H and W. Factories that take no ``affine`` keyword are called without it.

Example::

    from dnas.ops import register

    @register("conv_3x3")
    def conv_3x3(channels, stride):
        return MyConv(channels, stride)
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Dict, Iterator

import flax.linen as nn

OpFactory = Callable[..., nn.Module]

_REGISTRY: Dict[str, OpFactory] = {}
_TAKES_AFFINE: Dict[str, bool] = {}
_DEPTHWISE: Dict[str, bool] = {}


class UnknownOpError(KeyError):
  """An op name that is not registered."""

  def __str__(self):  # KeyError quotes its message; keep it readable.
    return str(self.args[0])


def register(name: str, *, overwrite: bool = False,
             depthwise: bool = False) -> Callable[[OpFactory], OpFactory]:
  """Registers an op factory under ``name``.

  Args:
    name: the op's name, as it appears in genotypes (e.g. ``"sep_conv_3x3"``).
    overwrite: allow replacing an existing op of the same name.
    depthwise: the op's cost is in depthwise convolutions (``SepConv``, ``DilConv`` or
      ``Conv(..., depthwise=True)`` of ``dnas.ops.layers``). A speed hint, never a change of
      results: on the CPU the supernet then runs the op on a copy of a shared input per edge
      instead of on the one input with the edges' weights side by side, which is faster for the
      shifted-sum depthwise convolution and slower for everything else (``dnas.spaces.cell``).

  Returns:
    A decorator that registers and returns the factory unchanged.

  Raises:
    ValueError: ``name`` is already registered and ``overwrite`` is False.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"op name must be a non-empty string, got {name!r}")

  def decorator(factory: OpFactory) -> OpFactory:
    if name in _REGISTRY and not overwrite:
      raise ValueError(
          f"op {name!r} is already registered; registered ops: {sorted(_REGISTRY)}. "
          "Pass overwrite=True to replace it.")
    _REGISTRY[name] = factory
    _DEPTHWISE[name] = bool(depthwise)
    try:
      params = inspect.signature(factory).parameters
      _TAKES_AFFINE[name] = "affine" in params or any(
          p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
      _TAKES_AFFINE[name] = False
    return factory

  return decorator


def unregister(name: str) -> None:
  """Removes a registered op (mainly for tests)."""
  get(name)
  del _REGISTRY[name]
  del _TAKES_AFFINE[name]
  del _DEPTHWISE[name]


def is_depthwise(name: str) -> bool:
  """Whether op ``name`` was registered with ``depthwise=True``."""
  get(name)
  return _DEPTHWISE[name]


def get(name: str) -> OpFactory:
  """Returns the factory registered under ``name``; the error lists valid names."""
  _ensure_builtins()
  try:
    return _REGISTRY[name]
  except KeyError:
    raise UnknownOpError(
        f"unknown op {name!r}; registered ops: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
  """The registered op names, sorted."""
  _ensure_builtins()
  return sorted(_REGISTRY)


def build(name: str, channels: int, stride: int, *, affine: bool = True) -> nn.Module:
  """Builds op ``name`` for ``channels`` channels and ``stride`` (1 or 2)."""
  factory = get(name)
  if stride not in (1, 2):
    raise ValueError(f"op {name!r}: stride must be 1 or 2, got {stride}")
  if _TAKES_AFFINE[name]:
    return factory(channels, stride, affine=affine)
  return factory(channels, stride)


@contextlib.contextmanager
def temporary(name: str, factory: OpFactory, *, depthwise: bool = False) -> Iterator[None]:
  """Registers ``factory`` as ``name`` for the duration of a ``with`` block."""
  register(name, depthwise=depthwise)(factory)
  try:
    yield
  finally:
    unregister(name)


def _ensure_builtins() -> None:
  # The built-in op sets register themselves on import; importing here keeps
  # `registry.get` complete without import-order rules for users.
  from dnas.ops import darts_ops, nb201_ops  # noqa: F401  pylint: disable=g-import-not-at-top
