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
DARTS' cells also select which two input edges each node keeps (``node_edges``): after every
edge has its op, node by node in a random order, the input edge whose removal (its whole row
set to 0) costs the least accuracy is removed until two remain (the reference's
``sota/cnn/projection.py``, ``project_edge``; ties remove the later edge, as its
``not compare(crit, crit_extrema)``).

``dnas search`` runs it at the end of a search with ``config.search.discretizer =
"perturbation"`` and the settings ``config.search.perturbation`` (``PERTURBATION_DEFAULTS``;
``select_in_search``): it scores with the supernet's validation accuracy and fine-tunes the
supernet between decisions with the search's own step (alpha of the undecided edges included,
``tune_arch``), the decided edges held at their projected op weights, at a tenth of the search's
learning rate, held constant, with a fresh momentum buffer (the reference's
``model.reset_optimizer(args.learning_rate / 10, ...)``), ``tune_epochs`` epochs between two
decisions (its ``--proj_intv 5``, ``exp_scripts/darts-proj-201.sh``). Where dnas differs from
the reference: no fine-tuning after the last decision (it cannot change the genotype; the
reference's ``tune_epochs = proj_intv * (num_edges - 1)`` loop trains one more epoch after its
last projection); in the DARTS space one decision per cell type at a time (the reference decides
a normal and a reduce edge together before each fine-tuning, and its cosine-annealed tuning
learning rate there is held constant here), and ``none`` is never kept there (a DARTS genotype
has no ``none``); the order comes from dnas' keys; scoring uses whole batches of
``batch_size`` (``eval_batches`` of them, 0: all the validation split's whole batches) with
BatchNorm on the batch's statistics (``bn="batch"``, the reference's ``infer(..., eval=False)``)
or on the running ones (``"running"``).
"""

from __future__ import annotations

import time
from typing import (Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple)

import jax
import numpy as np

from dnas.strategies.base import Strategy

OpWeights = Dict[str, np.ndarray]


def perturbation_select(score_fn: Callable[[OpWeights], float],
                        op_weights: Mapping[str, Any], key: Optional[jax.Array] = None,
                        finetune: Optional[Callable[[OpWeights, Dict[str, np.ndarray]], Any]]
                        = None, protected: Sequence[int] = (),
                        node_edges: Optional[Mapping[str, Sequence[Sequence[int]]]] = None,
                        keep_edges: int = 2) -> Tuple[OpWeights, List[dict]]:
  """Fixes every edge to the op whose removal lowers ``score_fn`` the most.

  Args:
    score_fn: op weights (``{cell_type: [E, K]}``) -> the supernet's validation accuracy
      (higher is better).
    op_weights: the trained supernet's op weights (e.g. ``softmax(alpha)``).
    key: shuffles the order the edges (and nodes) are visited in (None: cell types sorted,
      edges in order).
    finetune: called between two decisions (not after the last) with the op weights so far and
      ``fixed`` (``{cell_type: bool [E]}``, the rows decided), e.g. to train the supernet a few
      steps at them (the paper's fine-tuning between edges); ``score_fn`` should then read the
      updated supernet. If it returns op weights, the undecided rows take them (alpha moved).
    protected: op indices never removed or kept (e.g. ``none``'s, where a space forbids it).
    node_edges: ``{cell_type: [edge indices of each node]}``: after the ops, keep on each node
      the ``keep_edges`` input edges whose removal costs the most (DARTS' cells); None: no
      edge selection (NAS-Bench-201).
    keep_edges: the input edges a node keeps (DARTS: 2).

  Returns:
    ``(weights, records)``: one-hot op weights per edge (removed edges all zero), and per
    decision in order, ``{"cell", "edge", "base", "drops" (per op; None where not tried),
    "kept"}`` for an op, ``{"cell", "node", "edges", "rounds" (per round, the accuracy with
    each remaining edge removed), "removed", "kept"}`` for a node's edges.

  Raises:
    ValueError: a malformed ``op_weights``, or an edge left with no op to try.

  Example::

    weights, records = perturbation_select(supernet_score_fn(model, params, stats, batches),
                                           softmax_weights, key=jax.random.key(0))
  """
  w = {k: np.array(v, np.float64) for k, v in op_weights.items()}
  for k, v in w.items():
    if v.ndim != 2 or v.shape[0] < 1 or v.shape[1] < 1:
      raise ValueError(f"op_weights[{k!r}]: expected [edges, ops], got shape {v.shape}")
  fixed = {k: np.zeros(v.shape[0], bool) for k, v in w.items()}
  order = [("op", cell, e) for cell in sorted(w) for e in range(w[cell].shape[0])]
  nodes = [("node", cell, n) for cell in sorted(node_edges or {})
           for n in range(len(node_edges[cell]))]
  if key is not None:
    op_key, node_key = jax.random.split(key)
    order = [order[i] for i in np.asarray(jax.random.permutation(op_key, len(order)))]
    if nodes:
      nodes = [nodes[i] for i in np.asarray(jax.random.permutation(node_key, len(nodes)))]
  order += nodes
  records = []
  for i, (kind, cell, e) in enumerate(order):
    if kind == "op":
      records.append(_decide_op(score_fn, w, cell, e, protected))
    else:
      records.append(_decide_edges(score_fn, w, cell, e, list(node_edges[cell][e]),
                                   keep_edges))
    fixed[cell][e if kind == "op" else list(node_edges[cell][e])] = True
    if finetune is not None and i + 1 < len(order):
      moved = finetune({k: v.copy() for k, v in w.items()}, {k: v.copy() for k, v in
                                                             fixed.items()})
      if moved is not None:
        for k in w:
          w[k] = np.where(fixed[k][:, None], w[k], np.asarray(moved[k], np.float64))
  return w, records


def _decide_op(score_fn, w, cell, e, protected):
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
  return {"cell": cell, "edge": int(e), "base": base, "drops": drops, "kept": int(kept)}


def _decide_edges(score_fn, w, cell, node, edges, keep):
  remaining, removed, rounds = list(edges), [], []
  while len(remaining) > keep:
    accs = {}
    for e in remaining:
      trial = {k: v.copy() for k, v in w.items()}
      trial[cell][e] = 0.0
      accs[e] = float(score_fn(trial))
    worst = max(remaining[::-1], key=lambda e: accs[e])  # hurts least; ties: the later edge
    rounds.append({str(e): a for e, a in accs.items()})
    remaining.remove(worst)
    removed.append(int(worst))
    w[cell][worst] = 0.0
  return {"cell": cell, "node": int(node), "edges": [int(e) for e in edges], "rounds": rounds,
          "removed": removed, "kept": [int(e) for e in remaining]}


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


# --------------------------------------------------------------------------------------------
# DARTS-PT at the end of `dnas search`.

# `config.search.perturbation`: its keys and defaults (the reference's, module docstring).
PERTURBATION_DEFAULTS = {"tune_epochs": 5, "tune_lr_scale": 0.1, "tune_arch": True,
                         "batch_size": 64, "eval_batches": 0, "bn": "batch",
                         "edge_order": "random"}
BN_MODES = ("batch", "running")
EDGE_ORDERS = ("random", "fixed")
DISCRETIZERS = ("argmax", "perturbation")


def resolve_settings(settings: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """``config.search.perturbation`` checked and completed by ``PERTURBATION_DEFAULTS``.

  Raises:
    ValueError: an unknown key or a bad value, the message starting with the key.
  """
  out = dict(PERTURBATION_DEFAULTS)
  settings = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings or {})
  for k, v in settings.items():
    if k not in out:
      raise ValueError(f"{k}: unknown key; keys: {sorted(PERTURBATION_DEFAULTS)}")
    out[k] = v
  for k in ("tune_epochs", "eval_batches", "batch_size"):
    v, low = out[k], 1 if k == "batch_size" else 0
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
      raise ValueError(f"{k}: must be an int >= {low}, got {v!r}")
  v = out["tune_lr_scale"]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf"):
    raise ValueError(f"tune_lr_scale: must be a number > 0, got {v!r}")
  if not isinstance(out["tune_arch"], bool):
    raise ValueError(f"tune_arch: must be True or False, got {out['tune_arch']!r}")
  for k, valid in (("bn", BN_MODES), ("edge_order", EDGE_ORDERS)):
    if out[k] not in valid:
      raise ValueError(f"{k}: unknown value {out[k]!r}; valid: {list(valid)}")
  return out


def batch_stats_score_fn(model: Any, params: Any, batch_stats: Any,
                         batches: Iterable[Any]) -> Callable[[OpWeights], float]:
  """``op_weights -> accuracy`` with BatchNorm normalising by each batch's own statistics
  (training mode, the running statistics left as they are), as the reference scores."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  batches = list(batches)

  @jax.jit
  def correct(params, batch_stats, weights, batch):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                            weights, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.argmax(logits, -1) == batch["label"])

  def score(op_weights):
    weights = {k: np.asarray(v, np.float32) for k, v in op_weights.items()}
    hits = [correct(params, batch_stats, weights, b) for b in batches]
    return float(sum(int(h) for h in jax.device_get(hits))) / sum(
        int(b["label"].shape[0]) for b in batches)

  return score


class ProjectedState(NamedTuple):
  """A strategy's state, with the decided edges (``fixed``: ``{cell: bool [E]}``) held at
  ``weights`` (``{cell: [E, K]}``)."""
  base: Any
  fixed: Any
  weights: Any


def projected_strategy(base: Strategy, learns_arch: bool = True) -> Strategy:
  """``base`` whose op weights on the decided edges are replaced by their projected ones, in
  the weight pass, alpha's gradient (through its loss function) and the derive weights.

  Its state is a ``ProjectedState``; ``base``'s own state is held still (no schedule);
  ``learns_arch=False`` trains the weights alone. Needs dense op weights (not GDAS' samples).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dnas.strategies import base as strategy_base  # pylint: disable=g-import-not-at-top

  def project(weights, state: ProjectedState):
    from dnas.run_config import ConfigError  # pylint: disable=g-import-not-at-top
    from dnas.types import SampledOps  # pylint: disable=g-import-not-at-top
    if any(isinstance(w, SampledOps) for w in weights.values()):
      raise ConfigError(
          "config.search.perturbation.tune_epochs: fine-tuning between DARTS-PT's decisions "
          "holds decided edges at their projected weights, which needs dense op weights; this "
          "strategy samples one op per edge (GDAS). Set tune_epochs=0, or search with a dense "
          "strategy (darts)")
    return {k: jnp.where(state.fixed[k][:, None], state.weights[k].astype(w.dtype), w)
            for k, w in weights.items()}

  def mix(arch, state, key):
    return project(base.mix(arch, state.base, key), state)

  def arch_grad(problem, params, arch, state, key):
    loss_fn = problem.loss_fn
    problem = problem._replace(loss_fn=lambda p, w, b: loss_fn(p, project(w, state), b))
    return base.arch_grad(problem, params, arch, state.base, key)

  def derive_weights(arch, state):
    return project(strategy_base.derive_weights(base, arch, state.base), state)

  def eval_weights(arch, state):
    return project(strategy_base.eval_weights(base, arch, state.base), state)

  perturb = None
  if base.perturb is not None:
    perturb = lambda loss_at, w, state, key: project(
        base.perturb(loss_at, w, state.base, key), state)
  return Strategy(init=lambda arch: None, mix=mix, arch_grad=arch_grad,
                  regularizer=base.regularizer, derive_weights=derive_weights,
                  eval_weights=eval_weights, learns_arch=learns_arch and base.learns_arch,
                  perturb=perturb)


def darts_node_edges(n_edges: int, n_inputs: int = 2) -> List[List[int]]:
  """Each intermediate node's input edges, numbered node by node (``dnas.spaces.cell``)."""
  out, e, i = [], 0, 0
  while e < n_edges:
    out.append(list(range(e, e + n_inputs + i)))
    e += n_inputs + i
    i += 1
  if e != n_edges:
    raise ValueError(f"{n_edges} edges do not make whole nodes of a DARTS cell")
  return out


def select_in_search(c: Any, model: Any, strategy: Strategy, state: Any, op_weights: OpWeights,
                     arch_tx: Any, val_data: Tuple[Any, Any, Any, Any],
                     place: Callable[[Any], Any], tune_batches: Callable[[int], Tuple[Any, Any]],
                     steps_per_epoch: int, key: jax.Array) -> Tuple[OpWeights, Dict[str, Any]]:
  """DARTS-PT as ``dnas search`` runs it after the last epoch (``search.discretizer=
  "perturbation"``): scores on ``val_data`` (``images, labels, mean, std``; each batch put on
  the devices by ``place``), fine-tunes between decisions on ``tune_batches(i) -> (train,
  val)`` (step ``i`` of the fine-tuning), edges in an order drawn from ``key``.

  Deterministic in its arguments, so a run stopped while selecting selects the same again.

  Returns:
    ``(op_weights, report)``: the projected op weights the genotype is derived from, and what
    ``perturbation.json`` holds (the settings and every decision's scores).
  """
  from dnas import data as data_lib  # pylint: disable=g-import-not-at-top
  from dnas import discretize, genotypes, run_config, search  # pylint: disable=g-import-not-at-top
  settings = resolve_settings(c.search.get("perturbation"))
  t = time.time()
  bs, running = settings["batch_size"], settings["bn"] == "running"
  # Padded batches in eval mode; whole batches only where a batch's statistics normalise it.
  images, labels, mean, std = val_data
  batches = [b for b in data_lib.eval_batches(images, labels, bs, mean, std, pad=running)
             if running or b["label"].shape[0] == bs][:settings["eval_batches"] or None]
  if not batches:
    raise ValueError(f"config.search.perturbation.batch_size={bs}: the validation split has "
                     f"no whole batch of it to score with")
  batches = [place(b) for b in batches]
  make = batch_stats_score_fn if settings["bn"] == "batch" else supernet_score_fn
  live = {"params": state.params, "batch_stats": state.batch_stats, "version": 0}
  scorer = {}

  def score_fn(w):  # the supernet as the last fine-tuning left it
    if scorer.get("version") != live["version"]:
      scorer.update(version=live["version"],
                    fn=make(model, live["params"], live["batch_stats"], batches))
    return scorer["fn"](w)

  ops = tuple(model.op_set.ops) if hasattr(model, "op_set") else ()
  is_darts = isinstance(discretize.derive(model, op_weights), genotypes.DartsGenotype)
  node_edges = ({k: darts_node_edges(np.shape(v)[0]) for k, v in op_weights.items()}
                if is_darts else None)
  protected = tuple(i for i, o in enumerate(ops) if o == "none") if is_darts else ()
  finetune, tune_steps = None, settings["tune_epochs"] * steps_per_epoch
  if tune_steps:
    s = c.search
    rate = s.learning_rate * settings["tune_lr_scale"]
    tune_c = c.copy_and_resolve_references()
    tune_c.search.learning_rate = tune_c.search.min_learning_rate = rate
    tune_tx, _ = run_config.search_weight_optimizer(tune_c, 1)
    tuned = projected_strategy(strategy, learns_arch=settings["tune_arch"])
    step_fn = jax.jit(search.make_search_step(
        model, tuned, tune_tx, arch_tx, jit=False,
        update_order=s.get("update_order", "arch_first")))
    current = {"state": state._replace(weight_opt_state=tune_tx.init(state.params)),
               "i": 0}
    derive = jax.jit(tuned.derive_weights)

    def finetune(weights, fixed):
      st = current["state"]
      st = st._replace(strategy_state=ProjectedState(
          st.strategy_state if not isinstance(st.strategy_state, ProjectedState)
          else st.strategy_state.base,
          {k: np.asarray(v) for k, v in fixed.items()},
          {k: np.asarray(v, np.float32) for k, v in weights.items()}))
      for _ in range(tune_steps):
        bt, bv = tune_batches(current["i"])
        st, _ = step_fn(st, bt, bv)
        current["i"] += 1
      current["state"] = st
      live.update(params=st.params, batch_stats=st.batch_stats, version=live["version"] + 1)
      return jax.device_get(derive(st.arch, st.strategy_state))

  order_key = key if settings["edge_order"] == "random" else None
  w, records = perturbation_select(score_fn, op_weights, key=order_key, finetune=finetune,
                                   protected=protected, node_edges=node_edges)
  seconds = round(time.time() - t, 3)
  print(f"DARTS-PT: {len(records)} decisions by perturbation in {seconds:.1f}s", flush=True)
  return w, {"settings": settings, "tune_steps_between": tune_steps, "select_s": seconds,
             "scored_batches": len(batches), "records": records}

