r"""GDAS on the DARTS (NASNet-like) space, CIFAR-10 (Dong & Yang, "Searching for A Robust Neural
Architecture in Four GPU Hours", CVPR 2019).

Variants:
  default  GDAS' search on the DARTS space: 250 epochs, batch 256, one op per edge by
           Gumbel-max (the picked op computed alone), temperature 10 -> 0.1 linearly per epoch;
           the weights first, then alpha (first order, straight-through, validation batch).
  smoke    C=4, 3 cells, 2 nodes, 512 real images, 2 epochs: minutes on a CPU.

Run::

  dnas search --config experiments/gdas_cifar10.py --workdir runs/gdas \
      --config.data.path=/path/to/cifar10-jpeg.tar.gz

Search hyperparameters: github.com/D-X-Y/AutoDL-Projects, ``docs/CVPR-2019-GDAS.md``'s command
``scripts-search/GDAS-search-NASNet-space.sh`` (``--tau_max 10 --tau_min 0.1
--arch_learning_rate 0.0003 --arch_weight_decay 0.001``, ``exps/NAS-Bench-201-algos/GDAS.py``)
with ``configs/search-opts/GDAS-NASNet-CIFAR.config``:
* Weights: Nesterov SGD, momentum 0.9, weight decay 5e-4, lr 0.025 cosine-annealed to 0.001,
  250 epochs, batch 256, gradient norm clipped at 5 (``search_func``).
* Alpha: Adam, lr 3e-4, betas (0.5, 0.999), weight decay 1e-3.
* The step, the temperature schedule, the genotype: as ``nb201_gdas_cifar10.py`` explains.
* The ops: DARTS' 8, ``none`` included.

Where dnas differs, besides what ``nb201_gdas_cifar10.py`` lists:
* The network. The script's model config (``configs/search-archs/GDAS-NASNet-CIFAR.config``)
  could not be read here; dnas searches DARTS' supernet (C=16, 8 cells, 4 nodes). Check its
  size against that file before comparing results.
* The reduction cell is searched like the normal cell; the paper's better result (GDAS with a
  fixed reduction cell, "FRC") uses a hand-designed one, which dnas does not have.
* The split is dnas' seeded half of CIFAR-10's training set.

Published result (Dong & Yang 2019, table 1, as we recall it: not re-checked against the PDF
here): 2.93 % CIFAR-10 test error with 3.4 M parameters after retraining, 0.21 GPU-days of
search (2.82 % with the fixed reduction cell). What this config reaches: not yet measured.
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
  c.data.batch_size = 256
  c.data.train_portion = 0.5
  c.data.train_size = 0     # a seeded random subset of N training images (0: all)
  c.data.split = "seeded"
  c.data.eval_batch_size = 256  # the end-of-epoch validation pass
  c.data.crop_padding = 4
  c.data.flip = True

  c.model = ml_collections.ConfigDict()
  c.model.space = "darts"
  c.model.op_set = "darts"
  c.model.ops = ()  # or the candidate ops by name, in place of op_set
  c.model.channels = 16
  c.model.layers = 8
  c.model.nodes = 4
  c.model.scan_inputs = True
  c.model.pack = True
  c.model.remat = True

  c.search = ml_collections.ConfigDict()
  c.search.strategy = "gdas"
  # The temperature falls linearly from tau_max to tau_min, once per epoch.
  c.search.gdas = ml_collections.ConfigDict({"tau_max": 10.0, "tau_min": 0.1})
  c.search.update_order = "weights_first"  # search_func: the weights, then alpha
  c.search.epochs = 250
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
  c.xla_cpu_preset = "fast_compile"
  c.xla_cpu_ynn_fusions = False

  if variant == "smoke":
    c.data.batch_size = 16
    c.data.train_size = 512
    c.data.eval_batch_size = 64
    c.model.channels = 4
    c.model.layers = 3
    c.model.nodes = 2
    c.search.epochs = 2
    c.log_every_steps = 4
    c.checkpoint_every_steps = 8
  return c
