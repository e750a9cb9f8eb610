"""DARTS-PT's perturbation-based selection: the op whose removal hurts most is kept."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import perturbation
from dnas.spaces import nb201


def _score(importance):
  """A hand-built 'supernet': accuracy = sum over edges and ops of importance x weight."""
  return lambda w: float(sum((importance[k] * w[k]).sum() for k in w))


def test_keeps_the_op_whose_removal_hurts_most_not_the_largest_weight():
  w = {"cell": np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])}
  imp = {"cell": np.array([[0.1, 1.0, 0.0], [3.0, 0.1, 0.2]])}
  out, records = perturbation.perturbation_select(_score(imp), w)
  # Edge 0: removing op 0 costs 0.06, op 1 0.30, op 2 0: op 1 kept although op 0 weighs more.
  assert records[0]["drops"] == pytest.approx([0.06, 0.30, 0.0])
  assert [r["kept"] for r in records] == [1, 0]
  np.testing.assert_array_equal(out["cell"], [[0, 1, 0], [1, 0, 0]])
  # The second edge is judged with the first already fixed (one-hot).
  assert records[1]["base"] == pytest.approx(1.0 + 0.6 + 0.05 + 0.06)


def test_order_finetune_and_protected_ops():
  w = {"normal": np.full((3, 2), 0.5), "reduce": np.full((2, 2), 0.5)}
  imp = {"normal": np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
         "reduce": np.array([[0.0, 1.0], [1.0, 0.0]])}
  seen = []
  out, records = perturbation.perturbation_select(
      _score(imp), w, key=jax.random.key(3), finetune=lambda ww, fixed: seen.append(ww))
  visited = [(r["cell"], r["edge"]) for r in records]
  assert sorted(visited) == [("normal", 0), ("normal", 1), ("normal", 2), ("reduce", 0),
                             ("reduce", 1)]
  assert visited != sorted(visited)  # shuffled by the key
  assert len(seen) == 4  # between the 5 edges, not after the last
  np.testing.assert_array_equal(out["normal"].argmax(-1), [0, 1, 0])
  # A protected op (e.g. `none`) is never tried or kept, even where it would win.
  out, records = perturbation.perturbation_select(_score(imp), w, protected=(0,))
  assert all(r["kept"] == 1 and r["drops"][0] is None for r in records)
  with pytest.raises(ValueError, match="every op is protected"):
    perturbation.perturbation_select(_score(imp), w, protected=(0, 1))
  with pytest.raises(ValueError, match=r"expected \[edges, ops\]"):
    perturbation.perturbation_select(_score(imp), {"cell": np.ones(3)})


@pytest.mark.usefixtures("fast_compile")
def test_on_a_real_supernet_the_score_is_its_eval_accuracy():
  from dnas import oneshot  # pylint: disable=g-import-not-at-top
  model = nb201.NB201SearchNet(num_classes=10, channels=4, cells_per_stage=1)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(16, 32, 32, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32)}
  variables = model.init(jax.random.key(0), batch["image"])
  weights = {k: np.asarray(jax.nn.softmax(v, -1)) for k, v in variables["arch"].items()}
  score = perturbation.supernet_score_fn(model, variables["params"], variables["batch_stats"],
                                         [batch])
  want = float(oneshot.evaluate_path(model, variables["params"], variables["batch_stats"],
                                     weights, [batch]))
  assert score(weights) == pytest.approx(want)
  out, records = perturbation.perturbation_select(score, weights)
  assert len(records) == 6 and all(r["kept"] == int(np.argmax(out["cell"][r["edge"]]))
                                   for r in records)


def test_finetuning_runs_between_edges_and_fixed_edges_stay_fixed():
  """A fine-tuning that moves the supernet: it changes the importance of the ops and the
  undecided edges' weights, never an edge already decided."""
  w = {"cell": np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.3, 0.2, 0.5]])}
  imp = {"cell": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}
  calls = []

  def finetune(weights, fixed):
    calls.append((weights, fixed))
    imp["cell"] = imp["cell"][:, [1, 2, 0]]  # the supernet changed: a new op matters most
    return {"cell": np.full((3, 3), 1 / 3)}  # and alpha moved, everywhere

  out, records = perturbation.perturbation_select(_score(imp), w, finetune=finetune)
  assert len(calls) == 2  # 3 edges: after the first and the second only
  # Edge 0 judged by the first supernet, edge 1 by the second, edge 2 by the third.
  assert [r["kept"] for r in records] == [1, 2, 0]
  np.testing.assert_array_equal(calls[0][1]["cell"], [True, False, False])
  np.testing.assert_array_equal(calls[1][1]["cell"], [True, True, False])
  # The decided rows stay one-hot; the undecided took the moved weights (1/3 each).
  np.testing.assert_array_equal(calls[1][0]["cell"][0], [0, 1, 0])
  np.testing.assert_allclose(calls[1][0]["cell"][2], [1 / 3] * 3)
  assert records[2]["base"] == pytest.approx(0.0 + 0.0 + 1 / 3)
  np.testing.assert_array_equal(out["cell"], [[0, 1, 0], [0, 0, 1], [1, 0, 0]])


def test_darts_cells_keep_the_two_input_edges_whose_removal_hurts_most():
  # One node with 3 input edges (2 inputs + one earlier node), ops (none, a, b); none protected.
  w = {"normal": np.full((5, 3), 1 / 3)}
  imp = {"normal": np.array([[0, 1.0, 0.5], [0, 0.2, 0.1], [0, 0.1, 3.0], [0, 1.0, 0.0],
                             [0, 0.0, 2.0]])}
  out, records = perturbation.perturbation_select(
      _score(imp), w, protected=(0,), node_edges={"normal": [[0, 1], [2, 3, 4]]})
  ops = [r for r in records if "kept" in r and "edge" in r]
  assert [r["kept"] for r in ops] == [1, 1, 2, 1, 2]
  node = [r for r in records if "node" in r]
  assert [r["node"] for r in node] == [0, 1]
  assert node[0]["removed"] == [] and node[0]["kept"] == [0, 1]
  # Node 1: removing edge 3 (worth 1.0) hurts least of 3.0, 1.0, 2.0.
  assert node[1]["removed"] == [3] and node[1]["kept"] == [2, 4]
  np.testing.assert_array_equal(out["normal"][3], 0.0)
  np.testing.assert_array_equal(out["normal"][[2, 4]].argmax(-1), [2, 2])
  assert perturbation.darts_node_edges(14) == [[0, 1], [2, 3, 4], [5, 6, 7, 8],
                                               [9, 10, 11, 12, 13]]


def test_settings_are_checked():
  assert perturbation.resolve_settings(None) == perturbation.PERTURBATION_DEFAULTS
  for bad, match in (({"tune_epochs": -1}, "tune_epochs"), ({"bn": "x"}, "bn"),
                     ({"nope": 1}, "unknown key"), ({"tune_lr_scale": 0}, "tune_lr_scale")):
    with pytest.raises(ValueError, match=match):
      perturbation.resolve_settings(bad)


def test_strategies_it_cannot_fine_tune_or_select_from_are_refused_by_name():
  import os  # pylint: disable=g-import-not-at-top
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  from dnas.run_config import make_strategy  # pylint: disable=g-import-not-at-top
  from dnas.types import SampledOps  # pylint: disable=g-import-not-at-top
  experiments = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "experiments")
  # A sampling strategy's op weights cannot be held at their projected values.
  c = train_lib.load_config(os.path.join(experiments, "nb201_gdas_cifar10.py"), "smoke")
  gdas = make_strategy(c, c.search.learning_rate, total_steps=10, steps_per_epoch=1)
  arch = {"cell": jnp.zeros((6, 5))}
  state = perturbation.ProjectedState(gdas.init(arch), {"cell": np.zeros(6, bool)},
                                      {"cell": np.zeros((6, 5), np.float32)})
  assert isinstance(gdas.mix(arch, state.base, jax.random.key(0))["cell"], SampledOps)
  tuned = perturbation.projected_strategy(gdas)
  with pytest.raises(train_lib.ConfigError, match=r"perturbation\.tune_epochs: .*dense"):
    tuned.mix(arch, state, jax.random.key(0))
  # A strategy that learns no alpha has no op weights to select from.
  c = train_lib.load_config(os.path.join(experiments, "nb201_spos_cifar10.py"), "smoke")
  c.search.discretizer = "perturbation"
  with pytest.raises(train_lib.ConfigError, match=r"config\.search\.discretizer: .*spos"):
    train_lib.validate_search_config(c)
