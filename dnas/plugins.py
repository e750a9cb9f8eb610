"""User code named by a config: the ``imports`` key, and the digest of every plug-in's source.

A config's ``imports`` lists Python modules (``"my_ops"``, ``"mypkg.strategies"``) or files
(``"my_ops.py"``, ``"/abs/path/my_ops.py"``) whose import registers the user's ops, op sets,
spaces and strategies. Every ``dnas`` command imports them before it validates the config, and
a run folder's ``config.json`` records them (files as absolute paths), so ``dnas plot`` and
``dnas train --genotype RUN/genotype.json`` in a fresh process load the same code.

``digest()`` hashes the source of every imported plug-in module and of every module that
registered something, so a saved trace (``dnas.aot``) is reused only for unchanged user code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from typing import Iterable, List, Optional, Sequence

# Modules imported through `load`, by the name each is known under in sys.modules.
_LOADED: dict = {}


class PluginError(ImportError):
  """A module named by ``imports`` that cannot be found or imported."""


def resolve(imports: Optional[Iterable[str]], base_dir: Optional[str] = None) -> List[str]:
  """``imports`` with every ``.py`` path made absolute.

  A relative path is looked up in the working directory, then in ``base_dir`` (the folder of
  the config file that names it).

  Raises:
    PluginError: an entry that is not a string, or a ``.py`` file found in neither place.
  """
  out = []
  for i, entry in enumerate(imports or ()):
    if not isinstance(entry, str) or not entry:
      raise PluginError(f"config.imports[{i}]: must be a module name or a .py path, got "
                        f"{entry!r}")
    if entry.endswith(".py"):
      candidates = [entry] if os.path.isabs(entry) else [
          os.path.abspath(entry)] + ([os.path.join(base_dir, entry)] if base_dir else [])
      found = next((p for p in candidates if os.path.isfile(p)), None)
      if found is None:
        raise PluginError(f"config.imports[{i}]: file not found: {entry} (looked in "
                          f"{', '.join(os.path.dirname(p) or '.' for p in candidates)})")
      out.append(os.path.abspath(found))
    else:
      out.append(entry)
  return out


def load(imports: Optional[Sequence[str]], base_dir: Optional[str] = None) -> List[str]:
  """Imports every module of ``imports`` (once per process); returns the resolved list.

  Module names are imported with the working directory and ``base_dir`` on ``sys.path``.

  Raises:
    PluginError: naming the entry, for a module that cannot be found or fails to import.
  """
  resolved = resolve(imports, base_dir)
  for i, entry in enumerate(resolved):
    if entry in _LOADED:
      continue
    try:
      if entry.endswith(".py"):
        name = "dnas_user_" + hashlib.sha256(entry.encode()).hexdigest()[:12] + "_" + \
            os.path.basename(entry)[:-3]
        spec = importlib.util.spec_from_file_location(name, entry)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
          spec.loader.exec_module(module)
        except BaseException:
          del sys.modules[name]
          raise
      else:
        for d in (os.getcwd(), base_dir):
          if d and d not in sys.path:
            sys.path.insert(0, d)
        module = importlib.import_module(entry)
    except ModuleNotFoundError as e:
      raise PluginError(f"config.imports[{i}]: cannot import {entry!r}: {e} (a module name is "
                        f"looked up on sys.path and in the working directory; give a .py path "
                        f"instead if it lives elsewhere)") from e
    except Exception as e:  # pylint: disable=broad-except
      raise PluginError(f"config.imports[{i}]: importing {entry!r} failed: "
                        f"{type(e).__name__}: {e}") from e
    _LOADED[entry] = module
  return resolved


def from_run_folder(folder: str) -> List[str]:
  """Loads the ``imports`` a run folder's ``config.json`` recorded (none if it has none)."""
  path = os.path.join(folder, "config.json")
  if not os.path.isfile(path):
    return []
  try:
    with open(path) as f:
      imports = json.load(f).get("imports", [])
  except ValueError as e:
    raise PluginError(f"{path}: cannot be read ({e})") from e
  try:
    return load(imports)
  except PluginError as e:
    raise PluginError(f"{e} (recorded in {path}, the imports of the run that wrote it)") from e


def loaded() -> List[str]:
  """The ``imports`` entries loaded in this process."""
  return list(_LOADED)


def _registered_objects():
  from dnas.ops import registry as op_registry  # pylint: disable=g-import-not-at-top
  from dnas.ops import sets  # pylint: disable=g-import-not-at-top
  from dnas.spaces import registry as space_registry  # pylint: disable=g-import-not-at-top
  from dnas.strategies import registry as strategy_registry  # pylint: disable=g-import-not-at-top
  objs = [op_registry.get(n) for n in op_registry.names()]
  objs += [strategy_registry.get(n).builder for n in strategy_registry.names()]
  objs += [space_registry.get(n).builder for n in space_registry.names()]
  return objs, [sets.registered_by(n) for n in sets.names()]


def _source_file(obj, module_name: Optional[str] = None) -> Optional[str]:
  module = sys.modules.get(module_name or getattr(obj, "__module__", None) or "")
  path = getattr(module, "__file__", None)
  if path is None:
    try:
      path = inspect.getsourcefile(obj)
    except TypeError:
      return None
  return path


def digest() -> str:
  """A hash of the source of every plug-in: modules loaded by ``load`` and every module outside
  ``dnas`` that registered an op, op set, space or strategy (a config file that registers one
  itself included)."""
  dnas_dir = os.path.dirname(os.path.abspath(__file__))
  files = set()
  dirs = set()
  for module in _LOADED.values():
    if getattr(module, "__file__", None):
      files.add(os.path.abspath(module.__file__))
      dirs.add(os.path.dirname(os.path.abspath(module.__file__)) + os.sep)
  # What the plug-ins import from their own folders (helpers that register nothing).
  for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path and any(os.path.abspath(path).startswith(d) for d in dirs):
      files.add(os.path.abspath(path))
  objs, module_names = _registered_objects()
  paths = [_source_file(obj) for obj in objs]
  paths += [_source_file(None, name) for name in module_names if name]
  for path in paths:
    if path and not os.path.abspath(path).startswith(dnas_dir + os.sep):
      files.add(os.path.abspath(path))
  h = hashlib.sha256()
  for path in sorted(files):
    h.update(path.encode() + b"\0")
    try:
      with open(path, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    except OSError:
      h.update(b"unreadable")
  return h.hexdigest()
