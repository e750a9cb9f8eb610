"""Ask/tell strategies registered by name.

Example (a user's module)::

    from dnas.blackbox import registry, Strategy

    @registry.register("my_search")
    def my_search(temperature: float = 1.0) -> Strategy:
      ...

    strategy = registry.get("my_search", temperature=0.5)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Dict, List

Factory = Callable[..., Any]

_REGISTRY: Dict[str, Factory] = {}
# Modules of dnas whose import registers the built-in strategies.
_BUILTIN_MODULES = ("dnas.blackbox.strategies", "dnas.blackbox.reinforce",
                    "dnas.blackbox.bananas", "dnas.blackbox.multiobjective")
_LOADED = False


class UnknownStrategyError(KeyError):
  """A strategy name that is not registered."""

  def __str__(self):
    return str(self.args[0])


def _ensure_builtins() -> None:
  global _LOADED
  if not _LOADED:
    _LOADED = True
    for module in _BUILTIN_MODULES:
      try:
        importlib.import_module(module)
      except ModuleNotFoundError as e:
        if e.name != module:
          raise


def register(name: str, *, overwrite: bool = False) -> Callable[[Factory], Factory]:
  """Registers a factory ``(**options) -> Strategy`` under ``name``; a decorator.

  Raises:
    ValueError: ``name`` is taken and ``overwrite`` is False.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")

  def decorator(factory: Factory) -> Factory:
    if name in _REGISTRY and not overwrite:
      raise ValueError(f"blackbox strategy {name!r} is already registered; registered: "
                       f"{sorted(_REGISTRY)}. Pass overwrite=True to replace it.")
    _REGISTRY[name] = factory
    return factory

  return decorator


def unregister(name: str) -> None:
  """Removes a registered strategy (mainly for tests)."""
  factory(name)
  del _REGISTRY[name]


def factory(name: str) -> Factory:
  """The factory registered as ``name``; the error lists the valid names."""
  _ensure_builtins()
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise UnknownStrategyError(f"unknown blackbox strategy {name!r}; registered: "
                               f"{', '.join(sorted(_REGISTRY))}") from None


def options(name: str) -> Dict[str, Any]:
  """The options strategy ``name`` takes, with their defaults."""
  params = inspect.signature(factory(name)).parameters.values()
  return {p.name: p.default for p in params
          if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def get(name: str, **kwargs: Any) -> Any:
  """The strategy ``name`` built with ``kwargs``.

  Raises:
    UnknownStrategyError: ``name`` is not registered (the message lists the registered ones).
    ValueError: an option the strategy does not take (the message lists the ones it takes).
  """
  valid = options(name)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f"blackbox strategy {name!r} takes no option(s) {unknown}; its options: "
                     f"{valid}")
  return factory(name)(**kwargs)


def names() -> List[str]:
  """The registered strategy names, sorted."""
  _ensure_builtins()
  return sorted(_REGISTRY)
