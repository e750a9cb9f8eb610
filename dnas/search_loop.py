"""The search loop: ``run_search(config, workdir)``.

It reads a config (see ``experiments/darts_cifar10.py``; validated and resolved by
``dnas.run_config``), loads the data, builds the supernet, strategy and optimizers, and steps
``make_search_step`` until ``search.epochs`` are done; the run folder's files are handled by
``dnas.run_io``. Retraining is ``dnas.train_loop``. The run folder holds::

    config.json          the resolved config
    metrics.jsonl        one line per log interval, and at every epoch's end one
                         ``"split": "val"`` line: the whole validation split evaluated with
                         BatchNorm in eval mode (``val_acc``, ``val_loss``, ``n``, genotype)
    checkpoints/<step>/  the whole SearchState (orbax; ``dnas.checkpoints``), written every few
                         steps and per epoch, committed atomically; the last few are kept
    alpha_history.json   the strategy's derive weights (softmax(alpha) for DARTS) per epoch
    events.out.tfevents.*  TensorBoard scalars, one write per log interval (tensorboardX)
    genotype.json        the derived genotype, updated every epoch (a one-shot strategy's, as
                         SPOS': at the end, from the paths scored in selection.json)
    plots/               the cells (PNG, PDF, DOT) and the op-weight heatmap

Running it again on the same folder resumes from the checkpoint, under the config (and, for
retraining, the genotype) that wrote it: a value that changes the run is refused before anything
is written (``RESUMABLE_KEYS`` may change: paths, logging, checkpoint interval, compiler
settings). Batches are pure functions of ``(seed, step)``, so a resumed run ends where an
uninterrupted one does, bit for bit, however it was stopped (``tests/test_robustness.py`` kills
it). Every file is written atomically; what a killed run logged after its last checkpoint is
dropped on resume and logged again. SIGTERM or SIGINT stops the loop after the current step,
checkpoints, prints how to resume and returns normally (``dnas search`` and ``dnas train`` exit
with status 0).
"""

from __future__ import annotations

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

from dnas import (aot, checkpoints, compiler, discretize, genotypes, io, parallel, plot, plugins,
                  run_io, search)
from dnas import data as data_lib
from dnas import perturbation, strategies
from dnas.run_config import (make_strategy, resolve_op_set, search_indices,
                             search_weight_optimizer, validate_search_config, build_search_model)


class NonFiniteError(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


@jax.jit
def _streak(streak, worst, skipped):
  streak = jnp.where(skipped > 0, streak + 1, 0)
  return streak, jnp.maximum(worst, streak)


# Metrics of the architecture pass: averaged over the steps that ran it (``arch_steps``).
ARCH_PASS_KEYS = ("val_batch_loss", "val_batch_acc", "arch_grad_norm")


def interval_means(sums: Dict[str, Any], steps: int) -> Dict[str, Any]:
  """A log interval's per-step means from its summed step metrics.

  Where the sums hold ``arch_steps`` (a strategy whose alpha rests in some steps), the
  architecture pass's metrics are averaged over those steps only, and left out when there
  were none; ``arch_steps`` itself is kept as a count.
  """
  sums = dict(sums)
  arch_steps = sums.pop("arch_steps", None)
  out = {}
  for k, v in sums.items():
    if arch_steps is not None and k in ARCH_PASS_KEYS:
      if int(arch_steps):
        out[k] = float(v) / int(arch_steps)
    else:
      out[k] = float(v) / steps
  if arch_steps is not None:
    out["arch_steps"] = int(arch_steps)
  return out


def _write_artifacts(workdir, model, op_weights, history, op_set, writer=True):
  g = discretize.derive(model, op_weights)
  if not writer:
    return g
  genotypes.save(g, os.path.join(workdir, "genotype.json"))
  io.atomic_write_json(os.path.join(workdir, "alpha_history.json"),
                       {"ops": list(op_set.ops),
                        "epochs": {k: np.asarray(v).tolist() for k, v in history.items()}})
  return g


def draw(workdir: str) -> list:
  """Draws a run folder's genotype and alpha history into ``workdir/plots``."""
  g = genotypes.load(os.path.join(workdir, "genotype.json"))
  out = os.path.join(workdir, "plots")
  name = os.path.basename(os.path.normpath(workdir))
  files = plot.draw_genotype(g, out, stem="genotype", name=name)
  hist_path = os.path.join(workdir, "alpha_history.json")
  if os.path.exists(hist_path):
    with open(hist_path) as f:
      h = json.load(f)
    hist = {k: np.asarray(v) for k, v in h["epochs"].items() if len(v)}
    nb201 = isinstance(g, genotypes.NB201Genotype)
    # Edges as "node<-source", numbered as the genotype's nodes (DARTS' inputs are 0 and 1).
    first = 1 if nb201 else 2
    labels = [f"{first + i}<-{src}" for i in range(len(g.nodes) if nb201 else g.nodes)
              for src in range(first + i)]
    if hist:
      if any(v.shape[1] != len(labels) for v in hist.values()):
        labels = None
      for ext in ("png", "pdf"):
        files.append(plot.draw_alpha_history(hist, h["ops"],
                                             os.path.join(out, f"alpha_history.{ext}"),
                                             edge_labels=labels, none_competes=nb201,
                                             name=name))
  return files


def _duration(seconds: float) -> str:
  """``42s``, ``7m05s``, ``3h12m``."""
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def run_search(config: ml_collections.ConfigDict, workdir: str,
               stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """Runs (or resumes) a search; returns the final metrics and genotype.

  Args:
    config: a search config (``experiments/darts_cifar10.py``).
    workdir: the run folder; an existing checkpoint there is resumed.
    stop_after_steps: stop (checkpointing) once the global step reaches this; for tests.

  Returns:
    ``{"genotype": ..., "step": ..., "val_acc": ...}`` (``val_acc``: the last evaluation of the
    whole validation split); a run stopped early (checkpointed), ``{"step": ..., "stopped":
    True, "signal": ...}`` (the signal's number, or None). With ``search.num_seeds`` other than
    1, ``dnas.seeds.run_seeds``'s ``{"seeds": {seed: result}, ...}``.
  """
  if config.search.get("num_seeds", 1) != 1:  # several seeds as one vmapped program
    from dnas import seeds  # pylint: disable=g-import-not-at-top
    return seeds.run_seeds(config, workdir, stop_after_steps)
  plugins.load(config.get("imports", ()))
  validate_search_config(config)
  with compiler.matmul_precision(config.get("precision", "default")):
    return _run_search(config, workdir, stop_after_steps)


def _run_search(config: ml_collections.ConfigDict, workdir: str,
                stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  # XLA's process flags, as `dnas search` sets them: effective only if JAX has not started.
  compiler.low_memory_schedule()
  compiler.no_triton_gemm()
  c = config
  # Every process's devices, each with a copy of the state and a slice of every batch.
  mesh = parallel.make_mesh()
  parallel.check_batch_size(c.data.batch_size, mesh)
  on_mesh = parallel.replicated(mesh)
  # Of several processes, process 0 writes the run folder; all take part in checkpoints.
  writer = parallel.is_writer()
  os.makedirs(workdir, exist_ok=True)
  run_io.check_resume(workdir, c)
  cache_dir = run_io.enable_compilation_cache(c.compilation_cache_dir)
  if writer:
    io.atomic_write_text(os.path.join(workdir, "config.json"), c.to_json_best_effort(indent=2))

  print(f"loading data: {c.data.path or c.data.name} (decoded once, then read from the cache)",
        flush=True)
  ds = data_lib.load(c.data.name, path=c.data.path or None, data_dir=c.data.data_dir or None,
                     cache_dir=c.data.cache_dir or None)
  images, labels = ds.train_images, ds.train_labels
  # A seeded random subset: archives list their images class by class.
  keep = run_io.subset(jax.random.fold_in(jax.random.key(c.seed), 1), len(labels),
                       c.data.train_size)
  if keep is not None:
    images, labels = images[keep], labels[keep]
  tr_idx, va_idx, data_split, split_desc = search_indices(c, len(labels))
  print(f"data split: {split_desc}", flush=True)
  # A copy on every device: each gathers its slice of a batch without communication.
  train = data_lib.to_device(images[tr_idx], labels[tr_idx], on_mesh)
  val = data_lib.to_device(images[va_idx], labels[va_idx], on_mesh)
  bs = c.data.batch_size
  spe = data_lib.steps_per_epoch(min(len(tr_idx), len(va_idx)), bs)
  total = spe * c.search.epochs

  op_set = resolve_op_set(c)
  model = build_search_model(c, ds.num_classes, op_set)
  weight_tx, schedule = search_weight_optimizer(c, total)
  arch_tx = search.darts_arch_optimizer(c.search.arch_learning_rate,
                                        weight_decay=c.search.arch_weight_decay)
  strategy = make_strategy(c, schedule, total, spe)
  key = jax.random.key(c.seed)
  init_key, train_key, val_key = jax.random.split(key, 3)

  t0 = time.time()
  preset = c.xla_cpu_preset
  ynn = c.get("xla_cpu_ynn_fusions", False)
  # Saved traces (dnas.aot) live next to XLA's cache, keyed on the config, the step count and
  # the source of dnas and of every plug-in.
  traces = cache_dir
  trace_key = run_io.trace_key(c, total=total, num_classes=ds.num_classes)
  init = functools.partial(search.init_search_state, model, strategy, weight_tx, arch_tx,
                           sample_images=jnp.zeros((2,) + images.shape[1:]))
  # The state's shapes come from the initialiser's trace (a saved one needs no tracing).
  init_trace = aot.trace(init, (init_key,), cache_dir=traces, key="search_init\n" + trace_key,
                         cpu_preset=preset, ynn_fusions=ynn)
  state_spec = run_io.placed(init_trace.out_specs, on_mesh)
  ckpts = checkpoints.Checkpoints(workdir, keep=c.get("checkpoint_keep", 2))
  ckpt = ckpts.folder
  state, history = None, None
  if ckpts.exists():  # the checkpoint holds every array
    resumed_from = ckpts.latest()
    state, history = ckpts.restore(state_spec, on_mesh)
    print(f"resuming {workdir} from step {int(state.step)} ({resumed_from})", flush=True)
  sharding = parallel.batch_sharding(mesh)
  batch_fn = jax.jit(functools.partial(
      data_lib.get_batch, batch_size=bs, mean=ds.mean, std=ds.std,
      crop_padding=c.data.crop_padding, flip=c.data.flip, sharding=sharding))
  mix = jax.jit(functools.partial(strategies.derive_weights, strategy))
  step_fn = search.make_search_step(model, strategy, weight_tx, arch_tx, jit=False,
                                    update_order=c.search.get("update_order", "arch_first"),
                                    total_steps=total)
  step_fn = parallel.constrain_outputs(step_fn, mesh)
  batch_spec = run_io.placed(jax.eval_shape(batch_fn, train, train_key, 0), sharding)
  examples = (state_spec, batch_spec, batch_spec)
  print("building and compiling the search step (the first run of a config: a minute or more "
        "on a CPU; later runs load it from the cache)", flush=True)
  tc = time.time()
  state, step_fn, traced, init_end = run_io.init_and_compile(
      init_trace, state, total, step_fn, examples, cache_dir=traces,
      key="search_step\n" + trace_key, cpu_preset=preset, ynn_fusions=ynn, donate_argnums=(0,),
      sharding=on_mesh,
      while_loading=lambda: batch_fn(train, train_key, 0))  # compiles the batch function
  if history is None:  # a new run
    history = {k: [] for k in state.arch}
  if writer:
    run_io.start_clean(workdir, int(state.step))
  init_s, compile_s = init_end - t0, None
  if step_fn is not None:
    compile_s = time.time() - tc
    print(f"init {init_s:.1f}s, compile {compile_s:.1f}s (alongside init)"
          f"{'' if traced else ' (saved trace)'}, {total} steps ({spe} per epoch)", flush=True)

  eval_step = search.make_eval_step(model, strategy, cpu_preset=preset)
  val_images, val_labels = images[va_idx], labels[va_idx]
  ebs = c.data.get("eval_batch_size", bs)

  def evaluate(state):
    """The whole validation split, unaugmented, BatchNorm in eval mode."""
    t = time.time()
    tot = None
    for b in data_lib.eval_batches(val_images, val_labels, ebs, ds.mean, ds.std, pad=True):
      m = eval_step(state, parallel.place_batch(b, mesh))
      tot = m if tot is None else jax.tree.map(jnp.add, tot, m)
    tot = jax.device_get(tot)
    n = int(tot["n"])
    return {"val_acc": float(tot["correct"]) / n, "val_loss": float(tot["loss_sum"]) / n, "n": n,
            "eval_s": round(time.time() - t, 3)}

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  progress = run_io.Progress()
  step = int(state.step)
  acc, acc_n = None, 0
  streak = worst = jnp.zeros((), jnp.int32)
  t_log, n_log = time.time(), 0
  t_start, step_start = time.time(), step
  last, last_val = {}, {}
  print(f"searching: steps {step + 1}..{total}", flush=True)
  with run_io.Stopper() as stopper, ckpts, \
      open(metrics_path if writer else os.devnull, "a") as mfile, \
      run_io.summary_writer(workdir, step, enabled=writer) as tb:
    while step < total:
      bt = batch_fn(train, train_key, step)
      bv = batch_fn(val, val_key, step)
      state, m = step_fn(state, bt, bv)
      step += 1
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
      streak, worst = _streak(streak, worst, m["skipped"])
      acc_n += 1
      n_log += 1
      epoch_end = step % spe == 0
      done = step - step_start
      eta_all = (total - step) * (time.time() - t_start) / max(done, 1)
      progress.update((step - 1) // spe, step - ((step - 1) // spe) * spe, spe, last, None,
                      eta_all)
      if step % c.log_every_steps == 0 or epoch_end or step == total:
        host, worst_host = jax.device_get((acc, worst))
        skipped = int(host.pop("skipped"))
        host = interval_means(host, acc_n)
        host["skipped_steps"] = skipped
        if skipped:
          print(f"warning: {skipped} of steps {step - acc_n + 1}..{step} had a non-finite loss "
                f"or gradient and were skipped", file=sys.stderr, flush=True)
        if int(worst_host) >= c.max_bad_steps:
          raise NonFiniteError(
              f"{int(worst_host)} consecutive steps (up to step {step}) had a non-finite loss or "
              f"gradient (config.max_bad_steps={c.max_bad_steps}); stopping. The last good "
              f"checkpoint is {ckpt}; lower the learning rates or check the data, then run the "
              f"same command to resume.")
        worst = jnp.zeros((), jnp.int32)
        dt = time.time() - t_log
        ips = n_log * bs * 2 / max(dt, 1e-9)
        epoch = (step - 1) // spe
        last = dict(step=step, epoch=epoch, **host, learning_rate=float(schedule(step)),
                    images_per_s=ips)
        mfile.write(json.dumps(last) + "\n")
        mfile.flush()
        run_io.add_scalars(tb, "search", last, step)
        eta = (total - step) * dt / max(n_log, 1)
        progress.update(epoch, step - epoch * spe, spe, host, ips, eta)
        acc, acc_n, t_log, n_log = None, 0, time.time(), 0
      if epoch_end:
        g = None
        if strategy.learns_arch:  # a one-shot supernet's genotype comes from `select` at the end
          w = jax.device_get(mix(state.arch, state.strategy_state))
          for k in history:
            history[k].append(np.asarray(w[k]))
          g = _write_artifacts(workdir, model, w, history, op_set, writer)
        # NAS-Bench-201's valid_func (exps/algos/DARTS-V1.py) after every epoch; the line goes
        # before the checkpoint, so a run killed in between logs it again on resume.
        last_val = {"split": "val", "epoch": epoch, "step": step, **evaluate(state),
                    "genotype": g.to_json() if g else None, "data_split": data_split}
        mfile.write(json.dumps(last_val) + "\n")
        mfile.flush()
        run_io.add_scalars(tb, "val", last_val, step)
        if g is not None:  # the genotype as text beside the curves; the file holds it too
          tb.add_text("genotype", json.dumps(g.to_json()), step)
        ckpts.save(step, state, history)
        progress.summary(f"epoch {step // spe}/{c.search.epochs} step {step} "
                         f"train_loss {last['train_loss']:.4f} train_acc {last['train_acc']:.3f} "
                         f"val_loss {last_val['val_loss']:.4f} val_acc {last_val['val_acc']:.4f} "
                         f"ETA {_duration(eta_all)}")
      elif step % c.checkpoint_every_steps == 0:
        ckpts.save(step, state, history)
      if stopper.signal is not None or (stop_after_steps and step >= stop_after_steps):
        ckpts.save(step, state, history)
        if stopper.signal is not None:
          print(f"stopped by signal {stopper.signal} at step {step}; run the same command again "
                f"to resume from {ckpt}", flush=True)
        return {"step": step, "stopped": True, "signal": stopper.signal}

  result = {}
  if strategy.learns_arch:
    w = jax.device_get(mix(state.arch, state.strategy_state))
    if c.search.get("discretizer", "argmax") == "perturbation":  # DARTS-PT: dnas.perturbation
      w, report = perturbation.select_in_search(
          c, model, strategy, state, w, arch_tx, (val_images, val_labels, ds.mean, ds.std),
          lambda b: parallel.place_batch(b, mesh),
          lambda i: (batch_fn(train, jax.random.fold_in(train_key, 3), i),
                     batch_fn(val, jax.random.fold_in(val_key, 3), i)),
          spe, jax.random.fold_in(key, 4))
      if writer:
        io.atomic_write_json(os.path.join(workdir, "perturbation.json"), report)
      result = {"perturbation_s": report["select_s"]}
  else:
    w, result = _select(workdir, model, strategy.select, state, val_images, val_labels, ds,
                        lambda i: batch_fn(train, jax.random.fold_in(train_key, 1), i),
                        jax.random.fold_in(key, 2), mesh)
  g = _write_artifacts(workdir, model, w, history, op_set, writer)
  if writer:
    draw(workdir)
  return {"step": step, "genotype": g.to_json(), "val_acc": last_val.get("val_acc"),
          "compile_s": compile_s, "init_s": init_s,
          "op_weights": {k: np.asarray(v) for k, v in w.items()}, **result}


def _select(workdir, model, settings, state, val_images, val_labels, ds, train_batches, key,
            mesh):
  """A one-shot supernet's genotype: paths scored with the shared weights (``dnas.oneshot``).

  Writes ``selection.json`` (every path scored, best first); deterministic in the seed, so a
  run killed while selecting selects the same again when resumed.
  """
  from dnas import oneshot  # pylint: disable=g-import-not-at-top
  if settings is None:
    raise ValueError("a strategy with learns_arch=False needs `select` settings "
                     "(dnas.oneshot.SelectSettings) to pick its genotype")
  t = time.time()
  val_batches = [parallel.place_batch(b, mesh) for b in data_lib.eval_batches(
      val_images, val_labels, settings.eval_batch_size, ds.mean, ds.std, pad=True)]
  w, records = oneshot.select(model, state.params, state.batch_stats, settings,
                              train_batches=train_batches, val_batches=val_batches, key=key)
  ranked = sorted(({"path": {k: list(map(int, v)) for k, v in p.items()}, "score": float(sc)}
                   for p, sc in records), key=lambda r: -r["score"])
  seconds = round(time.time() - t, 3)
  if parallel.is_writer():
    io.atomic_write_json(os.path.join(workdir, "selection.json"),
                         {"selection": settings.selection, "scored": len(records),
                          "select_s": seconds, "records": ranked})
  print(f"selected the best of {len(records)} paths by {settings.selection} in {seconds:.1f}s: "
        f"score {ranked[0]['score']:.4f}", flush=True)
  return w, {"select_score": ranked[0]["score"], "select_s": seconds}


# --------------------------------------------------------------------------------------------
# Retraining a genotype from scratch.
