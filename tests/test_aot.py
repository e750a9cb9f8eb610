"""Saved traces (dnas.aot): the step they give equals the traced one, and stale ones are not used."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from dnas import aot, compiler, genotypes, published, search, train_lib
from dnas.ops import registry
from dnas.ops.sets import DARTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(tiny_search):
  model, strategy, weight_tx, arch_tx, bt, bv = tiny_search
  init = jax.jit(lambda: search.init_search_state(model, strategy, weight_tx, arch_tx,
                                                  jax.random.key(1), bt["image"]))
  step = search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False)
  return init, step, bt, bv


def _toy():
  """A small step over a state with a typed key: cheap to trace and compile."""
  init = lambda: search.SearchState(jnp.zeros([], jnp.int32), {"w": jnp.ones((3, 3))}, {}, {},
                                    (), (), (), jax.random.key(0))

  def step(state, x, _):
    key = jax.random.fold_in(state.key, state.step)
    w = state.params["w"] * jnp.sum(x["image"]) + jax.random.normal(key, (3, 3))
    return state._replace(step=state.step + 1, params={"w": w}), {"sum": jnp.sum(w)}

  x = {"image": jnp.eye(3)}
  return init, step, x, x


def _run(step, state, bt, bv, n=2):
  for _ in range(n):
    state, metrics = step(state, bt, bv)
  return jax.device_get((state.params, state.arch, state.batch_stats, state.weight_opt_state,
                         state.step, metrics)), state


def _counting(fun):
  calls = []

  def counted(*args):
    calls.append(1)
    return fun(*args)
  return counted, calls


def test_a_saved_trace_gives_the_traced_step_and_is_not_traced_again(tmp_path, tiny_search):
  init, step, bt, bv = _problem(tiny_search)
  reference, _ = _run(compiler.jit(step, donate_argnums=0), init(), bt, bv)

  counted, calls = _counting(step)
  state = init()
  donated = jax.tree.leaves(state.params)[0]
  first, traced = aot.compile_step(counted, (state, bt, bv), cache_dir=str(tmp_path), key="k",
                                   donate_argnums=(0,))
  assert traced and len(calls) == 1
  assert len(os.listdir(tmp_path / "dnas_traces")) == 1
  got, final = _run(first, state, bt, bv)
  assert donated.is_deleted()  # the state's buffers were donated
  assert jnp.issubdtype(final.key.dtype, jax.dtypes.prng_key)  # typed keys round-trip
  assert len(jax.tree.leaves(got)) == len(jax.tree.leaves(reference)) > 10
  for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  assert not np.allclose(got[1]["normal"], jax.device_get(init().arch["normal"]))  # it trained

  # Same key, same shapes: loaded, not traced; the same results bit for bit.
  second, traced = aot.compile_step(counted, (init(), bt, bv), cache_dir=str(tmp_path), key="k",
                                    donate_argnums=(0,))
  assert not traced and len(calls) == 1
  again, _ = _run(second, init(), bt, bv)
  for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(got)):
    np.testing.assert_array_equal(x, y)


def test_a_stale_saved_trace_is_not_used(tmp_path, monkeypatch):
  init, step, bt, bv = _toy()
  counted, calls = _counting(step)
  compile_ = lambda key, *args: aot.compile_step(counted, args or (init(), bt, bv),
                                                 cache_dir=str(tmp_path), key=key)[1]
  assert compile_("k")
  assert not compile_("k")
  assert compile_("another config")                 # the caller's key
  half = jax.tree.map(lambda x: x[:2, :2], bt)
  assert compile_("k", init(), half, half)          # other shapes
  monkeypatch.setattr(aot, "source_digest", lambda: "edited dnas source")
  assert compile_("k")                              # dnas's code changed
  monkeypatch.undo()
  assert len(calls) == 4
  assert not compile_("k") and not compile_("another config") and len(calls) == 4


def test_a_broken_saved_trace_is_replaced(tmp_path, capsys):
  init, step, bt, bv = _toy()
  counted, calls = _counting(step)
  compile_ = lambda key: aot.compile_step(counted, (init(), bt, bv), cache_dir=str(tmp_path),
                                          key=key)[1]
  assert compile_("k")
  # A damaged file: a warning naming it, traced again, and the file replaced by a good one.
  (path,) = (tmp_path / "dnas_traces").iterdir()
  path.write_bytes(path.read_bytes()[:100])
  assert compile_("k")
  assert f"unreadable saved trace {path}" in capsys.readouterr().err
  assert not compile_("k") and len(calls) == 2


def test_output_shapes_come_from_the_saved_trace_and_specs_compile_a_step(tmp_path):
  """``Trace.out_specs`` needs no trace when the trace was saved; a step compiled from specs
  (a typed key among them) runs on real arrays."""
  init, step, bt, bv = _toy()
  counted_init, init_calls = _counting(init)
  want = jax.eval_shape(init)
  for cache_dir, traced in ((None, True), (str(tmp_path), True), (str(tmp_path), False)):
    t = aot.trace(counted_init, (), cache_dir=cache_dir, key="init")
    assert t.traced == traced
    calls = len(init_calls)
    specs = t.out_specs
    assert len(init_calls) == calls + (cache_dir is None)  # a plain trace traces for its shapes
    assert jax.tree.structure(specs) == jax.tree.structure(want)
    for got, ref in zip(jax.tree.leaves(specs), jax.tree.leaves(want)):
      assert (got.shape, got.dtype) == (ref.shape, ref.dtype)
      assert got.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert jnp.issubdtype(specs.key.dtype, jax.dtypes.prng_key)

    counted, step_calls = _counting(step)
    compiled, _ = aot.compile_step(counted, (specs, bt, bv), cache_dir=cache_dir, key="step")
    got, _ = _run(compiled, t.compile()(), bt, bv)
    ref, _ = _run(jax.jit(step), init(), bt, bv)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      np.testing.assert_allclose(x, y, rtol=1e-6)
  assert len(init_calls) == 2  # the plain trace and the export; the saved one was only loaded


def test_no_cache_folder_means_no_saved_trace(tmp_path):
  init, step, bt, bv = _toy()
  counted, calls = _counting(step)
  for _ in range(2):
    _, traced = aot.compile_step(counted, (init(), bt, bv), cache_dir=None, key="k")
    assert traced
  # (jax.jit's own in-process cache may skip the second trace; nothing is written either way.)
  assert calls and not list(tmp_path.iterdir())


def _config(name, archive, cache, **overrides):
  c = train_lib.load_config(os.path.join(REPO, "experiments", name), "smoke")
  c.update_from_flattened_dict({"data.path": archive, "compilation_cache_dir": str(cache),
                                **overrides})
  return c


def test_a_second_search_and_retraining_use_their_saved_traces(tmp_path, cifar10_archive, capsys,
                                                                monkeypatch):
  """End to end: the second run of a config loads its traces and ends where the first ended."""
  cache = tmp_path / "jax"
  init_search_state = search.init_search_state
  small = {"data.train_size": 32, "data.batch_size": 8, "model.nodes": 1, "search.epochs": 1}
  search_config = _config("darts_cifar10.py", cifar10_archive, cache, **small)
  first = train_lib.run_search(search_config, str(tmp_path / "s1"))
  assert "(saved trace)" not in capsys.readouterr().out
  saved = sorted(os.listdir(cache / "dnas_traces"))
  assert len(saved) == 2  # the initialiser and the step
  # Later runs, new or resumed, neither trace the initialiser nor the step.
  init_calls = []
  monkeypatch.setattr(search, "init_search_state",
                      lambda *a, **k: init_calls.append(1) or init_search_state(*a, **k))
  second = train_lib.run_search(search_config, str(tmp_path / "s2"))
  assert "(saved trace)" in capsys.readouterr().out
  train_lib.run_search(search_config, str(tmp_path / "s3"), stop_after_steps=1)
  resumed = train_lib.run_search(search_config, str(tmp_path / "s3"))
  out = capsys.readouterr().out
  assert "resuming" in out and "(saved trace)" in out
  train_lib.run_search(search_config, str(tmp_path / "s1"))  # finished: no step to compile
  assert "compile" not in capsys.readouterr().out
  # Another seed needs no trace of its own: the seed is an argument of both traces.
  reseeded = train_lib.run_search(
      _config("darts_cifar10.py", cifar10_archive, cache, seed=3, **small), str(tmp_path / "s4"))
  assert "(saved trace)" in capsys.readouterr().out
  assert not init_calls
  assert sorted(os.listdir(cache / "dnas_traces")) == saved
  for run in (second, resumed):
    for k in first["op_weights"]:
      np.testing.assert_array_equal(first["op_weights"][k], run["op_weights"][k])
  # ... and ends where a run of that seed that traces its own steps (another cache) ends.
  traced = train_lib.run_search(_config("darts_cifar10.py", cifar10_archive, tmp_path / "jax2",
                                        seed=3, **small), str(tmp_path / "s5"))
  assert "(saved trace)" not in capsys.readouterr().out and init_calls
  for k in first["op_weights"]:
    np.testing.assert_array_equal(reseeded["op_weights"][k], traced["op_weights"][k])
    assert not np.array_equal(reseeded["op_weights"][k], first["op_weights"][k])

  genotype = genotypes.darts(normal=[("sep_conv_3x3", 0), ("skip_connect", 1)],
                             reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1)],
                             normal_concat=(2,), reduce_concat=(2,))
  train_config = _config("train_cifar10.py", cifar10_archive, cache, **{
      "data.train_size": 32, "data.test_size": 16, "data.batch_size": 16,
      "data.eval_batch_size": 16, "model.channels": 4, "model.layers": 3,
      "model.auxiliary": False, "train.epochs": 1})
  runs = [train_lib.run_train(train_config, genotype, str(tmp_path / w)) for w in ("t1", "t2")]
  train_config.seed += 1
  runs.append(train_lib.run_train(train_config, genotype, str(tmp_path / "t3")))
  # Saved once, loaded twice (another seed included).
  assert len(os.listdir(cache / "dnas_traces")) == len(saved) + 2
  for run in runs:
    run.pop("init_s")
  assert runs[0] == runs[1] and runs[0]["step"] == 2 and runs[0]["test_acc"] is not None
  assert runs[2]["step"] == 2 and runs[2]["test_loss"] != runs[0]["test_loss"]
  lines = [(tmp_path / w / "metrics.jsonl").read_text().splitlines() for w in ("t1", "t2")]
  strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "images_per_s"}
  assert [strip(x) for x in lines[0]] == [strip(x) for x in lines[1]] and len(lines[0]) >= 2


def test_a_step_jax_export_refuses_still_compiles(tmp_path, capsys):
  """A host callback cannot be exported: the step compiles under plain jit, with a warning."""

  def step(x):
    y = jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct((3,), jnp.float32), x)
    return y + 1

  compiled, traced = aot.compile_step(step, (jnp.arange(3.0),), cache_dir=str(tmp_path), key="k")
  assert traced and "the step cannot be saved" in capsys.readouterr().err
  np.testing.assert_array_equal(compiled(jnp.arange(3.0)), [1.0, 3.0, 5.0])
  assert not (tmp_path / "dnas_traces").exists() or not list((tmp_path / "dnas_traces").iterdir())
