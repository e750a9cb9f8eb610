"""Search spaces registered by name (``config.model.space``).

A space is registered with a builder ``builder(model_config, op_set, num_classes) -> supernet``:
``model_config`` is the config's ``model`` section (a ``ConfigDict``), ``op_set`` the resolved
``dnas.ops.sets.OpSet`` (``model.op_set`` or ``model.ops``). The supernet is a Flax module called
``model.apply(variables, images, op_weights, train=...)`` with alpha in its ``"arch"``
collection, and a ``genotype(op_weights)`` method (its discretization rule). A builder raises
``ValueError`` naming ``config.model.<key>`` for values it cannot build.

Example (a user's module, listed in the config's ``imports``)::

    from dnas.spaces import registry

    @registry.register("my_space")
    def build(model_config, op_set, num_classes):
      return MySupernet(num_classes=num_classes, channels=model_config.channels, op_set=op_set)
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple

Builder = Callable[[Any, Any, int], Any]

# `config.model` switches of the built-in supernets' layout (booleans; when a config leaves one
# out, the supernet's default applies).
LAYOUT_KEYS = ("scan_inputs", "remat", "pack")


class _Entry(NamedTuple):
  builder: Builder


_REGISTRY: Dict[str, _Entry] = {}


class UnknownSpaceError(KeyError):
  """A space name that is not registered."""

  def __str__(self):
    return str(self.args[0])


def register(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
  """Registers ``builder(model_config, op_set, num_classes) -> supernet`` as space ``name``."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"space name must be a non-empty string, got {name!r}")

  def decorator(builder: Builder) -> Builder:
    if name in _REGISTRY and not overwrite:
      raise ValueError(f"space {name!r} is already registered; registered spaces: "
                       f"{sorted(_REGISTRY)}. Pass overwrite=True to replace it.")
    _REGISTRY[name] = _Entry(builder)
    return builder

  return decorator


def unregister(name: str) -> None:
  """Removes a registered space (mainly for tests)."""
  get(name)
  del _REGISTRY[name]


def get(name: str) -> _Entry:
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise UnknownSpaceError(
        f"config.model.space: unknown space {name!r}; registered spaces: "
        f"{', '.join(sorted(_REGISTRY))} (a user's space is registered by a module the config "
        f"lists in `imports`)") from None


def names() -> list:
  return sorted(_REGISTRY)


def build(name: str, model_config, op_set, num_classes: int):
  """The supernet of space ``name`` for ``model_config``."""
  return get(name).builder(model_config, op_set, num_classes)


def _int(model_config, key: str, low: int) -> int:
  v = model_config[key]
  if not isinstance(v, int) or isinstance(v, bool) or v < low:
    raise ValueError(f"config.model.{key}: must be an int >= {low}, got {v!r}")
  return v


def _layout(model_config) -> Dict[str, bool]:
  out = {}
  for key in LAYOUT_KEYS:
    if key in model_config:
      if not isinstance(model_config[key], bool):
        raise ValueError(f"config.model.{key}: must be True or False, got {model_config[key]!r}")
      out[key] = model_config[key]
  return out


def _partial(model_config) -> Dict[str, Any]:
  """PC-DARTS' switches when the config sets them: ``partial_channels`` (an int >= 1, 1: off)
  and ``edge_norm`` (edge weights beta beside alpha, for ``search.strategy="pcdarts"``)."""
  out = {}
  if "partial_channels" in model_config:
    out["partial_channels"] = _int(model_config, "partial_channels", 1)
    if model_config.channels % out["partial_channels"]:
      raise ValueError(f"config.model.partial_channels: must divide model.channels "
                       f"({model_config.channels}), got {out['partial_channels']}")
  if "edge_norm" in model_config:
    if not isinstance(model_config.edge_norm, bool):
      raise ValueError(f"config.model.edge_norm: must be True or False, got "
                       f"{model_config.edge_norm!r}")
    out["edge_norm"] = model_config.edge_norm
  return out


@register("darts")
def _darts(model_config, op_set, num_classes: int):
  """DARTS' CIFAR supernet (``DartsSearchNet``): ``channels``, ``layers`` (>= 3: two reductions
  and a normal cell), ``nodes``; the cell concatenates all ``nodes``."""
  from dnas.spaces.darts import DartsSearchNet  # pylint: disable=g-import-not-at-top
  nodes = _int(model_config, "nodes", 1)
  return DartsSearchNet(num_classes=num_classes, channels=_int(model_config, "channels", 1),
                        layers=_int(model_config, "layers", 3), nodes=nodes, multiplier=nodes,
                        op_set=op_set, **_layout(model_config), **_partial(model_config))


@register("nb201")
def _nb201(model_config, op_set, num_classes: int):
  """NAS-Bench-201's supernet (``NB201SearchNet``): ``channels``, ``layers`` (cells per stage),
  ``nodes``."""
  from dnas.spaces.nb201 import NB201SearchNet  # pylint: disable=g-import-not-at-top
  return NB201SearchNet(num_classes=num_classes, channels=_int(model_config, "channels", 1),
                        cells_per_stage=_int(model_config, "layers", 1),
                        nodes=_int(model_config, "nodes", 1), op_set=op_set,
                        **_layout(model_config), **_partial(model_config))
