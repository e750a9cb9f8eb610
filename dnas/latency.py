"""Inference latency of NAS-Bench-201 cells measured by dnas on the local device.

The shared table's latencies (``<device>_ms`` columns of ``load_nb201``) are other people's
devices. ``measure`` times dnas' own NB201 network (``eval_net.NB201Network``, inference mode)
on whatever device JAX runs on here: compiled once, a few warm-up calls, then ``repeats`` timed
calls, each waited for (``block_until_ready``); the figure is the median in milliseconds.

Compiling every one of the 15,625 cells takes hours on a CPU, so the usual route is the
additive latency model of ProxylessNAS and FBNet, fitted to a sample:

1. ``measure_csv(archs, path)`` measures a sample of cells into a CSV (``index,arch,<column>``), one
   atomic rewrite per cell: a killed run keeps what it measured and a rerun measures only the
   rest.
2. ``predict_table(measured, column, archs)`` fits one cost per (edge, op) by least squares
   (``dnas.strategies.cost.fit_op_costs``) and predicts every cell, reporting the fit's R^2.
   The predicted table joins the benchmark's (``dnas.benchmarks.join``) as one more cost
   column for multi-objective search or constraints (``dnas explore --table``), or its per-op
   costs feed a gradient search's cost term.

``benchmarks/local_latency.py`` runs the whole route and reports the held-out error.
Latency depends on the device, the batch size, the dtype and what else the machine is doing:
the CSV's column name says the first two (``local_<platform>_b<batch>_ms``); measure on a quiet
machine.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dnas import eval_net

CHANNELS, CELLS_PER_STAGE, NUM_CLASSES, IMAGE_SHAPE = 16, 5, 10, (32, 32, 3)


def default_column(batch_size: int = 1) -> str:
  """``local_<platform>_b<batch>_ms``, e.g. ``local_cpu_b1_ms``."""
  return f"local_{jax.default_backend()}_b{batch_size}_ms"


def time_fn(fn: Callable[..., Any], *args: Any, repeats: int = 20,
            warmup: int = 3) -> Dict[str, float]:
  """Times ``fn(*args)`` (already compiled or jitted): ``warmup`` calls, then ``repeats`` timed.

  Returns:
    ``{"median_ms", "p10_ms", "p90_ms"}`` over the timed calls, each waited for.
  """
  for name, v in (("repeats", repeats), ("warmup", warmup)):
    if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "repeats" else 0):
      raise ValueError(f"{name} must be a {'positive' if name == 'repeats' else 'non-negative'} "
                       f"int, got {v!r}")
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append((time.perf_counter() - t0) * 1e3)
  p10, med, p90 = np.percentile(times, [10, 50, 90])
  return {"median_ms": float(med), "p10_ms": float(p10), "p90_ms": float(p90)}


def measure(arch: str, batch_size: int = 1, channels: int = CHANNELS,
            cells_per_stage: int = CELLS_PER_STAGE, num_classes: int = NUM_CLASSES,
            repeats: int = 20, warmup: int = 3, seed: int = 0) -> Dict[str, Any]:
  """Inference latency of ``arch``'s NB201 network on the local (default) device.

  Args:
    arch: a NAS-Bench-201 arch string.
    batch_size: images per call (NAS-Bench-201's devices: 1 for phones, 1/32/256 for GPUs).
    channels, cells_per_stage, num_classes: the network (NB201: 16, 5, 10).
    repeats, warmup: timed and untimed calls after compiling.
    seed: the initialisation's seed (the weights' values do not change the time).

  Returns:
    ``{"arch", "median_ms", "p10_ms", "p90_ms", "compile_s", "device", "batch_size"}``.
  """
  model = eval_net.NB201Network(arch, num_classes=num_classes, channels=channels,
                                cells_per_stage=cells_per_stage)
  x = jnp.zeros((batch_size,) + IMAGE_SHAPE, jnp.float32)
  variables = jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(seed), x)
  t0 = time.perf_counter()
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, x).compile()
  compile_s = time.perf_counter() - t0
  out = time_fn(forward, variables, x, repeats=repeats, warmup=warmup)
  return {"arch": arch, **out, "compile_s": compile_s, "device": str(jax.devices()[0]),
          "batch_size": batch_size}


def _read_measured(path: str, column: str) -> Dict[str, float]:
  from dnas import benchmarks  # pylint: disable=g-import-not-at-top
  table = benchmarks.load_csv(path)
  if column not in table.column_names:
    raise benchmarks.TableError(f"{path}: holds columns {list(table.column_names)}, not "
                                f"{column!r}; measure into another file or pass column=")
  return dict(zip(table.archs, table.column(column).tolist()))


def measure_csv(archs: Sequence[str], path: str, column: Optional[str] = None,
                measure_fn: Optional[Callable[[str], float]] = None,
                log: Optional[Callable[[str], None]] = None, **measure_kwargs: Any) -> Any:
  """Measures ``archs`` into the CSV ``path`` (``write_csv``'s form), resuming what it holds.

  After each cell the whole file is rewritten atomically, so a killed run leaves a complete
  CSV of the cells measured so far and a rerun measures only the others.

  Args:
    archs: NAS-Bench-201 arch strings (any edge order; stored in NB201's form).
    path: the CSV; created if missing.
    column: the column's name (default ``default_column(batch_size)``).
    measure_fn: ``arch -> milliseconds`` (default: ``measure(arch, **measure_kwargs)``'s
      median).
    log: called with one line per measured cell.
    **measure_kwargs: ``measure``'s options (``batch_size``, ``repeats``, ...).

  Returns:
    The CSV as a ``dnas.benchmarks.Table``.
  """
  from dnas import benchmarks  # pylint: disable=g-import-not-at-top
  column = column or default_column(measure_kwargs.get("batch_size", 1))
  done = _read_measured(path, column) if os.path.exists(path) else {}
  if measure_fn is None:
    def measure_fn(arch):
      return measure(arch, **measure_kwargs)["median_ms"]
  for arch in archs:
    arch = benchmarks.canonical_nb201(arch)
    if arch in done:
      continue
    ms = float(measure_fn(arch))
    if not np.isfinite(ms) or ms < 0:
      raise ValueError(f"measure_csv: {arch} measured {ms!r} ms")
    done[arch] = ms
    benchmarks.write_csv(benchmarks.Table(path, list(done), range(len(done)),
                                          {column: list(done.values())}), path)
    if log is not None:
      log(f"{len(done)}: {arch} {ms:.3f} ms")
  return benchmarks.load_csv(path)


def predict_table(measured: Any, column: str, archs: Sequence[str], index: Any = None,
                  per_edge: bool = True, name: Optional[str] = None):
  """Every cell of ``archs`` with ``column`` predicted by the additive model fitted to
  ``measured``.

  Args:
    measured: a ``Table`` of measured cells (``measure_csv``'s, or a user's ``load_csv``).
    column: its latency column.
    archs: the cells to predict (``load_nb201().archs``: all 15,625).
    index: their benchmark index (default: their position).
    per_edge: one cost per (edge, op) (30 - 5 + 1 = 26 unknowns: measure at least ~50 cells),
      else one per op.
    name: the returned table's name.

  Returns:
    ``(table, report)``: a ``Table`` of ``archs`` with ``column``, and ``{"r2", "costs",
    "intercept", "cells"}`` of the fit (``r2`` on the measured cells).
  """
  from dnas import benchmarks  # pylint: disable=g-import-not-at-top
  from dnas.strategies import cost as cost_lib  # pylint: disable=g-import-not-at-top
  costs, intercept, r2 = cost_lib.fit_op_costs(measured, column, per_edge=per_edge)
  codes = cost_lib.nb201_codes(archs)
  per = costs[np.arange(codes.shape[1])[None, :], codes] if per_edge else costs[codes]
  pred = intercept + per.sum(axis=1).astype(np.float64)
  table = benchmarks.Table(name or f"{column} (predicted)", archs,
                           index if index is not None else range(len(archs)), {column: pred},
                           benchmarks.canonical_nb201)
  return table, {"r2": r2, "costs": np.asarray(costs).tolist(), "intercept": intercept,
                 "cells": len(measured)}
