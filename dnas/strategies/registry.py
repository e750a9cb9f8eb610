"""Strategies registered by name, with their config options.

A config names its strategy as ``search.strategy`` and gives its options under
``search.<name>``; the loop builds it with ``build(name, options, context)``. A strategy is
registered with the defaults of every option it takes, so that a misspelt or mistyped option
fails before anything runs, naming ``search.<name>.<key>``.

Example (a user's module, listed in the config's ``imports``)::

    from dnas.strategies import registry, softmax_mix, Strategy

    @registry.register("my_strategy", defaults={"temperature": 1.0})
    def build(options, context):
      return Strategy(init=..., mix=..., arch_grad=...)
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional

from dnas.strategies.base import Strategy


class StrategyContext(NamedTuple):
  """What a strategy's builder may need to know about the run besides its own options.

  Attributes:
    learning_rate: the weight optimizer's learning rate, a float or a schedule of its step
      count (DARTS' virtual step takes it).
    momentum: the weight optimizer's momentum.
    weight_decay: the weight optimizer's weight decay.
    total_steps: the search's steps in all.
    steps_per_epoch: steps per search epoch (schedules set per epoch, as GDAS' temperature).
  """
  learning_rate: Any
  momentum: float
  weight_decay: float
  total_steps: int
  steps_per_epoch: int


Builder = Callable[[Dict[str, Any], StrategyContext], Strategy]


class _Entry(NamedTuple):
  builder: Builder
  defaults: Dict[str, Any]


_REGISTRY: Dict[str, _Entry] = {}
# Modules of dnas whose import registers the built-in strategies.
_BUILTIN_MODULES = ("dnas.strategies.darts", "dnas.strategies.gdas", "dnas.strategies.snas",
                    "dnas.strategies.drnas", "dnas.strategies.spos", "dnas.strategies.betadarts",
                    "dnas.strategies.fairdarts", "dnas.strategies.dartsminus",
                    "dnas.strategies.sdarts", "dnas.strategies.pcdarts")


class UnknownStrategyError(KeyError):
  """A strategy name that is not registered."""

  def __str__(self):
    return str(self.args[0])


def register(name: str, *, defaults: Optional[Mapping[str, Any]] = None,
             overwrite: bool = False) -> Callable[[Builder], Builder]:
  """Registers ``builder(options, context) -> Strategy`` under ``name``.

  Args:
    name: the value of ``search.strategy`` that selects it.
    defaults: every option the builder takes, with its default; ``options`` passed to the
      builder holds all of them.
    overwrite: allow replacing a registered strategy of the same name.

  Raises:
    ValueError: ``name`` is taken and ``overwrite`` is False.
  """
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"strategy name must be an identifier (it is a config key), got {name!r}")

  def decorator(builder: Builder) -> Builder:
    _ensure_builtins()
    if name in _REGISTRY and not overwrite:
      raise ValueError(f"strategy {name!r} is already registered; registered strategies: "
                       f"{sorted(_REGISTRY)}. Pass overwrite=True to replace it.")
    _REGISTRY[name] = _Entry(builder, dict(defaults or {}))
    return builder

  return decorator


def unregister(name: str) -> None:
  """Removes a registered strategy (mainly for tests)."""
  get(name)
  del _REGISTRY[name]


def get(name: str) -> _Entry:
  """The registered ``(builder, defaults)`` of ``name``; the error lists the valid names."""
  _ensure_builtins()
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise UnknownStrategyError(
        f"config.search.strategy: unknown strategy {name!r}; registered strategies: "
        f"{', '.join(sorted(_REGISTRY))} (a user's strategy is registered by a module the "
        f"config lists in `imports`)") from None


def names() -> list:
  """The registered strategy names, sorted."""
  _ensure_builtins()
  return sorted(_REGISTRY)


def defaults(name: str) -> Dict[str, Any]:
  """A copy of strategy ``name``'s options with their defaults."""
  return dict(get(name).defaults)


def resolve_options(name: str, options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """``options`` checked against ``name``'s defaults and completed by them.

  Raises:
    ValueError: an option the strategy does not take, or of another type than its default
      (an int is accepted for a float), naming ``config.search.<name>.<key>``.
  """
  entry = get(name)
  out = dict(entry.defaults)
  for key, value in dict(options or {}).items():
    where = f"config.search.{name}.{key}"
    if key not in entry.defaults:
      raise ValueError(f"{where}: strategy {name!r} takes no option {key!r}; its options: "
                       f"{sorted(entry.defaults)}")
    want = entry.defaults[key]
    if want is not None and value is not None:
      ok = isinstance(value, type(want))
      if isinstance(want, float) and not isinstance(value, bool):
        ok = isinstance(value, (int, float))
      if isinstance(want, int) and not isinstance(want, bool):
        ok = isinstance(value, int) and not isinstance(value, bool)
      if isinstance(want, (tuple, list)):
        ok = isinstance(value, (tuple, list))
      if not ok:
        raise ValueError(f"{where}: must be a {type(want).__name__} like its default "
                         f"{want!r}, got {value!r}")
    out[key] = value
  return out


def build(name: str, options: Optional[Mapping[str, Any]], context: StrategyContext) -> Strategy:
  """The strategy registered as ``name``, built from ``options`` (checked, defaults filled)."""
  strategy = get(name).builder(resolve_options(name, options), context)
  if not isinstance(strategy, Strategy):
    raise TypeError(f"strategy {name!r}'s builder returned {type(strategy).__name__}, not a "
                    f"dnas.strategies.Strategy")
  return strategy


_LOADED = False


def _ensure_builtins() -> None:
  global _LOADED
  if _LOADED:
    return
  _LOADED = True
  for module in _BUILTIN_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
