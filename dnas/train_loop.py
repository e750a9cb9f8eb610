"""The retraining loop: ``run_train(config, genotype, workdir)`` trains a genotype's network from
scratch (``dnas.eval_net``, stepped by ``dnas.retrain``), on data held on the device or streamed
from disk (``data.streaming``), and evaluates it on the test split.

The run folder, resuming, atomic writes and signals work as for the search
(``dnas.search_loop``; files by ``dnas.run_io``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnas import aot, checkpoints, compiler, genotypes, io, parallel, plugins, run_io
from dnas import data as data_lib
from dnas.run_config import (ConfigError, build_train_model, compute_dtype, train_optimizer,
                             validate_train_config)


class _MemoryFeed:
  """Retraining data held on the device: batches drawn and augmented inside jit."""

  def __init__(self, c, sub_key, data_key, mesh):
    ds = data_lib.load(c.data.name, path=c.data.path or None, data_dir=c.data.data_dir or None,
                       cache_dir=c.data.cache_dir or None)
    images, labels = ds.train_images, ds.train_labels
    keep = run_io.subset(sub_key, len(labels), c.data.train_size)
    if keep is not None:
      images, labels = images[keep], labels[keep]
    holdout = c.data.get("holdout", 0)
    if holdout:
      # A seeded part of the training images stands in for the test set (a search that scores
      # architectures by training them must not look at the test set).
      if holdout >= len(labels):
        raise ConfigError(f"config.data.holdout: {holdout} of {len(labels)} training images "
                          f"leaves none to train on")
      order = np.asarray(jax.random.permutation(jax.random.fold_in(sub_key, 2), len(labels)))
      self.test_images, self.test_labels = images[order[:holdout]], labels[order[:holdout]]
      images, labels = images[order[holdout:]], labels[order[holdout:]]
      self.split = "holdout"
    else:
      self.test_images, self.test_labels = ds.test_images, ds.test_labels
      keep = run_io.subset(jax.random.fold_in(sub_key, 1), len(self.test_labels),
                           c.data.test_size)
      if keep is not None:
        self.test_images, self.test_labels = self.test_images[keep], self.test_labels[keep]
      self.split = "test"
    self.n_train, self.num_classes = len(labels), ds.num_classes
    self.image_shape = tuple(images.shape[1:])
    self.mean, self.std, self.eval_batch_size = ds.mean, ds.std, c.data.eval_batch_size
    # A copy on every device: each gathers its slice of a batch without communication.
    self.train = data_lib.to_device(images, labels, parallel.replicated(mesh))
    self.data_key = data_key
    self.sharding = parallel.batch_sharding(mesh)
    self.batch_fn = jax.jit(functools.partial(
        data_lib.get_batch, batch_size=c.data.batch_size, mean=ds.mean, std=ds.std,
        crop_padding=c.data.crop_padding, flip=c.data.flip, cutout=c.data.cutout,
        sharding=self.sharding))

  def train_batch(self, step: int):
    return self.batch_fn(self.train, self.data_key, step)

  def batch_spec(self):
    """Shapes, dtypes and sharding of ``train_batch``'s batches, computing none."""
    return run_io.placed(jax.eval_shape(self.batch_fn, self.train, self.data_key, 0), self.sharding)

  def test_batches(self):
    return data_lib.eval_batches(self.test_images, self.test_labels, self.eval_batch_size,
                                 self.mean, self.std)


class _StreamFeed:
  """Retraining data read from disk a batch at a time (``data.streaming=True``).

  Host threads decode (and for ``data.image_size`` crop and resize) each batch; a background
  thread copies the next batches to the device; crop-from-padding, flip, normalisation and
  cutout run in jit as in ``_MemoryFeed``. Batch ``s`` depends only on the seed and ``s``, so a
  resumed run reads the batches an uninterrupted one would.
  """

  def __init__(self, c, sub_key, data_key, mesh):
    from dnas.data import stream  # pylint: disable=g-import-not-at-top
    self.stream = stream
    if c.data.path:
      self.train_src, self.test_src = stream.open_local(c.data.path)
    else:
      self.train_src, self.test_src = stream.open_tfds(c.data.name, c.data.data_dir or None)
    self.c = c
    self.num_classes = len(self.train_src.class_names)
    self.train_idx = run_io.subset(sub_key, len(self.train_src), c.data.train_size)
    self.test_idx = run_io.subset(jax.random.fold_in(sub_key, 1), len(self.test_src),
                            c.data.test_size)
    self.n_train = len(self.train_src) if self.train_idx is None else len(self.train_idx)
    size = c.data.image_size
    first = self.train_src.read(0)[0]
    self.image_shape = (size, size, 3) if size else tuple(first.shape)
    if len(c.data.mean):
      self.mean = np.broadcast_to(np.asarray(c.data.mean, np.float32), self.image_shape[-1:])
      self.std = np.broadcast_to(np.asarray(c.data.std, np.float32), self.image_shape[-1:])
    else:
      self.mean, self.std = stream.estimate_stats(self.train_src, image_size=size, seed=c.seed)
    self.data_key = data_key
    self.sharding = parallel.batch_sharding(mesh)
    self.augment = jax.jit(functools.partial(
        data_lib.augment, mean=self.mean, std=self.std, crop_padding=c.data.crop_padding,
        flip=c.data.flip, cutout=c.data.cutout, sharding=self.sharding))
    self.normalize = jax.jit(functools.partial(data_lib.normalize, mean=self.mean,
                                               std=self.std))
    self._it, self._next_step = None, None
    self.total_steps = None  # set by the caller: the stream then ends with the run

  def train_batch(self, step: int):
    if self._it is None or step != self._next_step:
      batches = self.stream.train_batches(
          self.train_src, self.c.data.batch_size, seed=self.c.seed, start_step=step,
          num_steps=(self.total_steps - step) if self.total_steps else None,
          image_size=self.c.data.image_size, workers=self.c.data.workers, indices=self.train_idx)
      self._it = self.stream.prefetch_to_device(batches, 2, self.sharding)
    images, labels = next(self._it)
    self._next_step = step + 1
    return self.augment(images, labels, self.data_key, step)

  def batch_spec(self):
    """Shapes, dtypes and sharding of ``train_batch``'s batches, reading none."""
    bs = self.c.data.batch_size
    host = (jax.ShapeDtypeStruct((bs,) + self.image_shape, jnp.uint8),  # stream.train_batches'
            jax.ShapeDtypeStruct((bs,), jnp.int32))
    return run_io.placed(jax.eval_shape(self.augment, *host, self.data_key, 0), self.sharding)

  def test_batches(self):
    batches = self.stream.test_batches(self.test_src, self.c.data.eval_batch_size,
                                       image_size=self.c.data.image_size,
                                       workers=self.c.data.workers, indices=self.test_idx)
    for images, labels in self.stream.prefetch_to_device(batches, 2):
      yield {"image": self.normalize(images), "label": labels}


def run_train(config: ml_collections.ConfigDict, genotype, workdir: str,
              stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """Trains ``genotype``'s network from scratch (or resumes); returns the final metrics.

  Writes ``config.json``, ``genotype.json``, ``metrics.jsonl`` (training lines and one
  ``"split": "test"`` line per evaluation; ``"split": "holdout"`` and ``holdout_acc`` with
  ``data.holdout``: that many training images held out and evaluated in place of the test set), TensorBoard event files (the same scalars),
  ``checkpoints/`` (``dnas.checkpoints``) and, at the end, ``final_metrics.json`` to ``workdir``. A run stopped
  early (checkpointed) returns ``{"step": ..., "stopped": True, "signal": ...}`` (the signal's
  number, or None). Matmuls and convolutions run at ``config.precision``.
  """
  plugins.load(config.get("imports", ()))
  validate_train_config(config, genotype)
  with compiler.matmul_precision(config.get("precision", "default")):
    return _run_train(config, genotype, workdir, stop_after_steps)


def _run_train(config: ml_collections.ConfigDict, genotype, workdir: str,
               stop_after_steps: Optional[int] = None) -> Dict[str, Any]:
  """``run_train``'s body, at the config's precision."""
  from dnas import retrain  # pylint: disable=g-import-not-at-top
  compiler.no_triton_gemm()  # as `dnas train` sets it: effective only if JAX has not started
  c = config
  # Every process's devices, each with a copy of the state and a slice of every batch.
  mesh = parallel.make_mesh()
  parallel.check_batch_size(c.data.batch_size, mesh)
  on_mesh = parallel.replicated(mesh)
  os.makedirs(workdir, exist_ok=True)
  run_io.check_resume(workdir, c, genotype)
  cache_dir = run_io.enable_compilation_cache(c.compilation_cache_dir)
  writer = parallel.is_writer()  # of several processes, process 0 writes the run folder
  if writer:
    io.atomic_write_text(os.path.join(workdir, "config.json"),
                         c.to_json_best_effort(indent=2))
    genotypes.save(genotype, os.path.join(workdir, "genotype.json"))

  key = jax.random.key(c.seed)
  init_key, data_key, sub_key = jax.random.split(key, 3)
  bs = c.data.batch_size
  if c.data.get("streaming", False):
    feed = _StreamFeed(c, sub_key, data_key, mesh)
  else:
    feed = _MemoryFeed(c, sub_key, data_key, mesh)
  spe = data_lib.steps_per_epoch(feed.n_train, bs)
  total = spe * c.train.epochs
  feed.total_steps = total

  model = build_train_model(c, genotype, feed.num_classes)
  dtype = compute_dtype(c.train.compute_dtype)
  tx, schedule = train_optimizer(c, total, spe)
  t0 = time.time()
  ynn = c.get("xla_cpu_ynn_fusions", True)
  traces = cache_dir
  trace_key = run_io.trace_key(c, total=total, num_classes=feed.num_classes,
                         genotype=genotype.to_json())
  init = functools.partial(retrain.init_train_state, model, tx,
                           sample_images=jnp.zeros((2,) + feed.image_shape), jit=False)
  init_trace = aot.trace(init, (init_key,), cache_dir=traces,
                         key="train_init\n" + trace_key, cpu_preset=c.xla_cpu_preset,
                         ynn_fusions=ynn)
  state_spec = run_io.placed(init_trace.out_specs, on_mesh)
  ckpts = checkpoints.Checkpoints(workdir, keep=c.get("checkpoint_keep", 2))
  ckpt = ckpts.folder
  state = None
  if ckpts.exists():  # shapes only: the checkpoint holds every array
    resumed_from = ckpts.latest()
    state, _ = ckpts.restore(state_spec, on_mesh)
    print(f"resuming {workdir} from step {int(state.step)} ({resumed_from})", flush=True)
  train_step = retrain.make_train_step(model, tx, aux_weight=c.train.aux_weight,
                                       label_smoothing=c.train.label_smoothing,
                                       compute_dtype=dtype, jit=False)
  train_step = parallel.constrain_outputs(train_step, mesh)
  dpp_spec = run_io.placed(jax.ShapeDtypeStruct((), jnp.float32), on_mesh)
  examples = (state_spec, feed.batch_spec(), dpp_spec)
  state, compiled, _, init_end = run_io.init_and_compile(
      init_trace, state, total, train_step, examples, cache_dir=traces,
      key="train_step\n" + trace_key, cpu_preset=c.xla_cpu_preset, ynn_fusions=ynn,
      donate_argnums=(0,), sharding=on_mesh)
  if writer:
    run_io.start_clean(workdir, int(state.step))
  init_s = init_end - t0
  eval_step = retrain.make_eval_step(model, compute_dtype=dtype, cpu_preset=c.xla_cpu_preset)

  split = getattr(feed, "split", "test")  # "holdout": data.holdout training images

  def evaluate():
    tot = None
    for b in feed.test_batches():
      m = eval_step(state, parallel.place_batch(b, mesh))
      tot = m if tot is None else jax.tree.map(jnp.add, tot, m)
    tot = jax.device_get(tot)
    return {f"{split}_loss": float(tot["loss"]) / float(tot["n"]),
            f"{split}_acc": float(tot["correct"]) / float(tot["n"])}

  metrics_path = os.path.join(workdir, "metrics.jsonl")
  progress = run_io.Progress()
  step = int(state.step)
  acc, acc_n, t_log, n_log, last = None, 0, time.time(), 0, {}
  with run_io.Stopper() as stopper, ckpts, \
      open(metrics_path if writer else os.devnull, "a") as mfile, \
      run_io.summary_writer(workdir, step, enabled=writer) as tb:
    while step < total:
      epoch = step // spe
      dpp = c.train.drop_path_prob * epoch / c.train.epochs  # DARTS' linear schedule
      batch, dpp_array = feed.train_batch(step), jax.device_put(np.float32(dpp), on_mesh)
      state, m = compiled(state, batch, dpp_array)
      step += 1
      acc = m if acc is None else jax.tree.map(jnp.add, acc, m)
      acc_n += 1
      n_log += 1
      epoch_end = step % spe == 0
      if step % c.log_every_steps == 0 or epoch_end:
        host = {k: float(v) / acc_n for k, v in jax.device_get(acc).items()}
        dt = time.time() - t_log
        last = dict(step=step, epoch=epoch, **host, drop_path_prob=dpp,
                    learning_rate=float(schedule(step - 1)),  # the interval's last step's
                    images_per_s=n_log * bs / max(dt, 1e-9))
        mfile.write(json.dumps(last) + "\n")
        mfile.flush()
        run_io.add_scalars(tb, "train", last, step)
        progress.update(epoch, step - epoch * spe, spe,
                        {"train_loss": host["loss"], "train_acc": host["accuracy"]},
                        last["images_per_s"], (total - step) * dt / max(n_log, 1))
        acc, acc_n, t_log, n_log = None, 0, time.time(), 0
      if epoch_end:
        line = {"step": step, "epoch": epoch, "split": split}
        if (epoch + 1) % c.eval_every_epochs == 0 or step == total:
          line.update(evaluate())
          mfile.write(json.dumps(line) + "\n")
          mfile.flush()
          run_io.add_scalars(tb, split, line, step)
        ckpts.save(step, state)
        progress.summary(f"epoch {epoch + 1}/{c.train.epochs} step {step} "
                         f"loss {last['loss']:.4f} acc {last['accuracy']:.3f}"
                         + (f" {split}_acc {line[split + '_acc']:.4f}"
                            if f"{split}_acc" in line else ""))
      elif step % c.checkpoint_every_steps == 0:
        ckpts.save(step, state)
      if stopper.signal is not None or (stop_after_steps and step >= stop_after_steps):
        ckpts.save(step, state)
        if stopper.signal is not None:
          print(f"stopped by signal {stopper.signal} at step {step}; run the same command again "
                f"to resume from {ckpt}", flush=True)
        return {"step": step, "stopped": True, "signal": stopper.signal}

  final = {"step": step, "epochs": c.train.epochs, **evaluate(), "init_s": init_s,
           "n_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))}
  if writer:
    io.atomic_write_json(os.path.join(workdir, "final_metrics.json"), final)
  return final
