"""``dnas.checkpoints``: orbax checkpoints of a run's state, the last K kept, older msgpack runs."""

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from dnas import checkpoints


class State(NamedTuple):
  step: jax.Array
  params: dict
  key: jax.Array


def _state(step, width=3, seed=0):
  rng = np.random.default_rng(seed)
  return State(jnp.int32(step), {"w": jnp.asarray(rng.normal(size=(2, width)), jnp.float32),
                                 "b": {"c": jnp.arange(4, dtype=jnp.int32)}},
               jax.random.fold_in(jax.random.key(seed), step))


def _template(width=3):
  return jax.eval_shape(lambda: _state(0, width))


def _equal(a, b):
  a = a._replace(key=jax.random.key_data(a.key))
  b = b._replace(key=jax.random.key_data(b.key))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)


def test_the_latest_restores_bit_for_bit_and_only_the_newest_k_are_kept(tmp_path):
  history = {"normal": [np.asarray([[0.1, 0.9]], np.float32),
                        np.asarray([[1 / 3, 2 / 3]], np.float32)]}
  with checkpoints.Checkpoints(str(tmp_path), keep=2) as ckpts:
    assert not ckpts.exists() and ckpts.latest() is None
    for step in (3, 6, 9):
      ckpts.save(step, _state(step), history)
    ckpts.save(9, _state(10), history)  # a step saved already: nothing happens
  assert checkpoints.steps(str(tmp_path)) == [6, 9]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "9"]
  with checkpoints.Checkpoints(str(tmp_path), keep=2) as ckpts:
    assert ckpts.latest() == str(tmp_path / "checkpoints" / "9")
    state, got = ckpts.restore(_template())
  _equal(state, _state(9))
  assert jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key)
  for a, b in zip(got["normal"], history["normal"]):  # float32 through JSON, exactly
    assert a.dtype == np.float32 and np.array_equal(a, b)
  assert int(checkpoints.read(str(tmp_path))["step"]) == 9


def test_a_checkpoint_of_another_shape_is_refused_naming_the_folder_and_the_arrays(tmp_path):
  with checkpoints.Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, _state(1))
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"checkpoints/1: .*params\.w: float32\[2, 3\] in the file, "
                             r"float32\[2, 5\] expected"):
      ckpts.restore(_template(width=5))
    other = jax.eval_shape(lambda: _state(0)._replace(params={"w": jnp.zeros((2, 3))}))
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"params\.b\.c: in the file, not in the model"):
      ckpts.restore(other)


def test_an_interrupted_save_is_not_the_latest_and_is_removed(tmp_path):
  with checkpoints.Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, _state(1))
  # What a save killed before its commit leaves: orbax's temporary folder of step 2.
  tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123"
  (tmp / "state").mkdir(parents=True)
  (tmp / "state" / "half").write_bytes(b"half")
  assert checkpoints.steps(str(tmp_path)) == [1]
  with checkpoints.Checkpoints(str(tmp_path)) as ckpts:
    state, _ = ckpts.restore(_template())
  _equal(state, _state(1))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]


def _legacy(path, state, history=None):
  """The format runs wrote before orbax: msgpack of the state dict (the key as its data), in a
  search's ``{"state", "history"}``, a retraining run's bare."""
  tree = serialization.to_state_dict(state._replace(key=jax.random.key_data(state.key)))
  tree = jax.device_get(tree)
  payload = tree if history is None else {"state": tree, "history": history}
  path.write_bytes(serialization.msgpack_serialize(payload))


def test_older_msgpack_runs_resume_and_their_first_orbax_checkpoint_replaces_them(tmp_path):
  search, train = tmp_path / "search", tmp_path / "train"
  search.mkdir()
  train.mkdir()
  _legacy(search / "checkpoint.msgpack", _state(4),
          {"normal": np.asarray([[[0.25, 0.75]]], np.float32)})
  _legacy(train / "checkpoint.msgpack", _state(7))
  assert checkpoints.exists(str(search)) and checkpoints.exists(str(train))
  with checkpoints.Checkpoints(str(search)) as ckpts:
    assert ckpts.latest() == str(search / "checkpoint.msgpack")
    state, history = ckpts.restore(_template())
    _equal(state, _state(4))
    np.testing.assert_array_equal(history["normal"][0], [[0.25, 0.75]])
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint\.msgpack: .*expected"):
      ckpts.restore(_template(width=4))
    ckpts.save(5, _state(5), history)
  assert not (search / "checkpoint.msgpack").exists()
  assert checkpoints.steps(str(search)) == [5]
  with checkpoints.Checkpoints(str(train)) as ckpts:
    state, history = ckpts.restore(_template())
  _equal(state, _state(7))
  assert history is None


def test_restored_arrays_are_laid_out_as_asked(tmp_path):
  device = jax.devices()[0]
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray([device]), ("data",)),
                                        jax.sharding.PartitionSpec())
  with checkpoints.Checkpoints(str(tmp_path)) as ckpts:
    ckpts.save(1, _state(1))
    state, _ = ckpts.restore(_template(), sharding)
  assert all(x.sharding == sharding for x in jax.tree.leaves(state.params))
