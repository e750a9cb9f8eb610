"""Several seeds in one run: ``run_seeds(config, workdir)``, the search vmapped over seeds.

Papers report a search over seeds (DARTS: 4, NAS-Bench-201: 3). With
``config.search.num_seeds=K`` (``run_search`` calls ``run_seeds`` for ``K > 1``) the run steps
K searches, with seeds ``config.seed .. config.seed + K - 1``, as one compiled program: the
single-seed step (``search.make_search_step``) under ``jax.vmap`` over a leading seed axis of
the state and of both batches. Each seed keeps what a run of its own would have: its data
subset and split, its batch keys (so its data order), its initial weights and alpha. The run
folder holds::

    config.json          the resolved config (``search.num_seeds=K``)
    checkpoints/<step>/  the stacked state of all seeds (leading axis K) and their alpha
                         histories (``dnas.checkpoints``); the same command again resumes it
    seed_<s>/            seed s's run folder, as ``run_search`` with ``config.seed=s`` writes it:
                         config.json (that seed), metrics.jsonl, genotype.json,
                         alpha_history.json, TensorBoard events, plots/, and, once the run is
                         finished, that seed's final state in its checkpoints/

Each seed's genotype is the one its own run finds: the vmapped step computes what the K steps
do, up to the order of floating-point sums (``tests/test_seeds.py``). The initial states are
drawn one seed at a time and stacked, as the weights' ``rbg`` generator
(``dnas.rng.fast_init_key``) draws other bits under ``vmap``. The seed axis lives on one
device. A strategy that learns no alpha (``learns_arch=False``: SPOS, whose genotype comes from
a selection after the search) is refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnas import aot, checkpoints, compiler, io, parallel, plugins, run_io, search, strategies
from dnas import data as data_lib
from dnas.run_config import (ConfigError, build_search_model, make_strategy, resolve_op_set,
                             search_indices, search_weight_optimizer, validate_search_config)
from dnas.search_loop import (NonFiniteError, _duration, _streak, _write_artifacts, draw,
                              interval_means)


def num_seeds(c: ml_collections.ConfigDict) -> int:
  """``search.num_seeds`` (1 when the config has none)."""
  return c.search.get("num_seeds", 1)


def seed_config(c: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The config of one seed's own run: ``seed`` set, and one seed."""
  cs = c.copy_and_resolve_references()
  cs.seed = seed
  if "num_seeds" in cs.search:
    cs.search.num_seeds = 1
  return cs


def seed_dir(workdir: str, seed: int) -> str:
  """Seed ``seed``'s run folder inside a K-seed run's ``workdir``."""
  return os.path.join(workdir, f"seed_{seed}")


def stack(trees) -> Any:
  """Pytrees of equal structure stacked on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int) -> Any:
  """Entry ``i`` of a pytree stacked on its leading axis."""
  return jax.tree.map(lambda x: x[i], tree)


class _StackedInit:
  """An initialiser's ``aot.Trace`` run once per key, the states stacked, in the form
  ``run_io.init_and_compile`` runs it (``compile()(*args)``)."""

  def __init__(self, trace: aot.Trace, keys):
    self.trace, self.args = trace, (keys,)

  def compile(self):
    init = self.trace.compile()
    return lambda keys: stack([init(k) for k in keys])


def run_seeds(config: ml_collections.ConfigDict, workdir: str,
              stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """Runs (or resumes) ``search.num_seeds`` searches as one vmapped program.

  Args:
    config: a search config with ``search.num_seeds`` (K); the seeds are ``config.seed`` to
      ``config.seed + K - 1``.
    workdir: the run folder; each seed's run goes to ``workdir/seed_<s>``. A checkpoint there
      is resumed.
    stop_after_steps: stop (checkpointing) once the global step reaches this; for tests.

  Returns:
    ``{"step": ..., "seeds": {s: {"genotype", "val_acc", "op_weights", "step"}}, "compile_s",
    "init_s"}``; a run stopped early (checkpointed), ``{"step": ..., "stopped": True,
    "signal": ...}``.

  Raises:
    ConfigError: naming ``config.search.num_seeds`` for a value that is not an int >= 1, or a
      strategy that learns no alpha.
  """
  plugins.load(config.get("imports", ()))
  validate_search_config(config)
  k = num_seeds(config)
  # One step per epoch stands in for the data, as validate_search_config builds it.
  strategy = make_strategy(config, config.search.learning_rate,
                           total_steps=config.search.epochs, steps_per_epoch=1)
  if not strategy.learns_arch:
    raise ConfigError(
        f"config.search.num_seeds: {k} seeds in one run need a strategy that learns alpha; "
        f"{config.search.get('strategy', 'darts')!r} picks its genotype by a selection after "
        f"the search: run its seeds one by one (config.seed) with config.search.num_seeds=1")
  with compiler.matmul_precision(config.get("precision", "default")):
    return _run_seeds(config, workdir, stop_after_steps)


def _run_seeds(config: ml_collections.ConfigDict, workdir: str,
               stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  compiler.low_memory_schedule()
  compiler.no_triton_gemm()
  c = config
  k = num_seeds(c)
  seeds = [c.seed + i for i in range(k)]
  configs = [seed_config(c, s) for s in seeds]
  dirs = [seed_dir(workdir, s) for s in seeds]
  # The seed axis on one device: every array of the run there.
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  on_mesh = parallel.replicated(mesh)
  os.makedirs(workdir, exist_ok=True)
  run_io.check_resume(workdir, c)
  cache_dir = run_io.enable_compilation_cache(c.compilation_cache_dir)
  io.atomic_write_text(os.path.join(workdir, "config.json"), c.to_json_best_effort(indent=2))
  for d, cs in zip(dirs, configs):
    os.makedirs(d, exist_ok=True)
    io.atomic_write_text(os.path.join(d, "config.json"), cs.to_json_best_effort(indent=2))

  print(f"loading data: {c.data.path or c.data.name} (decoded once, then read from the cache)",
        flush=True)
  ds = data_lib.load(c.data.name, path=c.data.path or None, data_dir=c.data.data_dir or None,
                     cache_dir=c.data.cache_dir or None)
  # Each seed's subset and split, as its own run draws them (run_search).
  trains, vals, split_names = [], [], []
  for s, cs in zip(seeds, configs):
    images, labels = ds.train_images, ds.train_labels
    keep = run_io.subset(jax.random.fold_in(jax.random.key(s), 1), len(labels),
                         c.data.train_size)
    if keep is not None:
      images, labels = images[keep], labels[keep]
    tr_idx, va_idx, data_split, split_desc = search_indices(cs, len(labels))
    print(f"seed {s} data split: {split_desc}", flush=True)
    trains.append((images[tr_idx], labels[tr_idx]))
    vals.append((images[va_idx], labels[va_idx]))
    split_names.append(data_split)
  # The seeds' splits (of equal sizes) stacked: K copies of the data on the device.
  train, val = _stacked_data(trains, on_mesh), _stacked_data(vals, on_mesh)
  bs = c.data.batch_size
  n_train, n_val = len(trains[0][1]), len(vals[0][1])
  spe = data_lib.steps_per_epoch(min(n_train, n_val), bs)
  total = spe * c.search.epochs

  op_set = resolve_op_set(c)
  model = build_search_model(c, ds.num_classes, op_set)
  weight_tx, schedule = search_weight_optimizer(c, total)
  arch_tx = search.darts_arch_optimizer(c.search.arch_learning_rate,
                                        weight_decay=c.search.arch_weight_decay)
  strategy = make_strategy(c, schedule, total, spe)
  keys = [jax.random.split(jax.random.key(s), 3) for s in seeds]
  init_keys = [key[0] for key in keys]
  train_keys = jnp.stack([key[1] for key in keys])
  val_keys = jnp.stack([key[2] for key in keys])

  t0 = time.time()
  preset = c.xla_cpu_preset
  ynn = c.get("xla_cpu_ynn_fusions", False)
  traces = cache_dir
  # The single-seed run's key: a seed's initialiser is the one its own run loads.
  trace_key = run_io.trace_key(seed_config(c, c.seed), total=total,
                               num_classes=ds.num_classes)
  init = functools.partial(search.init_search_state, model, strategy, weight_tx, arch_tx,
                           sample_images=jnp.zeros((2,) + ds.train_images.shape[1:]))
  init_trace = aot.trace(init, (init_keys[0],), cache_dir=traces,
                         key="search_init\n" + trace_key, cpu_preset=preset, ynn_fusions=ynn)
  state_spec = run_io.placed(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct((k,) + x.shape, x.dtype),
                   init_trace.out_specs), on_mesh)
  ckpts = checkpoints.Checkpoints(workdir, keep=c.get("checkpoint_keep", 2))
  ckpt = ckpts.folder
  state, history = None, None
  if ckpts.exists():
    resumed_from = ckpts.latest()
    state, history = ckpts.restore(state_spec, on_mesh)
    print(f"resuming {workdir} from step {int(state.step[0])} ({resumed_from})", flush=True)
  batch_fn = jax.jit(jax.vmap(functools.partial(
      data_lib.get_batch, batch_size=bs, mean=ds.mean, std=ds.std,
      crop_padding=c.data.crop_padding, flip=c.data.flip), in_axes=(0, 0, None)),
      out_shardings=on_mesh)
  mix = jax.jit(jax.vmap(functools.partial(strategies.derive_weights, strategy)))
  step_fn = jax.vmap(search.make_search_step(
      model, strategy, weight_tx, arch_tx, jit=False,
      update_order=c.search.get("update_order", "arch_first"), total_steps=total))
  batch_spec = run_io.placed(jax.eval_shape(batch_fn, train, train_keys, 0), on_mesh)
  examples = (state_spec, batch_spec, batch_spec)
  print(f"building and compiling the search step of {k} seeds (the first run of a config: a "
        f"minute or more on a CPU; later runs load it from the cache)", flush=True)
  tc = time.time()
  compile_kwargs = dict(cache_dir=traces, key=f"search_step_seeds\nnum_seeds={k}\n" + trace_key,
                        cpu_preset=preset, ynn_fusions=ynn, donate_argnums=(0,))
  # The step compiles while the seeds' states initialise (a resumed run has its state).
  state, step_fn, traced, init_end = run_io.init_and_compile(
      _StackedInit(init_trace, init_keys), state, total, step_fn, examples, sharding=on_mesh,
      while_loading=lambda: batch_fn(train, train_keys, 0), **compile_kwargs)
  if history is None:  # a new run: per alpha leaf, one [K, ...] array per epoch
    history = {name: [] for name in state.arch}
  step = int(state.step[0])
  run_io.start_clean(workdir, step)
  for d in dirs:
    run_io.start_clean(d, step)
  init_s, compile_s = init_end - t0, None
  if step_fn is not None:
    compile_s = time.time() - tc
    print(f"init {init_s:.1f}s, compile {compile_s:.1f}s (alongside init)"
          f"{'' if traced else ' (saved trace)'}, {total} steps ({spe} per epoch) for each of "
          f"seeds {seeds[0]}..{seeds[-1]}", flush=True)

  eval_step = search.make_eval_step(model, strategy, cpu_preset=preset)
  ebs = c.data.get("eval_batch_size", bs)

  def evaluate(state, i):
    """Seed ``i``'s whole validation split, unaugmented, BatchNorm in eval mode."""
    t = time.time()
    one = unstack(state, i)
    tot = None
    images, labels = vals[i]
    for b in data_lib.eval_batches(images, labels, ebs, ds.mean, ds.std, pad=True):
      m = eval_step(one, parallel.place_batch(b, mesh))
      tot = m if tot is None else jax.tree.map(jnp.add, tot, m)
    tot = jax.device_get(tot)
    n = int(tot["n"])
    return {"val_acc": float(tot["correct"]) / n, "val_loss": float(tot["loss_sum"]) / n, "n": n,
            "eval_s": round(time.time() - t, 3)}

  def seed_history(i):
    return {name: [h[i] for h in hs] for name, hs in history.items()}

  progress = run_io.Progress()
  acc, acc_n = None, 0
  streak = worst = jnp.zeros((k,), jnp.int32)
  t_log, n_log = time.time(), 0
  t_start, step_start = time.time(), step
  last, last_val = [{} for _ in seeds], [{} for _ in seeds]
  print(f"searching: steps {step + 1}..{total}", flush=True)
  with run_io.Stopper() as stopper, ckpts, contextlib.ExitStack() as files:
    mfiles = [files.enter_context(open(os.path.join(d, "metrics.jsonl"), "a")) for d in dirs]
    tbs = [files.enter_context(run_io.summary_writer(d, step)) for d in dirs]
    while step < total:
      bt = batch_fn(train, train_keys, step)
      bv = batch_fn(val, val_keys, step)
      state, m = step_fn(state, bt, bv)
      step += 1
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
      streak, worst = _streak(streak, worst, m["skipped"])
      acc_n += 1
      n_log += 1
      epoch_end = step % spe == 0
      done = step - step_start
      eta_all = (total - step) * (time.time() - t_start) / max(done, 1)
      progress.update((step - 1) // spe, step - ((step - 1) // spe) * spe, spe, last[0], None,
                      eta_all)
      if step % c.log_every_steps == 0 or epoch_end or step == total:
        host, worst_host = jax.device_get((acc, worst))
        dt = time.time() - t_log
        ips = n_log * bs * 2 / max(dt, 1e-9)  # each seed's images per second
        epoch = (step - 1) // spe
        for i, s in enumerate(seeds):
          one = {name: v[i] for name, v in host.items()}
          skipped = int(one.pop("skipped"))
          one = interval_means(one, acc_n)
          one["skipped_steps"] = skipped
          if skipped:
            print(f"warning: seed {s}: {skipped} of steps {step - acc_n + 1}..{step} had a "
                  f"non-finite loss or gradient and were skipped", file=sys.stderr, flush=True)
          if int(worst_host[i]) >= c.max_bad_steps:
            raise NonFiniteError(
                f"seed {s}: {int(worst_host[i])} consecutive steps (up to step {step}) had a "
                f"non-finite loss or gradient (config.max_bad_steps={c.max_bad_steps}); "
                f"stopping. The last good checkpoint is {ckpt}; lower the learning rates or "
                f"check the data, then run the same command to resume.")
          last[i] = dict(step=step, epoch=epoch, **one, learning_rate=float(schedule(step)),
                         images_per_s=ips)
          mfiles[i].write(json.dumps(last[i]) + "\n")
          mfiles[i].flush()
          run_io.add_scalars(tbs[i], "search", last[i], step)
        worst = jnp.zeros((k,), jnp.int32)
        eta = (total - step) * dt / max(n_log, 1)
        progress.update(epoch, step - epoch * spe, spe, last[0], ips * k, eta)
        acc, acc_n, t_log, n_log = None, 0, time.time(), 0
      if epoch_end:
        w = jax.device_get(mix(state.arch, state.strategy_state))
        for name in history:
          history[name].append(np.asarray(w[name]))
        lines = []
        for i, s in enumerate(seeds):
          g = _write_artifacts(dirs[i], model, unstack(w, i), seed_history(i), op_set)
          last_val[i] = {"split": "val", "epoch": epoch, "step": step, **evaluate(state, i),
                         "genotype": g.to_json(), "data_split": split_names[i]}
          mfiles[i].write(json.dumps(last_val[i]) + "\n")
          mfiles[i].flush()
          run_io.add_scalars(tbs[i], "val", last_val[i], step)
          tbs[i].add_text("genotype", json.dumps(g.to_json()), step)
          lines.append(f"seed {s}: train_loss {last[i]['train_loss']:.4f} train_acc "
                       f"{last[i]['train_acc']:.3f} val_loss {last_val[i]['val_loss']:.4f} "
                       f"val_acc {last_val[i]['val_acc']:.4f}")
        ckpts.save(step, state, history)
        progress.summary(f"epoch {step // spe}/{c.search.epochs} step {step} ETA "
                         f"{_duration(eta_all)}\n  " + "\n  ".join(lines))
      elif step % c.checkpoint_every_steps == 0:
        ckpts.save(step, state, history)
      if stopper.signal is not None or (stop_after_steps and step >= stop_after_steps):
        ckpts.save(step, state, history)
        if stopper.signal is not None:
          print(f"stopped by signal {stopper.signal} at step {step}; run the same command again "
                f"to resume from {ckpt}", flush=True)
        return {"step": step, "stopped": True, "signal": stopper.signal}

  w = jax.device_get(mix(state.arch, state.strategy_state))
  results = {}
  for i, s in enumerate(seeds):
    wi = unstack(w, i)
    g = _write_artifacts(dirs[i], model, wi, seed_history(i), op_set)
    # The seed's folder is a finished run of its own: its config.json and its state.
    with checkpoints.Checkpoints(dirs[i], keep=1) as own:
      own.save(step, unstack(state, i), seed_history(i))
    draw(dirs[i])
    results[s] = {"step": step, "genotype": g.to_json(), "val_acc": last_val[i].get("val_acc"),
                  "op_weights": {name: np.asarray(v) for name, v in wi.items()}}
    print(f"seed {s}: genotype {json.dumps(g.to_json())}\n  written to "
          f"{os.path.join(dirs[i], 'genotype.json')} and {os.path.join(dirs[i], 'plots')}/",
          flush=True)
  return {"step": step, "seeds": results, "compile_s": compile_s, "init_s": init_s}


def _stacked_data(splits, sharding) -> data_lib.DeviceData:
  """Per-seed ``(images, labels)`` of equal sizes as one ``DeviceData`` with a seed axis."""
  images = np.stack([np.asarray(x) for x, _ in splits])
  labels = np.stack([np.asarray(y) for _, y in splits]).astype(np.int32)
  return data_lib.DeviceData(images=jax.device_put(images, sharding),
                             labels=jax.device_put(labels, sharding))
