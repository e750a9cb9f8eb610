r"""GDAS on the NAS-Bench-201 space, CIFAR-10 (Dong & Yang, CVPR 2019; NAS-Bench-201, ICLR 2020).

Variants:
  default  NAS-Bench-201's GDAS: 240 epochs, batch 64, C=16, N=5 cells per stage, 3 nodes; one
           op per edge by Gumbel-max, temperature 10 -> 0.1 linearly per epoch; the weights
           first, then alpha (first order, straight-through, validation batch).
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU, mostly compiling.

Run::

  dnas search --config experiments/nb201_gdas_cifar10.py --workdir runs/nb201_gdas \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_gdas_cifar10.py:smoke --workdir runs/nb201_gdas_smoke \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string, the argmax of alpha on every
edge (GDAS' ``genotype``); retrain it with ``dnas train --config
experiments/train_cifar10.py:nb201 --genotype runs/.../genotype.json`` or look it up in
NAS-Bench-201's table.

Search hyperparameters: NAS-Bench-201's ``configs/nas-benchmark/algos/GDAS.config`` and
``scripts-search/algos/GDAS.sh`` (github.com/D-X-Y/AutoDL-Projects), run by
``exps/algos/GDAS.py``:
* Weights: Nesterov SGD, momentum 0.9, weight decay 5e-4, lr 0.025 cosine-annealed to 0.001
  per step, gradient norm clipped at 5 (``search_func``), batch 64; ``epochs`` 240 with
  ``warmup`` 0 (the config file's; 240 epochs in all).
* Alpha: Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 (``--arch_learning_rate 0.0003
  --arch_weight_decay 0.001``); initialised ``1e-3 * N(0, 1)``.
* Temperature (``search.gdas``): ``--tau_max 10 --tau_min 0.1``, set before each epoch to
  ``tau_max - (tau_max - tau_min) * epoch / (total_epoch - 1)`` (``dnas.strategies.gdas``).
* The step (``search_func``): the weights on the training batch, then alpha on the validation
  batch at the updated weights (``search.update_order="weights_first"``); each forward pass
  draws its own sample.
* The split: NAS-Bench-201's list (``configs/nas-benchmark/cifar-split.txt``; ``data.split
  "nb201"``, as ``nb201_darts_cifar10.py`` explains), every training batch paired with a
  validation batch.
* The genotype reported is the last epoch's (``genotypes[total_epoch-1]``).
Where dnas differs:
* GDAS has no whole-split evaluation; the "evaluate" accuracy its log shows is its alpha
  pass's, at a Gumbel sample in training mode (here ``val_batch_acc``). dnas' per-epoch
  validation (``"split": "val"`` lines) runs the argmax path in eval mode, with running
  BatchNorm statistics (``dnas.strategies.gdas``, eval weights); it chooses nothing.
* GDAS redraws its Gumbel noise when it holds an inf; JAX's never does (``dnas.strategies.gdas``).
* BatchNorm's running statistics follow the weight pass's batches only, and only the picked
  ops' move (in the reference the alpha pass's forward moves the picked ops' too).

Published result (Dong & Yang 2020, NAS-Bench-201 table 5, CIFAR-10, 3 runs): GDAS finds cells
of 89.89 +- 0.08 % validation and 93.61 +- 0.09 % test accuracy (the best cell of the space:
94.37 %). These figures are quoted from the paper as we recall it; they were not re-checked
against its PDF here. Runtime here: not yet measured on a GPU. On the project's 2-core CPU VM
(2026-11-30) a search step at C=16, N=5, batch 16 takes 0.97 s against DARTS' first order's
2.75 s on the same supernet (``benchmarks/sampled_step.py``).
"""

import ml_collections

VARIANTS = ("default", "smoke")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  c = ml_collections.ConfigDict()
  # Modules or .py files that register the user's ops, op sets, spaces or strategies.
  c.imports = ()
  c.seed = 2

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.path = ""          # a local archive or folder; empty: TFDS
  c.data.data_dir = ""      # TFDS data_dir; empty: TFDS' default
  c.data.cache_dir = ""     # decoded-array cache; empty: $DNAS_CACHE_DIR or ~/.cache/dnas
  c.data.batch_size = 64
  c.data.train_portion = 0.5
  c.data.train_size = 0     # a seeded random subset of N training images (0: all)
  c.data.split = "nb201"    # NAS-Bench-201's list when the data allow it, else seeded
  c.data.eval_batch_size = 256  # the end-of-epoch validation pass
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.space = "nb201"
  c.model.op_set = "nb201"
  c.model.ops = ()  # or the candidate ops by name, in place of op_set
  c.model.channels = 16
  c.model.layers = 5        # cells per stage (N)
  c.model.nodes = 3
  # GDAS runs one op per edge (dnas.spaces.cell's sampled path). Its step measured 0.97 s with
  # the input edges apart (one scan over the 3 input edges, one over the 3 between nodes)
  # against 1.03 s with them in one scan (C=16, N=5, batch 16, 2-core CPU VM; compile 24 vs
  # 22 s; benchmarks/sampled_step.py).
  c.model.scan_inputs = False
  # The sampled path runs one edge per scan iteration (no packing) and always recomputes the
  # picked op in the backward pass, so these two only shape the dense init.
  c.model.pack = True
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "gdas"  # dnas.strategies.registry; its options under c.search.gdas
  # The temperature falls linearly from tau_max to tau_min, once per epoch.
  c.search.gdas = ml_collections.ConfigDict({"tau_max": 10.0, "tau_min": 0.1})
  c.search.update_order = "weights_first"  # search_func: the weights, then alpha
  c.search.epochs = 240
  c.search.num_seeds = 1  # >1: seeds seed.. as one vmapped program, WORKDIR/seed_<s>/ (dnas.seeds)
  c.search.learning_rate = 0.025
  c.search.min_learning_rate = 0.001
  c.search.momentum = 0.9
  c.search.nesterov = True
  c.search.weight_decay = 5e-4
  c.search.grad_clip = 5.0
  c.search.arch_learning_rate = 3e-4
  c.search.arch_weight_decay = 1e-3

  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.checkpoint_keep = 2  # the newest checkpoints kept (WORKDIR/checkpoints/<step>/)
  c.max_bad_steps = 10
  c.compilation_cache_dir = ""  # empty: ~/.cache/dnas/jax; "none": off
  c.precision = "highest"       # full float32 matmuls and convolutions on every device
  # XLA's default and fast_compile ran the GDAS step equally fast (0.97 vs 0.98 s; compile 24
  # vs 21 s; benchmarks/sampled_step.py); the default, as nb201_darts_cifar10.py.
  c.xla_cpu_preset = "default"
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
