r"""DARTS on the NAS-Bench-201 space, CIFAR-10 (Dong & Yang, "NAS-Bench-201", ICLR 2020).

Variants:
  first_order (default)  DARTS-V1: 50 epochs, batch 64, C=16, N=5 cells per stage, 3 nodes;
                         the weights step first, then alpha at the new weights.
  second_order           DARTS-V2: alpha first, by the exact hypergradient (DARTS eq. 6 by
                         autodiff) through DARTS' virtual step (plain momentum, unclipped).
  smoke                  C=4, 1 cell per stage, 256 real images, 2 epochs: seconds on a CPU.

Run::

  dnas search --config experiments/nb201_darts_cifar10.py --workdir runs/nb201_darts1 \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_darts_cifar10.py:second_order --workdir runs/nb201_darts2
  dnas search --config experiments/nb201_darts_cifar10.py:smoke --workdir runs/nb201_smoke \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

``genotype.json`` holds the cell as a NAS-Bench-201 arch string (``{"space": "nb201", "arch":
"|skip_connect~0|+|...|"}``), which indexes NAS-Bench-201's table directly; retrain it with
``dnas train --config experiments/train_cifar10.py:nb201 --genotype runs/.../genotype.json``.

Search hyperparameters: NAS-Bench-201's ``configs/nas-benchmark/algos/DARTS.config`` and
``scripts-search/algos/DARTS-V1.sh`` (github.com/D-X-Y/AutoDL-Projects): Nesterov SGD with
momentum 0.9, weight decay 5e-4, lr 0.025 cosine-annealed to 0.001, gradient norm clipped at 5,
batch 64, 50 epochs; alpha by Adam (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3).

NAS-Bench-201's protocol (``exps/algos/DARTS-V1.py`` and ``DARTS-V2.py``), as dnas runs it:
* The split: weights train on one half of CIFAR-10's training set and alpha on the other, by
  NAS-Bench-201's published list (``configs/nas-benchmark/cifar-split.txt``, shipped as
  ``dnas/data/nb201_cifar_split.bin``; ``data.split="nb201"``). Its indices refer to CIFAR-10's
  original order, which TFDS' ``cifar10`` follows; a local copy in another order (the JPEG
  archive, any folder) gets the seeded split instead, and the run prints which it used (also
  ``data_split`` in each ``"split": "val"`` line).
* The order within a step: DARTS-V1's ``search_func`` steps the weights, then alpha on the
  updated weights (``search.update_order="weights_first"``); DARTS-V2's steps alpha first
  (``"arch_first"``, the second_order variant).
* DARTS-V2's virtual step (``backward_step_unrolled``) is ``w - lr * (mu * m + g + wd * w)``:
  no clipping and no Nesterov, although the real weight step has both
  (``search.darts.virtual_step="paper"``; ``"optimizer"`` steps through the real optimizer).
* After every epoch, ``valid_func`` evaluates the whole validation half, unaugmented, with
  ``network.eval()``: the ``"split": "val"`` lines of ``metrics.jsonl`` (``val_acc``).
* The genotype reported is the last epoch's (``genotypes[total_epoch-1]``, the one DARTS-V1.py
  queries the benchmark with; it also keeps the best-validation epoch's, which its published
  table does not use): ``genotype.json`` at the end of the run; every epoch's is in its
  ``"split": "val"`` line.
* The learning rate follows the cosine per step, as its scheduler does
  (``scheduler.update(None, step / len(loader))``).
Where dnas differs: BatchNorm's running statistics follow the weight pass's batches only (in
the reference the alpha pass's forward passes move them as well; they matter only for the
eval-mode validation).

Published result (Dong & Yang 2020, table 5): DARTS-V1 and DARTS-V2 both collapse to the
all-``skip_connect`` cell: 39.77 +- 0.00 % CIFAR-10 validation and 54.30 +- 0.00 % test accuracy
(the best cell of the space reaches 94.37 %). Runtime here: not yet measured on a GPU (see
README's results table); the smoke variant takes well under a minute on a CPU, mostly compiling.
"""

import ml_collections

VARIANTS = ("first_order", "second_order", "smoke")


def get_config(variant: str = "first_order") -> ml_collections.ConfigDict:
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
  # True: faster compile, slower step here: the input edges lose their shared input
  # (benchmarks/RESULTS.md, "Packing the node scans").
  c.model.scan_inputs = False
  c.model.pack = True  # the edges between nodes: 3 iterations of 1 instead of 2 of 2
  # True: the backward pass recomputes each candidate op from its input instead of keeping its
  # insides: same results, less memory (benchmarks/RESULTS.md, "Recomputing the ops").
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "darts"  # dnas.strategies.registry; its options under c.search.darts
  c.search.darts = ml_collections.ConfigDict()
  c.search.darts.order = 1
  c.search.darts.hessian = "exact"  # or "finite_difference" (DARTS eq. 8) for order 2
  # Second order: "paper" (DARTS-V2's step: plain momentum, no clipping, no Nesterov) or
  # "optimizer" (one step of the real weight optimizer: clipped, Nesterov).
  c.search.darts.virtual_step = "paper"
  c.search.update_order = "weights_first"  # DARTS-V1; DARTS-V2 (second_order): "arch_first"
  c.search.epochs = 50
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
  # Matmul/convolution precision: "highest" is full float32 on every device; "high" (TF32 on
  # GPUs, 3 bfloat16 passes on TPUs) and "default" (1 bfloat16 pass on TPUs) are faster.
  c.precision = "highest"
  # XLA CPU preset (fast_compile, default, fast_runtime): XLA's default ran this supernet's step
  # 11.2 s against 12.8 s with fast_compile (compile 26.6 vs 22.3 s; benchmarks/RESULTS.md).
  c.xla_cpu_preset = "default"
  c.xla_cpu_ynn_fusions = False  # XLA CPU YNNPACK fusions: off, its cache loads 3x faster

  if variant == "first_order":
    pass
  elif variant == "second_order":
    c.search.darts.order = 2
    c.search.update_order = "arch_first"
  elif variant == "smoke":
    c.data.batch_size = 16
    c.data.train_size = 256
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 1
    c.search.epochs = 2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  else:
    raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
  return c
