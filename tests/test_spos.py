"""SPOS / RSPS: uniform single-path training, BN recalibration, path evaluation and selection."""

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from dnas import oneshot, search
from dnas.ops import layers
from dnas.ops.sets import NB201
from dnas.rng import fast_init_key
from dnas.spaces.common import arch_init
from dnas.spaces.nb201 import NB201SearchNet
from dnas.strategies import registry
from dnas.strategies.spos import expected_weights, spos, uniform_path_mix
from dnas.types import SampledOps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTEXT = registry.StrategyContext(learning_rate=0.025, momentum=0.9, weight_decay=5e-4,
                                   total_steps=10, steps_per_epoch=5)
SHAPES = {"cell": (6, 5)}


def _images(seed, n=4, hw=8):
  return jax.random.normal(jax.random.key(seed), (n, hw, hw, 3))


def _init(model, images):
  return jax.jit(lambda k: model.init(k, images, train=True))(fast_init_key(jax.random.key(1)))


# ---------------------------------------------------------------------------------------------
# The strategy.


def test_registered_with_rsps_defaults_and_checked_options():
  strategy = registry.build("spos", {}, CONTEXT)
  assert not strategy.learns_arch
  # NAS-Bench-201's RSPS: 100 random paths, one validation batch each, running statistics.
  assert strategy.select == oneshot.SelectSettings(
      selection="random", candidates=100, calibration_batches=0, eval_batches=1,
      eval_batch_size=64, population=50, parents=10, mutations=25, crossovers=25,
      mutation_prob=0.1, generations=20)
  evo = registry.build("spos", {"selection": "evolution", "calibration_batches": 200,
                                "eval_batches": 40}, CONTEXT)
  assert evo.select.selection == "evolution" and evo.select.calibration_batches == 200
  with pytest.raises(ValueError, match="config.search.spos.selection"):
    registry.build("spos", {"selection": "grid"}, CONTEXT)
  with pytest.raises(ValueError, match="config.search.spos.parents"):
    registry.build("spos", {"parents": 0}, CONTEXT)
  with pytest.raises(ValueError, match="takes no option 'order'"):
    registry.build("spos", {"order": 2}, CONTEXT)
  with pytest.raises(NotImplementedError):
    strategy.arch_grad(None, None, None, None, None)


def test_mix_draws_uniform_independent_one_hot_paths_without_gradient():
  arch = {"cell": jnp.zeros((6, 5)), "other": jnp.zeros((2, 3))}
  keys = jax.random.split(jax.random.key(0), 4000)
  mixed = jax.jit(jax.vmap(lambda k: uniform_path_mix(arch, (), k)))(keys)
  cell = mixed["cell"]
  assert isinstance(cell, SampledOps)
  assert cell.index.shape == (4000, 6) and cell.index.dtype == jnp.int32
  np.testing.assert_array_equal(cell.weights, jax.nn.one_hot(cell.index, 5))
  assert mixed["other"].weights.shape == (4000, 2, 3)
  idx = np.asarray(cell.index)
  freq = np.stack([(idx == k).mean(0) for k in range(5)])  # [op, edge]
  np.testing.assert_allclose(freq, 0.2, atol=0.035)  # sd 0.0063
  joint = np.array([[np.mean((idx[:, 0] == a) & (idx[:, 1] == b)) for b in range(5)]
                    for a in range(5)])
  np.testing.assert_allclose(joint, 0.04, atol=0.016)  # sd 0.0031: edges drawn independently
  assert len({tuple(r) for r in idx[:50]}) > 45  # a new path per key
  grad = jax.grad(lambda a: jnp.sum(uniform_path_mix(a, (), keys[0])["cell"].weights
                                    * jnp.arange(30.).reshape(6, 5)))(arch)
  assert not np.any(np.asarray(grad["cell"]))
  np.testing.assert_allclose(expected_weights(arch, ())["cell"], 0.2)
  with pytest.raises(ValueError, match="needs a key"):
    uniform_path_mix(arch, (), None)


class _ToyNet(nn.Module):
  """A two-edge supernet (ops: none, skip, conv-BN) taking dense or sampled op weights."""

  def arch_shapes(self):
    return {"cell": (2, 3)}

  @nn.compact
  def __call__(self, x, op_weights=None, train=True):
    if self.is_initializing():
      self.variable("arch", "cell", arch_init, self.make_rng("params"), (2, 3))
    w = op_weights["cell"] if op_weights is not None else jnp.full((2, 3), 1 / 3)
    w = w.weights if isinstance(w, SampledOps) else w
    x = layers.batch_norm(train, affine=False, name="stem_bn")(nn.Conv(4, (3, 3))(x))
    for e in range(2):
      y = nn.Conv(4, (3, 3), use_bias=False, name=f"conv{e}")(nn.relu(x))
      x = w[e, 1] * x + w[e, 2] * layers.batch_norm(train, affine=False, name=f"bn{e}")(y)
    return nn.Dense(10)(jnp.mean(x, (1, 2)))


def test_step_compiles_once_trains_single_paths_and_leaves_alpha():
  chex.clear_trace_counter()
  model = _ToyNet()
  strategy = spos()
  # Plain SGD: a weight moves exactly when its gradient is nonzero (no momentum, no decay).
  weight_tx, arch_tx = optax.sgd(0.1), search.darts_arch_optimizer()
  images = _images(0)
  batch = {"image": images, "label": jnp.arange(4) % 10}
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(0),
                                   images)
  step = jax.jit(chex.assert_max_traces(
      search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False), n=1))
  start = jax.device_get(state)
  paths = []
  for _ in range(6):
    # The path of this step: mix at the step's key (make_search_step's weight key).
    key = jax.random.split(jax.random.fold_in(state.key, state.step))[1]
    drawn = tuple(int(i) for i in uniform_path_mix(state.arch, (), key)["cell"].index)
    before = jax.device_get(state.params)
    state, metrics = step(state, batch, batch)
    after = jax.device_get(state.params)
    for e in range(2):
      # Edge e's conv trains iff the path runs it (op 2) and no later edge is `none` (op 0).
      runs = drawn[e] == 2 and all(k != 0 for k in drawn[e + 1:])
      moved = np.any(before[f"conv{e}"]["kernel"] != after[f"conv{e}"]["kernel"])
      assert moved == runs, (drawn, e)
    paths.append(drawn)
  assert int(state.step) == 6 and len(set(paths)) > 1
  assert set(metrics) == {"train_loss", "train_acc", "grad_norm", "skipped"}
  assert int(metrics["skipped"]) == 0 and np.isfinite(float(metrics["train_loss"]))
  jax.tree.map(np.testing.assert_array_equal, start.arch, jax.device_get(state.arch))
  jax.tree.map(np.testing.assert_array_equal, start.arch_opt_state,
               jax.device_get(state.arch_opt_state))


@pytest.fixture(scope="module")
def nb201():
  """The tiny NB201 supernet, its variables and a few batches (8x8 images, batch 4)."""
  model = NB201SearchNet(num_classes=10, channels=4, cells_per_stage=1)
  v = _init(model, _images(0))
  train = [{"image": _images(10 + i), "label": jnp.arange(4) % 10} for i in range(4)]
  return model, v, train


def test_nb201_step_compiles_once_and_trains_the_weights_alone(nb201, fast_compile):
  chex.clear_trace_counter()
  model, _, train = nb201
  strategy = registry.build("spos", {}, CONTEXT)
  weight_tx, _ = search.darts_weight_optimizer(total_steps=10)
  arch_tx = search.darts_arch_optimizer()
  state = search.init_search_state(model, strategy, weight_tx, arch_tx, jax.random.key(0),
                                   train[0]["image"])
  step = jax.jit(chex.assert_max_traces(
      search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False), n=1))
  start = jax.device_get(state)
  for i in range(2):  # the second step reuses the first one's compilation
    state, metrics = step(state, train[i], train[i])
  assert int(state.step) == 2 and int(metrics["skipped"]) == 0
  assert set(metrics) == {"train_loss", "train_acc", "grad_norm", "skipped"}
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  jax.tree.map(np.testing.assert_array_equal, start.arch, jax.device_get(state.arch))
  for name in ("params", "batch_stats"):
    before, after = jax.tree.leaves(getattr(start, name)), jax.tree.leaves(getattr(state, name))
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), name


# ---------------------------------------------------------------------------------------------
# Recalibration and evaluation.


def test_recalibration_is_the_exact_average_of_batch_moments():
  model = _ToyNet()
  v = _init(model, _images(0))
  batches = [{"image": _images(s) * (1 + s)} for s in range(3)]
  weights = oneshot.path_weights({"cell": (2, 1)}, model.arch_shapes())
  stale = jax.tree.map(lambda a: a + 7.0, v["batch_stats"])  # the incoming values don't matter
  stats = oneshot.recalibrate_batch_stats(model, v["params"], stale, weights, batches)
  # By hand: the stem convolution's outputs, their biased moments per batch, averaged.
  conv = nn.Conv(4, (3, 3))
  means, variances = [], []
  for b in batches:
    y = np.asarray(conv.apply({"params": v["params"]["Conv_0"]}, b["image"]), np.float64)
    means.append(y.mean((0, 1, 2)))
    variances.append(y.var((0, 1, 2)))
  np.testing.assert_allclose(stats["stem_bn"]["mean"], np.mean(means, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["stem_bn"]["var"], np.mean(variances, 0), rtol=1e-5)
  # Not a momentum average: the batches weigh alike, so their order does not matter.
  again = oneshot.recalibrate_batch_stats(model, v["params"], v["batch_stats"], weights,
                                          batches[::-1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats,
               again)
  with pytest.raises(ValueError, match="no batches"):
    oneshot.recalibrate_batch_stats(model, v["params"], stale, weights, [])


def test_nb201_recalibration_averages_every_batch_norm_of_the_path(nb201):
  model, v, train = nb201
  path = {"cell": (3, 1, 2, 3, 4, 1)}

  def recal(batches, sampled=True):
    weights = oneshot.path_weights(path, model.arch_shapes(), sampled=sampled)
    return jax.device_get(oneshot.recalibrate_batch_stats(model, v["params"], v["batch_stats"],
                                                          weights, batches))

  one, two = recal(train[:1]), recal(train[1:2])
  both = recal(train[:2])
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)  # noqa: E731
  jax.tree.map(lambda a, b, c: close(c, (a + b) / 2), one, two, both)
  jax.tree.map(close, recal(train[:1] * 3), one)  # three equal batches: the batch's moments
  # The sampled path runs only its ops: their BatchNorms have the dense path's statistics (the
  # same inputs), the others' come back 0. Dense one-hot weights run (and recalibrate) them all.
  dense = recal(train[:1], sampled=False)
  zeros = 0
  for a, d in zip(jax.tree.leaves(one), jax.tree.leaves(dense)):
    off = a == 0
    np.testing.assert_allclose(a[~off], d[~off], rtol=1e-4, atol=1e-6)
    zeros += int(off.sum())
  assert 0 < zeros < sum(a.size for a in jax.tree.leaves(one))
  assert all(np.all(leaf > 0) for p, leaf in jax.tree_util.tree_leaves_with_path(dense)
             if "var" in jax.tree_util.keystr(p))


def test_evaluate_path_is_the_eval_mode_accuracy_of_the_path(nb201):
  model, v, train = nb201
  shapes = model.arch_shapes()
  images = train[0]["image"]
  stats = jax.tree.map(lambda a: a + 0.5, v["batch_stats"])  # eval mode reads these
  sizes = []
  for path in ({"cell": (3, 1, 2, 3, 4, 1)}, {"cell": (1, 3, 3, 2, 0, 4)},
               {"cell": (4, 4, 1, 1, 3, 2)}):
    dense = oneshot.one_hot_weights(path, shapes)
    logits = model.apply({"params": v["params"], "batch_stats": stats}, images,
                         {"cell": jnp.asarray(dense["cell"])}, train=False)
    pred = np.asarray(jnp.argmax(logits, -1))
    # Two right, one wrong, one padding: 2/3 only if the path and statistics are the ones used.
    labels = jnp.asarray([pred[0], pred[1], (pred[2] + 1) % 10, -1], jnp.int32)
    acc = oneshot.evaluate_path(model, v["params"], stats, oneshot.path_weights(path, shapes),
                                [{"image": images, "label": labels}])
    np.testing.assert_allclose(float(acc), 2 / 3, rtol=1e-6)
    sizes.append(oneshot._add_counts._cache_size())  # pylint: disable=protected-access
  assert sizes[0] == sizes[1] == sizes[2]  # one compilation serves every path
  with pytest.raises(ValueError, match="no batches"):
    oneshot.evaluate_path(model, v["params"], stats, oneshot.path_weights(path, shapes), [])


# ---------------------------------------------------------------------------------------------
# Searches over paths, on a table of known scores.


def _table_score(table):
  """An additive score: the sum over edges of ``table[edge, op]``; best: each row's argmax."""
  def score(path):
    return float(sum(table[e, k] for e, k in enumerate(path["cell"])))
  best = {"cell": tuple(int(k) for k in np.argmax(table, 1))}
  return score, best


def test_random_search_samples_uniformly_with_replacement_and_keeps_the_best():
  table = np.random.default_rng(0).normal(size=(3, 3))
  score, best = _table_score(table)
  path, records = oneshot.random_search(score, {"cell": (3, 3)}, 200, jax.random.key(0))
  assert path == best and len(records) == 200
  assert all(s == score(p) for p, s in records)
  assert len({tuple(p["cell"]) for p, _ in records}) < 200  # drawn with replacement
  assert path == records[int(np.argmax([s for _, s in records]))][0]
  again = oneshot.random_search(score, {"cell": (3, 3)}, 200, jax.random.key(0))[1]
  other = oneshot.random_search(score, {"cell": (3, 3)}, 200, jax.random.key(1))[1]
  assert again == records and other != records
  ops = np.array([p["cell"] for p, _ in records]).ravel()
  np.testing.assert_allclose(np.bincount(ops, minlength=3) / ops.size, 1 / 3, atol=0.06)


def test_evolution_finds_the_best_path_within_spos_budget():
  table = np.random.default_rng(1).normal(size=(6, 5))
  score, best = _table_score(table)
  path, records = oneshot.evolution(score, SHAPES, jax.random.key(0))
  assert path == best
  assert len(records) == 50 * 21  # SPOS: population 50, 20 generations after the first
  assert len({tuple(p["cell"]) for p, _ in records}) == len(records)  # each scored once
  assert all(s == score(p) for p, s in records)


def test_evolution_breeds_mutants_and_crossovers_of_the_best_paths():
  table = np.random.default_rng(2).normal(size=(6, 5))
  score, _ = _table_score(table)

  def parents_and_children(**kw):
    _, records = oneshot.evolution(score, SHAPES, jax.random.key(0), population=20, parents=4,
                                   generations=1, **kw)
    first, children = records[:20], [p["cell"] for p, _ in records[20:]]
    top = [p["cell"] for p, _ in sorted(first, key=lambda r: -r[1])[:4]]
    return np.array(top), np.array(children)

  # Mutation (SPOS' get_mutation): a parent with each op redrawn with probability 0.1; children
  # equal to a path already scored are drawn again, so each differs from its parent somewhere.
  top, children = parents_and_children(mutations=20, crossovers=0, mutation_prob=0.1)
  distance = np.min((children[:, None, :] != top[None, :, :]).sum(-1), axis=1)
  assert len(children) == 20 and distance.min() >= 1 and distance.mean() < 2.0, distance
  # Crossover (get_crossover): every op from one of two parents.
  top, children = parents_and_children(mutations=0, crossovers=20)
  assert len(children) == 20
  for child in children:
    assert any(np.all((child == a) | (child == b)) for a in top for b in top), child
  # Random paths are neither (a control: both checks would fail on them).
  draw = oneshot._draw_paths  # pylint: disable=protected-access
  random = np.array([p["cell"] for p in draw(jax.random.key(5), SHAPES, 20)])
  assert np.min((random[:, None, :] != top[None, :, :]).sum(-1), axis=1).mean() > 2.0


def test_evolution_beats_random_search_on_the_same_budget():
  """On an additive table, SPOS' evolution ends nearer the best than random search with as many
  scored paths (mean over seeds): a fair claim for a separable objective."""
  gaps = {"evolution": [], "random": []}
  for seed in range(8):
    table = np.random.default_rng(100 + seed).normal(size=(6, 5))
    score, best = _table_score(table)
    top = score(best)
    _, evo = oneshot.evolution(score, SHAPES, jax.random.key(seed), population=20, parents=5,
                               mutations=10, crossovers=10, generations=5)
    _, rnd = oneshot.random_search(score, SHAPES, len(evo), jax.random.key(seed))
    gaps["evolution"].append(top - max(s for _, s in evo))
    gaps["random"].append(top - max(s for _, s in rnd))
  assert np.mean(gaps["evolution"]) < 0.5 * np.mean(gaps["random"]), gaps


def test_evolution_stops_when_the_space_runs_out():
  score, best = _table_score(np.arange(4.0).reshape(2, 2))
  path, records = oneshot.evolution(score, {"cell": (2, 2)}, jax.random.key(0), population=3,
                                    parents=2, mutations=2, crossovers=2, generations=3)
  assert path == best and len(records) == 4  # all of the 4 paths, each once


# ---------------------------------------------------------------------------------------------
# End to end.


def _sources(train, n_val=3):
  calls = []

  def train_fn(i):
    calls.append(i)
    return train[i % len(train)]

  val = [{"image": _images(50 + i), "label": jnp.asarray([i, 1, 2, -1], jnp.int32)}
         for i in range(n_val)]
  return train_fn, calls, val


def test_select_scores_each_candidate_on_its_own_batches(nb201):
  model, v, train = nb201
  shapes = model.arch_shapes()
  train_fn, calls, val = _sources(train)
  settings = oneshot.SelectSettings(selection="random", candidates=3, calibration_batches=2,
                                    eval_batches=2)
  weights, records = oneshot.select(model, v["params"], v["batch_stats"], settings, train_fn,
                                    val, jax.random.key(3))
  assert calls == list(range(6)) and len(records) == 3
  best = int(np.argmax([s for _, s in records]))
  np.testing.assert_array_equal(weights["cell"], oneshot.one_hot_weights(records[best][0],
                                                                         shapes)["cell"])
  assert model.genotype(weights).ops == tuple(NB201.ops[k] for k in records[best][0]["cell"])
  # Candidate i: BN recalibrated on train batches 2i, 2i+1, scored on the validation list
  # read on from where the previous candidate stopped (cycling: 0, 1 | 2, 0 | 1, 2).
  for i, (path, acc) in enumerate(records):
    w = oneshot.path_weights(path, shapes)
    stats = oneshot.recalibrate_batch_stats(model, v["params"], v["batch_stats"], w,
                                            [train_fn(2 * i), train_fn(2 * i + 1)])
    want = oneshot.evaluate_path(model, v["params"], stats, w,
                                 [val[(2 * i) % 3], val[(2 * i + 1) % 3]])
    assert acc == float(want)


def test_select_by_evolution_without_recalibration(nb201):
  model, v, train = nb201
  _, calls, val = _sources(train)
  settings = oneshot.SelectSettings(selection="evolution", calibration_batches=0,
                                    eval_batches=1, population=3, parents=2, mutations=1,
                                    crossovers=1, generations=1)
  weights, records = oneshot.select(model, v["params"], v["batch_stats"], settings,
                                    iter(()), val, jax.random.key(0))
  assert len(records) == 6 and not calls  # the training batches are never read
  assert len({tuple(p["cell"]) for p, _ in records}) == 6
  assert weights["cell"].shape == (6, 5) and np.all(weights["cell"].sum(1) == 1)
  # A one-shot iterator that runs out is an error, not a silent restart.
  with pytest.raises(ValueError, match="ran out"):
    oneshot.select(model, v["params"], v["batch_stats"], settings._replace(eval_batches=2),
                   None, iter(val), jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# The experiment config.


def test_experiment_config_is_nb201_rsps():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "nb201_spos", os.path.join(REPO, "experiments", "nb201_spos_cifar10.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.VARIANTS == ("default", "smoke")
  with pytest.raises(ValueError, match="valid: default, smoke"):
    module.get_config("no-such-variant")
  c = module.get_config()
  assert c.search.strategy == "spos" and isinstance(c.search.spos, ml_collections.ConfigDict)
  for key in ("order", "hessian", "virtual_step"):
    assert key not in c.search
  # configs/nas-benchmark/algos/RANDOM.config and scripts-search/algos/RANDOM-NAS.sh.
  assert (c.search.epochs, c.search.learning_rate, c.search.min_learning_rate) == (
      250, 0.025, 0.001)
  assert (c.search.momentum, c.search.nesterov, c.search.weight_decay, c.search.grad_clip) == (
      0.9, True, 5e-4, 5.0)
  assert (c.data.batch_size, c.data.split, c.model.channels, c.model.layers) == (
      64, "nb201", 16, 5)
  strategy = registry.build("spos", c.search.spos.to_dict(), CONTEXT)
  assert strategy.select == oneshot.SelectSettings()
  smoke = module.get_config("smoke")
  assert (smoke.model.channels, smoke.model.layers, smoke.data.train_size,
          smoke.search.epochs) == (4, 1, 256, 2)
  assert registry.build("spos", smoke.search.spos.to_dict(), CONTEXT).select.candidates < 10
