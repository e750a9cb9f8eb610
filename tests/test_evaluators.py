"""Evaluators: a table's column, a path of a supernet, a cell trained briefly, by name."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import benchmarks, blackbox, oneshot, train_lib
from dnas.blackbox import evaluators
from dnas.spaces import NB201SearchNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get(benchmarks.ENV_VAR, os.path.join(REPO, "..", "shared", "nasbench"))
TRAIN_CONFIG = os.path.join(REPO, "experiments", "train_cifar10.py")


def test_registry_lists_the_built_in_evaluators_and_names_unknown_ones():
  assert {"table", "one_shot", "low_fidelity", "zero_cost"} <= set(evaluators.evaluator_names())
  with pytest.raises(evaluators.UnknownEvaluatorError, match="'nope'.*low_fidelity"):
    evaluators.get_evaluator("nope")


def test_table_evaluator_is_the_tables_value_of_the_decoded_cell():
  table = benchmarks.load_nb201(NB201_DIR, latency=False)
  space = blackbox.nb201_space()
  evaluate = evaluators.get_evaluator("table", table=table, column="cifar10_valid")
  for codes in ([0] * 6, [3, 1, 4, 1, 2, 0], [4] * 6):
    assert evaluate(np.array(codes)) == table.query(space.decode(np.array(codes)),
                                                    "cifar10_valid")
  with pytest.raises(benchmarks.TableError, match="unknown column 'accuracy'"):
    evaluators.get_evaluator("table", table=table, column="accuracy")


def test_supernet_path_runs_the_decoded_cell(fast_compile):
  model = NB201SearchNet(num_classes=10, channels=4, cells_per_stage=1)
  space = blackbox.nb201_space()
  path = evaluators.supernet_path(model, space)
  rng = np.random.default_rng(0)
  for _ in range(5):
    codes = rng.integers(0, 5, 6).astype(np.int32)
    p = path(codes)
    derived = model.genotype(oneshot.one_hot_weights(p, model.arch_shapes()))
    assert derived.arch == space.decode(codes)

  # one_shot: the path's eval-mode accuracy, through the same path weights.
  images = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  batch = {"image": images, "label": jnp.arange(8) % 10}
  v = jax.jit(lambda k, x: model.init(k, x, train=True))(jax.random.key(0), images)
  evaluate = evaluators.get_evaluator("one_shot", model=model, params=v["params"],
                                      batch_stats=v["batch_stats"], val_batches=[batch])
  codes = np.array([2, 3, 1, 4, 2, 3], np.int32)
  w = oneshot.path_weights(path(codes), model.arch_shapes())
  expect = float(oneshot.evaluate_path(model, v["params"], v["batch_stats"], w, [batch]))
  assert evaluate(codes) == expect


def test_low_fidelity_trains_on_all_but_the_holdout_and_never_twice(cifar10_archive, caches,
                                                                    tmp_path, monkeypatch):
  c = train_lib.load_config(TRAIN_CONFIG, "nb201")
  c.data.path = cifar10_archive
  c.data.cache_dir = str(caches / "data")
  c.compilation_cache_dir = str(caches / "jax")
  c.data.train_size, c.data.holdout, c.data.batch_size = 96, 32, 32
  c.data.eval_batch_size = 32
  c.model.channels, c.model.layers, c.train.epochs = 4, 1, 1
  c.xla_cpu_preset = "fast_compile"
  c.log_every_steps = 1
  with pytest.raises(ValueError, match="data.holdout must hold out"):
    evaluators.get_evaluator("low_fidelity", config=train_lib.load_config(TRAIN_CONFIG, "nb201"),
                             workdir=str(tmp_path))
  evaluate = evaluators.get_evaluator("low_fidelity", config=c, workdir=str(tmp_path / "lf"))
  codes = np.array([3, 3, 1, 0, 2, 3], np.int32)
  score = evaluate(codes)
  (folder,) = list((tmp_path / "lf").iterdir())
  assert (folder / "arch.txt").read_text().strip() == blackbox.nb201_space().decode(codes)
  final = json.loads((folder / "final_metrics.json").read_text())
  assert score == final["holdout_acc"] and "test_acc" not in final
  lines = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if "split" in l]
  assert evals and all(l["split"] == "holdout" and "holdout_acc" in l for l in evals)
  # 96 images, 32 held out: 64 train, 2 steps of 32 per epoch.
  assert max(l["step"] for l in lines) == 2
  # Asked again, the finished run is read back: nothing trains.
  monkeypatch.setattr("dnas.train_loop.run_train",
                      lambda *a, **k: pytest.fail("trained a second time"))
  assert evaluate(codes) == score


def test_zero_cost_evaluator_scores_the_decoded_network(fast_compile):
  from dnas import proxies  # pylint: disable=g-import-not-at-top
  from dnas.eval_net import NB201Network  # pylint: disable=g-import-not-at-top
  images = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
  batch = {"image": images, "label": jnp.arange(8) % 10}
  space = blackbox.nb201_space()
  evaluate = evaluators.get_evaluator("zero_cost", proxy="snip", batch=batch, channels=4,
                                      cells_per_stage=1, seed=3)
  codes = np.array([3, 0, 2, 3, 1, 4], np.int32)
  model = NB201Network(space.decode(codes), num_classes=10, channels=4, cells_per_stage=1)
  variables = model.init(jax.random.key(3), images[:1], train=False)
  expect = float(proxies.score("snip", proxies.flax_apply_fn(model), variables, batch))
  assert evaluate(codes) == pytest.approx(expect, rel=1e-6)
  with pytest.raises(proxies.UnknownProxyError, match="'nope'"):
    evaluators.get_evaluator("zero_cost", proxy="nope", batch=batch)
