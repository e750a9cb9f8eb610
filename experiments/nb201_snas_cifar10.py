r"""SNAS on the NAS-Bench-201 space, CIFAR-10 (Xie et al., "SNAS", ICLR 2019).

Variants:
  default  DrNAS' NAS-Bench-201 SNAS baseline: 100 epochs, batch 64, C=16, N=5 cells per stage,
           3 nodes; Gumbel-softmax op weights, temperature 10 -> 1 linearly per epoch; alpha
           first (first order, validation batch), then the weights.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_snas_cifar10.py --workdir runs/nb201_snas \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_snas_cifar10.py:smoke --workdir runs/nb201_snas_smoke \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of ``softmax(alpha)``
on every edge; retrain it with ``dnas train --config experiments/train_cifar10.py:nb201
--genotype runs/.../genotype.json`` or look it up in NAS-Bench-201's table.

Protocol. NAS-Bench-201 itself did not run SNAS (D-X-Y/AutoDL-Projects has no SNAS in
``exps/algos`` or ``configs/nas-benchmark/algos``). The NAS-Bench-201 SNAS figures in use come
from DrNAS' table (below), whose code carries the only public NAS-Bench-201 SNAS protocol we
found, its ``--method snas`` (xiangning-chen/DrNAS, ``201-space/train_search.py``, ``main`` and
``train``; ``201-space/search_model.py``, ``TinyNetwork`` with ``species='gumbel'``;
``utils.py``, ``process_step_vector``: ``F.gumbel_softmax(alpha, tau, hard=False)``). This
config follows it:
* Weights: SGD, momentum 0.9 (no Nesterov), weight decay 3e-4, lr 0.025 cosine-annealed to 0.001
  over the run, gradient norm clipped at 5, batch 64, 100 epochs (its ``--epochs`` default).
* Alpha: Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 (``architect.py``: its
  ``reg_scale``, with the default ``reg_type='l2'``); initialised ``1e-3 * N(0, 1)``.
* Temperature (``search.snas``): ``tau_max=10``, ``tau_min=1``, ``tau_e = 10 - 9 e / 100`` in
  epoch ``e`` (``--tau_max 10 --tau_min 1``, stepped after each epoch).
* The step: ``architect.step`` on a validation batch, first order (no ``--unrolled``), then the
  weights on the training batch (``search.update_order="arch_first"``); each forward pass draws
  its own Gumbel sample, as here.
* The split: its first and second halves of CIFAR-10's training set (``train_portion`` 0.5).
* Partial channels: its ``--k`` defaults to 1 (every channel through the mixed op), as dnas' net.
Where dnas differs (besides ``dnas.strategies.snas``' module docstring: the SNAS authors' own
single-level update, temperature 1 -> 0.03 and resource constraint are not this protocol):
* The split is dnas' seeded half (``data.split="seeded"``), not the reference's first/second
  halves in CIFAR's order; each training batch is paired with a validation batch by dnas' loop,
  where the reference draws a fresh random validation batch every step
  (``next(iter(valid_queue))``).
* The per-epoch validation evaluates the supernet at ``softmax(alpha / tau)`` (the noise-free
  relaxed sample) on unaugmented images, where the reference's ``infer`` evaluates it at a
  random sample, on images augmented as for training (both its queues read ``train_data``).
* The learning rate follows the cosine every step; the reference's ``CosineAnnealingLR`` steps
  once per epoch.
* BatchNorm's running statistics follow the weight pass's batches only (the alpha pass's move
  them too in the reference; they matter only for the eval-mode validation).

Published result (Chen et al., "DrNAS", ICLR 2021, NAS-Bench-201 table; xiangning-chen/DrNAS
``README.MD``): SNAS reaches 92.77 +- 0.83 % CIFAR-10 test accuracy (CIFAR-100 69.34 +- 1.98,
ImageNet16-120 43.16 +- 2.64; the best cell of the space: 94.37 %). Runtime here: not yet
measured on a GPU.
"""

import ml_collections

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  c.seed = 2

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.path = ""          # a local archive or folder; empty: TFDS
  c.data.data_dir = ""      # TFDS data_dir; empty: TFDS' default
  c.data.cache_dir = ""     # decoded-array cache; empty: $DNAS_CACHE_DIR or ~/.cache/dnas
  c.data.batch_size = 64
  c.data.train_portion = 0.5
  c.data.train_size = 0     # a seeded random subset of N training images (0: all)
  c.data.split = "seeded"   # the reference halves the training set, not by NAS-Bench-201's list
  c.data.eval_batch_size = 256  # the end-of-epoch validation pass
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.space = "nb201"
  c.model.op_set = "nb201"
  c.model.channels = 16
  c.model.layers = 5        # cells per stage (N)
  c.model.nodes = 3
  c.model.scan_inputs = False  # see nb201_darts_cifar10.py
  c.model.pack = True
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "snas"
  # The temperature falls linearly from tau_max to tau_min, once per epoch.
  c.search.snas = ml_collections.ConfigDict({"tau_max": 10.0, "tau_min": 1.0})
  c.search.update_order = "arch_first"  # architect.step, then the weights
  c.search.epochs = 100
  c.search.num_seeds = 1  # >1: seeds seed.. as one vmapped program, WORKDIR/seed_<s>/ (dnas.seeds)
  c.search.learning_rate = 0.025
  c.search.min_learning_rate = 0.001
  c.search.momentum = 0.9
  c.search.nesterov = False
  c.search.weight_decay = 3e-4
  c.search.grad_clip = 5.0
  c.search.arch_learning_rate = 3e-4
  c.search.arch_weight_decay = 1e-3

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.checkpoint_keep = 2  # the newest checkpoints kept (WORKDIR/checkpoints/<step>/)
  c.max_bad_steps = 10
  c.compilation_cache_dir = ""  # empty: ~/.cache/dnas/jax; "none": off
  c.precision = "highest"       # full float32 matmuls and convolutions on every device
  c.xla_cpu_preset = "default"  # see nb201_darts_cifar10.py
  c.xla_cpu_ynn_fusions = False

  if variant == "smoke":
    c.data.batch_size = 16
    c.data.train_size = 256
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 1
    c.search.epochs = 2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  return c
