r"""RSPS on the NAS-Bench-201 space, CIFAR-10, as NAS-Bench-201 ran it (Dong & Yang, ICLR 2020).

Random search with parameter sharing (Li & Talwalkar, UAI 2019): the supernet is trained on one
uniformly random path per step (``dnas.strategies.spos``), then 100 random paths are scored
with the shared weights and the best is the genotype (``dnas.oneshot.select``).

Variants:
  default  NAS-Bench-201's RSPS: 250 epochs, batch 64, C=16, N=5 cells per stage, 3 nodes;
           100 random paths, each scored on one validation batch, BatchNorm's running statistics.
  smoke    C=4, 1 cell per stage, 256 real images, 2 epochs, 4 candidates: seconds on a CPU,
           mostly compiling.

Run::

  dnas search --config experiments/nb201_spos_cifar10.py --workdir runs/nb201_rsps \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz
  dnas search --config experiments/nb201_spos_cifar10.py:smoke --workdir runs/nb201_rsps_smoke \
      --config.data.path=../shared/data/cifar10-jpeg.tar.gz

SPOS' evolution instead of random selection (``megvii-model/SinglePathOneShot``,
``src/Search/search.py``: BatchNorm recalibrated on 200 training batches, 40 validation batches
of 200 per candidate, population 50 for 20 generations)::

  dnas search --config experiments/nb201_spos_cifar10.py --workdir runs/nb201_spos \
      --config.search.spos.selection=evolution --config.search.spos.calibration_batches=200 \
      --config.search.spos.eval_batches=40 --config.search.spos.eval_batch_size=200

``genotype.json`` holds the selected cell as a NAS-Bench-201 arch string; retrain it with
``dnas train --config experiments/train_cifar10.py:nb201 --genotype runs/.../genotype.json`` or
look it up in NAS-Bench-201's table.

Protocol: D-X-Y/AutoDL-Projects, ``configs/nas-benchmark/algos/RANDOM.config``,
``scripts-search/algos/RANDOM-NAS.sh`` and ``exps/algos/RANDOM-NAS.py``:
* Weights: SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.025 cosine-annealed to 0.001
  over 250 epochs, following the cosine every step (``scheduler.update(None, step / len)``),
  gradient norm clipped at 5 (``search_func``), batch 64.
* The step (``search_func``): ``random_genotype`` draws one op per edge uniformly
  (``lib/models/cell_searchs/search_model_random.py``), then one weight step on the training
  batch through that path alone; the validation half of the batch pair is not used. No alpha.
* The split: NAS-Bench-201's halves of CIFAR-10's training set (``cifar-split.txt``;
  ``data.split="nb201"``).
* BatchNorm: affine-free in the cells, running statistics tracked
  (``--track_running_stats 1`` in ``scripts-search/algos/RANDOM-NAS.sh``).
* Selection (``search_find_best`` with ``--select_num 100``): 100 paths drawn uniformly with
  replacement, each scored by its accuracy on the next batch of the validation loader (64
  images: the config's batch size), ``network.eval()``; the first best is the genotype.
Where dnas differs:
* The per-epoch validation (``"split": "val"`` lines) evaluates the supernet at the expected
  op weights (1/5 on every op); ``valid_func`` draws a new random path per batch. The reference
  also runs ``search_find_best`` after every epoch (its log only); dnas selects once, at the end.
* The validation batches of the selection come in the order the loop gives them; the reference
  samples them at random (``SubsetRandomSampler`` over the validation half).
* NAS-Bench-201's later script (``scripts-search/NAS-Bench-201-algos/RANDOM-NAS.sh``) makes the
  BatchNorm mode an argument; its ``track_running_stats=0`` (batch statistics also at
  evaluation, reported better by its author: AutoDL-Projects issue #70) is not offered here.

Published result (Dong & Yang 2020, table 5, 3 runs): RSPS reaches 87.66 +- 1.69 % CIFAR-10 test
accuracy (84.16 +- 1.69 % validation; the best cell of the space: 94.37 %). Not checked against
a stored copy of the paper here. Runtime here: not yet measured on a GPU.
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
  c.model.scan_inputs = False  # see nb201_darts_cifar10.py
  c.model.pack = True
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "spos"  # dnas.strategies.spos; the selection's settings below
  c.search.spos = ml_collections.ConfigDict({
      "selection": "random",       # RSPS; "evolution": SPOS
      "candidates": 100,           # --select_num 100
      "calibration_batches": 0,    # BatchNorm's running statistics, not recalibrated
      "eval_batches": 1,           # search_find_best: one validation batch per candidate
      "eval_batch_size": 64,       # RANDOM.config's batch_size
      # SPOS' evolution (used with selection="evolution"): src/Search/search.py's defaults.
      "population": 50,
      "parents": 10,
      "mutations": 25,
      "crossovers": 25,
      "mutation_prob": 0.1,
      "generations": 20,
  })
  c.search.update_order = "weights_first"  # no alpha pass: only the weights step
  c.search.epochs = 250
  c.search.learning_rate = 0.025
  c.search.min_learning_rate = 0.001
  c.search.momentum = 0.9
  c.search.nesterov = True
  c.search.weight_decay = 5e-4
  c.search.grad_clip = 5.0
  c.search.arch_learning_rate = 3e-4  # unused: alpha is not learned
  c.search.arch_weight_decay = 1e-3   # unused

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
    c.search.spos.candidates = 4
    c.search.spos.eval_batch_size = 16
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  return c
