"""A run folder's checkpoints, written with orbax: sharded, multi-host, atomic, the last K kept.

Each checkpoint is a folder ``WORKDIR/checkpoints/<step>/`` holding the run's state (every
array: params, BatchNorm statistics, alpha, optimizer and strategy states, the key, the step)
and a small JSON item (the search's alpha history). Orbax writes it into a temporary folder and
renames it when complete, so a run killed while saving leaves the previous checkpoint as the
latest; only the newest ``keep`` (``config.checkpoint_keep``, default 2) are kept.

On several hosts every process calls ``save`` and ``restore`` together: each writes and reads
the shards its devices hold (one copy of a replicated array), and the run folder must be on a
file system every host sees.

Runs written before the orbax format hold one file, ``WORKDIR/checkpoint.msgpack``. Such a run
resumes from it; its first orbax checkpoint replaces it (the file is removed once that
checkpoint is committed).

Example::

  with checkpoints.Checkpoints(workdir, keep=2) as ckpts:
    if ckpts.exists():
      state, history = ckpts.restore(state_spec, sharding)
    ...
    ckpts.save(step, state, history)
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from flax import serialization, traverse_util

from dnas import parallel

FOLDER = "checkpoints"
LEGACY = "checkpoint.msgpack"
_STEP = re.compile(r"^\d+$")


class CheckpointError(RuntimeError):
  """A checkpoint that does not fit the run resuming it (or is damaged); names the file."""


def steps(workdir: str) -> list:
  """The committed checkpoints' steps in ``workdir``, oldest first (orbax's temporary folders of
  an interrupted save are not counted)."""
  folder = os.path.join(workdir, FOLDER)
  if not os.path.isdir(folder):
    return []
  return sorted(int(n) for n in os.listdir(folder)
                if _STEP.match(n) and os.path.isdir(os.path.join(folder, n)))


def exists(workdir: str) -> bool:
  """Whether ``workdir`` holds a checkpoint to resume (orbax's, or an older run's msgpack)."""
  return bool(steps(workdir)) or os.path.exists(os.path.join(workdir, LEGACY))


def latest(workdir: str) -> Optional[str]:
  """The path of the checkpoint a run in ``workdir`` resumes from, or None."""
  s = steps(workdir)
  if s:
    return os.path.join(workdir, FOLDER, str(s[-1]))
  legacy = os.path.join(workdir, LEGACY)
  return legacy if os.path.exists(legacy) else None


def error(path: str, e: Exception) -> CheckpointError:
  return CheckpointError(
      f"{path}: checkpoint cannot be read ({e}). It was written by a run with another model "
      f"(config.model: space, op_set, channels, layers, nodes, scan_inputs must match), or it "
      f"is damaged; resume with that run's config, or delete it to start over")


def _to_tree(state) -> Any:
  """The state as nested dicts of arrays (the key as its raw data), as checkpoints hold it."""
  if hasattr(state, "key"):
    key = state.key
    if isinstance(key, jax.ShapeDtypeStruct) or jax.dtypes.issubdtype(key.dtype,
                                                                     jax.dtypes.prng_key):
      state = state._replace(key=_key_data(key))
  return serialization.to_state_dict(state)


def _key_data(key):
  if isinstance(key, jax.ShapeDtypeStruct):
    spec = jax.eval_shape(jax.random.key_data, key)
    return jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=key.sharding)
  return jax.random.key_data(key)


def check_fits(template: Dict[str, Any], stored: Dict[str, Any]) -> None:
  """Raises ``ValueError`` naming up to three arrays whose path, shape or dtype differ between
  ``template`` and ``stored`` (nested dicts of arrays or of ``shape``/``dtype`` holders)."""
  want = traverse_util.flatten_dict(template, sep=".")
  got = traverse_util.flatten_dict(stored, sep=".")
  bad = [f"{k}: in the file, not in the model" for k in sorted(set(got) - set(want))]
  bad += [f"{k}: in the model, not in the file" for k in sorted(set(want) - set(got))]
  for k in sorted(set(want) & set(got)):
    w, g = want[k], got[k]
    if tuple(g.shape) != tuple(w.shape) or np.dtype(g.dtype) != np.dtype(w.dtype):
      bad.append(f"{k}: {np.dtype(g.dtype)}{list(g.shape)} in the file, "
                 f"{np.dtype(w.dtype)}{list(w.shape)} expected")
  if bad:
    raise ValueError("; ".join(bad[:3]) + (f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""))


def _from_tree(template, tree):
  """``template``'s type (a state NamedTuple) filled from ``tree``, its key wrapped again."""
  if not hasattr(template, "key"):
    return serialization.from_state_dict(template, tree)
  state = serialization.from_state_dict(template._replace(key=_key_data(template.key)), tree)
  return state._replace(key=jax.random.wrap_key_data(state.key))


class Checkpoints:
  """``WORKDIR/checkpoints/``: save, restore the latest, keep the newest ``keep``."""

  def __init__(self, workdir: str, keep: int = 2):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.workdir = workdir
    self.folder = os.path.join(os.path.abspath(workdir), FOLDER)
    self.legacy = os.path.join(workdir, LEGACY)
    # Synchronous saves: the step donates its state's buffers, so a save must have read them
    # before the next step runs (a checkpoint of a small search takes well under a second).
    self._manager = ocp.CheckpointManager(
        self.folder, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    self._manager.close()

  def exists(self) -> bool:
    return self._manager.latest_step() is not None or os.path.exists(self.legacy)

  def latest(self) -> Optional[str]:
    """The checkpoint a restore reads (a folder, or an older run's msgpack file), or None."""
    step = self._manager.latest_step()
    if step is not None:
      return os.path.join(self.folder, str(step))
    return self.legacy if os.path.exists(self.legacy) else None

  def restore(self, template, sharding=None) -> Tuple[Any, Optional[Dict[str, list]]]:
    """The latest checkpoint, as ``(state, history)``.

    ``template``: the state's arrays or ``jax.ShapeDtypeStruct``s (key included); the restored
    arrays are laid out with ``sharding`` (None: the template's, else the default device).
    Every array must have the template's path, shape and dtype.

    Raises:
      CheckpointError: naming the checkpoint, when it does not fit or cannot be read.
    """
    step = self._manager.latest_step()
    if step is None:
      return _restore_legacy(self.legacy, template, sharding)
    path = os.path.join(self.folder, str(step))
    ocp = self._ocp
    tree = _to_tree(template)
    if sharding is not None:
      tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          tree)
    else:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device), tree)
    try:
      meta = self._manager.item_metadata(step)["state"]
      check_fits(tree, getattr(meta, "tree", meta))
      got = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(tree), extra=ocp.args.JsonRestore()))
      state = _from_tree(template, got["state"])
    except Exception as e:  # pylint: disable=broad-except
      raise error(path, e) from e
    extra = got["extra"] or {}
    history = extra.get("history")
    if history is not None:
      history = {k: [np.asarray(x, np.float32) for x in v] for k, v in history.items()}
    return state, history

  def save(self, step: int, state, history: Optional[Dict[str, list]] = None) -> None:
    """Checkpoints ``state`` (and the alpha ``history``) as step ``step``; on several hosts
    every process calls it. Saving a step already saved does nothing."""
    ocp = self._ocp
    step = int(step)
    if step in self._manager.all_steps():
      return
    extra = {"history": None if history is None else
             {k: [np.asarray(x, np.float32).tolist() for x in v] for k, v in history.items()}}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_tree(state)), extra=ocp.args.JsonSave(extra)))
    self._manager.wait_until_finished()
    if os.path.exists(self.legacy) and jax.process_index() == 0:
      os.unlink(self.legacy)  # replaced by a committed checkpoint

  def wait(self) -> None:
    self._manager.wait_until_finished()


def _restore_legacy(path, template, sharding):
  """An older run's ``checkpoint.msgpack``: a search's ``{"state", "history"}`` or a retraining
  run's bare state."""
  if not os.path.exists(path):
    raise CheckpointError(f"{path}: no checkpoint to resume")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    payload = serialization.msgpack_restore(raw)
    history = None
    if isinstance(payload, dict) and set(payload) == {"state", "history"}:
      history = {k: [np.asarray(x) for x in v] for k, v in payload["history"].items()}
      payload = payload["state"]
    tree = _to_tree(template)
    check_fits(tree, jax.tree.map(np.asarray, payload))
    state = _from_tree(template, payload)
    state = parallel.put(state, sharding)
  except Exception as e:  # pylint: disable=broad-except
    raise error(path, e) from e
  return state, history


def read(workdir: str) -> Dict[str, Any]:
  """The latest checkpoint's state in ``workdir`` as nested dicts of numpy arrays (the key as its
  raw data), without a model to restore it into: for inspection and tests."""
  path = latest(workdir)
  if path is None:
    raise CheckpointError(f"{workdir}: holds no checkpoint")
  if path.endswith(LEGACY):
    with open(path, "rb") as f:
      payload = serialization.msgpack_restore(f.read())
    return payload.get("state", payload) if set(payload) == {"state", "history"} else payload
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # Onto this process's first device, whatever devices (or hosts) wrote it.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr, warnings.catch_warnings():
    warnings.simplefilter("ignore")
    meta = ckptr.metadata(os.path.join(path, "state"))
    meta = getattr(meta, "item_metadata", meta)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          getattr(meta, "tree", meta))
    tree = ckptr.restore(os.path.join(path, "state"), target)
  return jax.tree.map(np.asarray, tree)
