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
      _score(imp), w, key=jax.random.key(3), finetune=lambda ww: seen.append(ww))
  visited = [(r["cell"], r["edge"]) for r in records]
  assert sorted(visited) == [("normal", 0), ("normal", 1), ("normal", 2), ("reduce", 0),
                             ("reduce", 1)]
  assert visited != sorted(visited)  # shuffled by the key
  assert len(seen) == 5 and np.array_equal(seen[-1]["reduce"], out["reduce"])
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
