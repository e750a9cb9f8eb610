"""Perturbation-based selection (DARTS-PT): keep on each edge the op whose removal hurts most.

Wang, Cheng, Chen, Tang & Hsieh, "Rethinking Architecture Selection in Differentiable NAS",
ICLR 2021. After a supernet is trained (by any strategy), alpha's magnitudes need not say which
op matters to the supernet: DARTS-PT instead removes each op of an edge in turn and measures the
supernet's validation accuracy without it. The op whose removal costs the most accuracy is
kept, the edge is fixed to it (its op weights become one-hot), the supernet is optionally
fine-tuned, and the next edge follows, edges in a random order (the reference,
github.com/ruocwang/darts-pt ``nasbench201/projection.py``, ``pt_project``: its ``project``
masks each op of a randomly chosen remaining edge in turn, evaluates the supernet on the
validation queue, keeps the op with the lowest accuracy (``proj_crit='acc'``), then
``project_op``; ``proj_intv`` epochs of fine-tuning at a tenth of the learning rate between
edges).

``perturbation_select`` is the procedure over any ``score_fn(op_weights) -> accuracy``, so it
is tested on hand-built scores and runs on any supernet; ``supernet_score_fn`` builds the
usual one: the supernet's top-1 accuracy on validation batches, BatchNorm in eval mode, at the
given op weights (``dnas.oneshot.evaluate_path``).

Removing an op sets its weight on that edge to 0 and leaves the others as they are (not
renormalised), as the reference's ``proj_mask`` does. Edges already fixed are not revisited.
This is the op selection of the NAS-Bench-201 cell (every edge keeps one op); DARTS' cells also
select which two input edges each node keeps, by removing whole edges (the reference's
``project_edge``), which dnas does not offer yet: a DARTS-space genotype is derived from the
projected weights by DARTS' usual rule.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

OpWeights = Dict[str, np.ndarray]


def perturbation_select(score_fn: Callable[[OpWeights], float],
                        op_weights: Mapping[str, Any], key: Optional[jax.Array] = None,
                        finetune: Optional[Callable[[OpWeights], Any]] = None,
                        protected: Sequence[int] = ()) -> Tuple[OpWeights, List[dict]]:
  """Fixes every edge to the op whose removal lowers ``score_fn`` the most.

  Args:
    score_fn: op weights (``{cell_type: [E, K]}``) -> the supernet's validation accuracy
      (higher is better).
    op_weights: the trained supernet's op weights (e.g. ``softmax(alpha)``).
    key: shuffles the order the edges are visited in (None: cell types sorted, edges in
      order).
    finetune: called with the op weights after each edge is fixed, e.g. to train the supernet
      a few steps at them (the paper's fine-tuning between edges); ``score_fn`` should then
      read the updated supernet.
    protected: op indices never removed or kept (e.g. ``none``'s, where a space forbids it).

  Returns:
    ``(weights, records)``: one-hot op weights per edge, and per edge visited in order
    ``{"cell", "edge", "base", "drops" (per op; None where not tried), "kept"}``.

  Raises:
    ValueError: a malformed ``op_weights``, or an edge left with no op to try.
  """
  w = {k: np.array(v, np.float64) for k, v in op_weights.items()}
  for k, v in w.items():
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
      raise ValueError(f"op_weights[{k!r}]: expected [edges, ops], got shape {v.shape}")
  order = [(cell, e) for cell in sorted(w) for e in range(w[cell].shape[0])]
  if key is not None:
    order = [order[i] for i in np.asarray(jax.random.permutation(key, len(order)))]
  records = []
  for cell, e in order:
    base = float(score_fn(w))
    drops: List[Optional[float]] = []
    for o in range(w[cell].shape[1]):
      if o in protected:
        drops.append(None)
        continue
      trial = {k: v.copy() for k, v in w.items()}
      trial[cell][e, o] = 0.0
      drops.append(base - float(score_fn(trial)))
    tried = [o for o, d in enumerate(drops) if d is not None]
    if not tried:
      raise ValueError(f"{cell} edge {e}: every op is protected; nothing to select")
    kept = max(tried, key=lambda o: (drops[o], w[cell][e, o]))  # ties: the larger weight
    w[cell][e] = np.eye(w[cell].shape[1])[kept]
    records.append({"cell": cell, "edge": int(e), "base": base, "drops": drops,
                    "kept": int(kept)})
    if finetune is not None:
      finetune({k: v.copy() for k, v in w.items()})
  return w, records


def supernet_score_fn(model: Any, params: Any, batch_stats: Any,
                      batches: Iterable[Any]) -> Callable[[OpWeights], float]:
  """``op_weights -> accuracy`` of ``model`` on ``batches`` (eval mode), for
  ``perturbation_select``; one compilation serves every call (the weights are traced)."""
  from dnas import oneshot  # pylint: disable=g-import-not-at-top
  batches = list(batches)

  def score(op_weights):
    weights = {k: np.asarray(v, np.float32) for k, v in op_weights.items()}
    return float(oneshot.evaluate_path(model, params, batch_stats, weights, batches))

  return score
