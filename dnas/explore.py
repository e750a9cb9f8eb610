"""Discrete search on a benchmark table: many independent runs of an ask/tell strategy.

``explore(...)`` runs ``runs`` searches of ``budget`` table queries each (one compiled program,
``dnas.blackbox.run_on_table``: scanned over the queries, vmapped over the runs), picks in each
run the architecture with the best searched metric, and reports every table column of the picks
with their mean and standard deviation over the runs: NAS-Bench-201's protocol (Dong & Yang,
ICLR 2020, section 5: search on the 12-epoch ``cifar10_valid``, report ``cifar10_test``). It is
the loop of ``dnas explore``; with ``workdir`` it also writes the result, the anytime curve
(best searched metric so far against queries: mean and the band between the 10th and 90th
percentile of the runs) and its plot.

Constraints (``"pixel3_ms<=5"``) remove the architectures that break them: a strategy that
proposes one is told ``-inf``, and a run that finds no feasible architecture reports none.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import jax
import numpy as np

from dnas import io

class ExploreError(ValueError):
  """A bad explore argument; the message names it."""


def feasible_mask(table: Any, constraints: Sequence[str]) -> np.ndarray:
  """``[rows]`` bool: the rows that satisfy every constraint (``dnas.blackbox.multiobjective``;
  NaN values never do); a bad constraint fails naming it as ``--constraint``."""
  from dnas.blackbox import multiobjective  # pylint: disable=g-import-not-at-top
  try:
    return multiobjective.feasible_mask(table, list(constraints))
  except ValueError as e:
    raise ExploreError(f"--{e}") from None


class Objective(NamedTuple):
  """A column to trade off against the metric: ``column``, ``maximize``, a ``label``."""
  column: str
  maximize: bool
  label: str


def parse_objective(text: str, columns: Sequence[str]) -> Objective:
  """``COLUMN``, ``min:COLUMN``, ``max:COLUMN`` or ``LABEL:COLUMN`` (``latency:pixel3_ms``).

  Without ``min``/``max``, a column ending in ``_ms`` (a latency) is minimised and any other
  maximised.
  """
  label, sep, column = text.rpartition(":")
  if not sep:
    label = ""
  if column not in columns:
    raise ExploreError(f"--objective {text!r}: the table has no column {column!r}; its columns: "
                       f"{', '.join(columns)}")
  if label in ("min", "max"):
    return Objective(column, label == "max", column)
  return Objective(column, not column.endswith("_ms"), label or column)


def _stats(values: np.ndarray) -> Dict[str, float]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def explore(strategy_name: str, table: Any, *, metric: str, budget: int, runs: int,
            seed: int = 0, options: Optional[Mapping[str, Any]] = None,
            constraints: Sequence[str] = (), objectives: Sequence[str] = (),
            no_repeat: bool = False, workdir: Optional[str] = None) -> Dict[str, Any]:
  """Runs ``runs`` independent searches on ``table``; returns the JSON-ready result.

  Args:
    strategy_name: a ``dnas.blackbox`` strategy (``dnas.blackbox.names()``).
    table: a NAS-Bench-201 ``dnas.benchmarks.Table``.
    metric: the column searched on (maximised).
    budget: table queries per run.
    runs: independent runs (keys ``split(key(seed), runs)``).
    seed: the runs' seed.
    options: the strategy's options.
    constraints: ``"COLUMN<=VALUE"`` texts every pick must satisfy.
    objectives: columns traded off against ``metric`` (``parse_objective``); with them the
      search is multi-objective (a strategy that takes ``num_objectives``, as ``nsga2``, or
      one that ignores scores, as ``random_search``), each run reports its Pareto front and
      picks the front's point with the best ``metric``.
    no_repeat: wrap the strategy in ``dnas.blackbox.no_repeat``: no cell is queried twice in
      a run (with ``budget`` 15625 every strategy finds the table's argmax).
    workdir: where to write ``result.json``, ``anytime.json`` and ``anytime.png``, and with
      objectives ``pareto.png`` (the first run's evaluated points, front and pick).

  Returns:
    ``{"strategy", "options", "table", "metric", "objectives", "budget", "runs": [per run:
    "arch", "index", "found_at", every column, and with objectives "front" (its archs) and
    "hypervolume" (two objectives)], "feasible_runs", "mean": {column: ...}, "std": {...},
    "constraints", "seed", "wall_s"}``.
  """
  from dnas import blackbox  # pylint: disable=g-import-not-at-top
  from dnas.blackbox import multiobjective  # pylint: disable=g-import-not-at-top
  if metric not in table.column_names:
    raise ExploreError(f"--metric {metric!r}: the table has no such column; its columns: "
                       f"{', '.join(table.column_names)}")
  for name, value in (("budget", budget), ("runs", runs)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ExploreError(f"--{name} must be a positive integer, got {value!r}")
  options = dict(options or {})
  objs = [Objective(metric, True, metric)]
  objs += [parse_objective(o, table.column_names) for o in objectives]
  if len(objs) > 1:
    takes = blackbox.registry.options(strategy_name) if strategy_name in blackbox.names() else {}
    if "num_objectives" in takes:
      options.setdefault("num_objectives", len(objs))
    elif strategy_name not in ("random_search", "exhaustive"):
      raise ExploreError(f"--strategy {strategy_name!r} searches one objective; with "
                         f"--objective use nsga2, random_search or exhaustive")
  try:
    strategy = blackbox.get(strategy_name, **options)
  except (KeyError, TypeError, ValueError) as e:
    raise ExploreError(f"--strategy {strategy_name!r}: {e}") from None
  if no_repeat:
    strategy = blackbox.no_repeat(strategy, score_shape=(len(objs),) if len(objs) > 1 else ())
  feasible = feasible_mask(table, constraints)
  if not feasible.any():
    raise ExploreError(f"no architecture of table {table.name!r} satisfies "
                       f"{' and '.join(constraints)}")
  t0 = time.time()
  space = blackbox.nb201_space(table)
  keys = jax.random.split(jax.random.key(seed), runs)
  searched = np.where(feasible, table.column(metric), -np.inf)
  if len(objs) == 1:
    hist = jax.device_get(blackbox.run_on_table(strategy, space, searched.astype(np.float32),
                                                budget, keys))
    codes, scores = hist.codes, hist.scores
  else:
    signed = np.stack([table.column(o.column) * (1 if o.maximize else -1) for o in objs], -1)
    hist = jax.device_get(multiobjective.run_multi_on_table(strategy, space, signed, budget,
                                                            keys, feasible))
    codes = hist.codes
    scores = np.where(hist.feasible, hist.objectives[..., 0], -np.inf)
  rows_all = np.asarray(jax.device_get(space.table_index(codes)))   # [runs, budget]
  best_step = np.argmax(scores, axis=-1)
  rows = rows_all[np.arange(runs), best_step]
  ok = np.isfinite(scores[np.arange(runs), best_step])
  wall = time.time() - t0

  columns = list(table.column_names)
  per_run: List[Dict[str, Any]] = []
  for r in range(runs):
    if not ok[r]:
      per_run.append({"arch": None, "index": None, "found_at": None})
      continue
    row = int(rows[r])
    per_run.append({"arch": table.archs[row], "index": int(table.index[row]),
                    "found_at": int(best_step[r]) + 1,
                    **{c: float(table.column(c)[row]) for c in columns}})
  good = rows[ok]
  result = {
      "strategy": strategy_name, "options": options, "table": table.name, "metric": metric,
      "objectives": [o._asdict() for o in objs[1:]], "budget": budget, "seed": seed,
      "constraints": list(constraints), "no_repeat": bool(no_repeat), "runs": per_run,
      "feasible_runs": int(ok.sum()),
      "mean": {c: _stats(table.column(c)[good])["mean"] for c in columns} if len(good) else {},
      "std": {c: _stats(table.column(c)[good])["std"] for c in columns} if len(good) else {},
      "wall_s": round(wall, 3),
  }
  fronts = None
  if len(objs) > 1:
    fronts = multiobjective.front_of_history(hist.objectives, hist.feasible)   # signed: max
    ref = signed[feasible].min(axis=0)   # the table's worst feasible value of each objective
    hvs = []
    for r in range(runs):
      on = fronts[r]
      # One entry per distinct cell (a cell asked twice is on the front twice).
      archs = sorted({table.archs[int(x)] for x in rows_all[r][on]})
      per_run[r]["front"] = archs
      if len(objs) == 2:
        pts = hist.objectives[r][on] if on.any() else ref[None]
        hvs.append(float(multiobjective.hypervolume_2d(np.asarray(pts, np.float64), ref)))
        per_run[r]["hypervolume"] = hvs[-1]
    if hvs:
      result["mean"]["hypervolume"] = float(np.mean(hvs))
      result["std"]["hypervolume"] = float(np.std(hvs))
  best = np.maximum.accumulate(np.where(np.isfinite(scores), scores, -np.inf), axis=1)
  if workdir:
    _write(workdir, result, best.astype(np.float64), metric)
    if fronts is not None and len(objs) == 2:
      shown = np.stack([table.column(o.column)[rows_all[0]] for o in objs], -1)
      multiobjective.plot_front(
          shown, fronts[0], os.path.join(workdir, "pareto.png"),
          chosen=int(best_step[0]) if ok[0] else None,
          labels=[o.label if o.label == o.column else f"{o.label} ({o.column})" for o in objs],
          title=f"{strategy_name}, run 0: {budget} queries")
  return result


def anytime(best: np.ndarray) -> Dict[str, List[float]]:
  """The best-so-far curves of ``[runs, budget]``: mean, 10th and 90th percentile per query
  (runs that have found nothing feasible yet, ``-inf``, are left out of each query's figures)."""
  out = {"queries": list(range(1, best.shape[1] + 1)), "mean": [], "p10": [], "p90": []}
  for q in range(best.shape[1]):
    col = best[:, q][np.isfinite(best[:, q])]
    for k, v in (("mean", np.mean(col) if len(col) else np.nan),
                 ("p10", np.percentile(col, 10) if len(col) else np.nan),
                 ("p90", np.percentile(col, 90) if len(col) else np.nan)):
      out[k].append(float(v))
  return out


def _write(workdir: str, result: Dict[str, Any], best: np.ndarray, metric: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  curve = anytime(best)
  io.atomic_write_json(os.path.join(workdir, "result.json"), result)
  io.atomic_write_json(os.path.join(workdir, "anytime.json"), {"metric": metric, **curve})
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  q = np.asarray(curve["queries"])
  ax.plot(q, curve["mean"], label=f"{result['strategy']} (mean of {len(best)} runs)")
  ax.fill_between(q, curve["p10"], curve["p90"], alpha=0.25, label="10th-90th percentile")
  ax.set_xlabel("table queries")
  ax.set_ylabel(f"best {metric} so far")
  ax.legend(loc="lower right")
  fig.tight_layout()
  path = os.path.join(workdir, "anytime.png")
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


def to_json_line(result: Dict[str, Any]) -> str:
  """One JSON line (NaN written as null)."""
  def clean(x):
    if isinstance(x, float) and not np.isfinite(x):
      return None
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
      return [clean(v) for v in x]
    return x
  return json.dumps(clean(result))
