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
import re
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from dnas import io

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*$")
_OPS = {"<=": np.less_equal, ">=": np.greater_equal, "<": np.less, ">": np.greater}


class ExploreError(ValueError):
  """A bad explore argument; the message names it."""


def parse_constraint(text: str, columns: Sequence[str]):
  """``"COLUMN<=VALUE"`` (or ``>=``, ``<``, ``>``) as ``(column, op, value)``.

  Raises:
    ExploreError: naming the text, and the table's columns when the column is unknown.
  """
  m = _CONSTRAINT.match(text or "")
  if not m:
    raise ExploreError(f"--constraint {text!r}: expected COLUMN<=VALUE (or >=, <, >), e.g. "
                       f"'pixel3_ms<=5'")
  column, op, value = m.groups()
  if column not in columns:
    raise ExploreError(f"--constraint {text!r}: the table has no column {column!r}; its "
                       f"columns: {', '.join(columns)}")
  try:
    v = float(value)
  except ValueError:
    raise ExploreError(f"--constraint {text!r}: {value!r} is not a number") from None
  return column, op, v


def feasible_mask(table: Any, constraints: Sequence[str]) -> np.ndarray:
  """``[rows]`` bool: the rows that satisfy every constraint (NaN values never do)."""
  mask = np.ones(len(table), bool)
  for text in constraints:
    column, op, v = parse_constraint(text, table.column_names)
    mask &= _OPS[op](table.column(column), v)
  return mask


def _stats(values: np.ndarray) -> Dict[str, float]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def explore(strategy_name: str, table: Any, *, metric: str, budget: int, runs: int,
            seed: int = 0, options: Optional[Mapping[str, Any]] = None,
            constraints: Sequence[str] = (), workdir: Optional[str] = None) -> Dict[str, Any]:
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
    workdir: where to write ``result.json``, ``anytime.json`` and ``anytime.png`` (optional).

  Returns:
    ``{"strategy", "options", "table", "metric", "budget", "runs": [per run: "arch", "index",
    "found_at", every column], "feasible_runs", "mean": {column: ...}, "std": {...},
    "constraints", "seed", "wall_s"}``.
  """
  from dnas import blackbox  # pylint: disable=g-import-not-at-top
  if metric not in table.column_names:
    raise ExploreError(f"--metric {metric!r}: the table has no such column; its columns: "
                       f"{', '.join(table.column_names)}")
  for name, value in (("budget", budget), ("runs", runs)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ExploreError(f"--{name} must be a positive integer, got {value!r}")
  options = dict(options or {})
  try:
    strategy = blackbox.get(strategy_name, **options)
  except (KeyError, TypeError, ValueError) as e:
    raise ExploreError(f"--strategy {strategy_name!r}: {e}") from None
  feasible = feasible_mask(table, constraints)
  if not feasible.any():
    raise ExploreError(f"no architecture of table {table.name!r} satisfies "
                       f"{' and '.join(constraints)}")
  t0 = time.time()
  space = blackbox.nb201_space(table)
  scores = np.where(feasible, table.column(metric), -np.inf).astype(np.float32)
  keys = jax.random.split(jax.random.key(seed), runs)
  hist = jax.device_get(blackbox.run_on_table(strategy, space, scores, budget, keys))
  best_step = np.argmax(hist.scores, axis=-1)
  picked = hist.codes[np.arange(runs), best_step]
  rows = np.asarray(jax.device_get(space.table_index(picked)))
  ok = np.isfinite(hist.scores[np.arange(runs), best_step])
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
      "budget": budget, "seed": seed, "constraints": list(constraints), "runs": per_run,
      "feasible_runs": int(ok.sum()),
      "mean": {c: _stats(table.column(c)[good])["mean"] for c in columns} if len(good) else {},
      "std": {c: _stats(table.column(c)[good])["std"] for c in columns} if len(good) else {},
      "wall_s": round(wall, 3),
  }
  if workdir:
    _write(workdir, result, np.asarray(hist.best, np.float64), metric)
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
