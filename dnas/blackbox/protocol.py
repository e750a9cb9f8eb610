"""NAS-Bench-201's protocol for searches on its table, and summaries over runs.

Dong & Yang ("NAS-Bench-201", ICLR 2020, section 5) search on the 12-epoch validation accuracy
of CIFAR-10's valid split (``cifar10_valid``) and report the test accuracy (``cifar10_test``)
of the architecture with the best validation accuracy found, as mean and std over runs.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import jax
import numpy as np

from dnas.blackbox import runner, spaces


class ProtocolResult(NamedTuple):
  """The outcome of ``nb201_protocol`` (arrays over runs).

  Attributes:
    histories: the searches' ``History`` (leading runs axis).
    rows: ``[runs]`` the table row each run picked (its best searched score, first on ties).
    searched: ``[runs]`` the picked rows' search scores.
    reported: ``[runs]`` the picked rows' reported scores.
  """
  histories: runner.History
  rows: np.ndarray
  searched: np.ndarray
  reported: np.ndarray


def nb201_protocol(strategy: Any, table: Any, budget: int, keys: jax.Array,
                   search: str = "cifar10_valid", report: str = "cifar10_test",
                   space: Optional[Any] = None) -> ProtocolResult:
  """Searches on ``table``'s ``search`` column; reports ``report`` of each run's pick.

  Args:
    strategy: an ask/tell ``Strategy``.
    table: a NAS-Bench-201 ``Table`` (``load_nb201()``).
    budget: evaluations per run (table queries).
    keys: ``[runs]`` PRNG keys.
    search: the column searched on.
    report: the column reported.
    space: ``nb201_space(table)`` if already built (binding takes a fraction of a second).

  Returns:
    A ``ProtocolResult``.
  """
  space = space if space is not None else spaces.nb201_space(table)
  searched_col, report_col = table.column(search), table.column(report)
  hist = runner.run_on_table(strategy, space, searched_col, budget, keys)
  hist = runner.History(*(np.asarray(a) for a in hist))
  best_step = np.argmax(hist.scores, axis=-1)
  codes = hist.codes[np.arange(len(best_step)), best_step]
  rows = np.asarray(space.table_index(codes))
  return ProtocolResult(hist, rows, searched_col[rows], report_col[rows])


def summarize(histories: runner.History, reported: Optional[Any] = None) -> Dict[str, Any]:
  """Mean and std over runs (std with ``ddof=0``) of the best score found.

  Args:
    histories: a ``History`` with a leading runs axis.
    reported: optional ``[runs]`` reported values (``ProtocolResult.reported``).

  Returns:
    ``{"runs", "budget", "best_mean", "best_std", "best_curve_mean": [budget] array}``, plus
    ``"reported_mean"`` and ``"reported_std"`` when ``reported`` is given.
  """
  best = np.asarray(histories.best, np.float64)
  if best.ndim != 2:
    raise ValueError(f"summarize: histories.best must be [runs, budget], got shape {best.shape}")
  out = {"runs": best.shape[0], "budget": best.shape[1], "best_mean": float(best[:, -1].mean()),
         "best_std": float(best[:, -1].std()), "best_curve_mean": best.mean(axis=0)}
  if reported is not None:
    r = np.asarray(reported, np.float64)
    if r.shape != (best.shape[0],):
      raise ValueError(f"summarize: reported must be [runs] = [{best.shape[0]}], got {r.shape}")
    out.update(reported_mean=float(r.mean()), reported_std=float(r.std()))
  return out
