"""The ``dnas`` command: a thin entry point over ``dnas.train_lib``.

Usage::

  dnas search --config experiments/darts_cifar10.py[:VARIANT] --workdir DIR [--config.KEY=VALUE]
  dnas train  --config experiments/train_cifar10.py[:VARIANT] --genotype FILE_OR_NAME --workdir DIR
  dnas info   --config experiments/darts_cifar10.py[:VARIANT] [--json]
  dnas plot   --workdir DIR | --genotype FILE_OR_NAME [--out DIR]

A user mistake (unknown flag or config key, a bad value, a missing file) prints one ``error:``
line and exits with status 2; no traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from absl import flags
from ml_collections import config_flags

COMMANDS = ("search", "train", "info", "plot")
USAGE = __doc__.split("Usage::")[1].split("A user mistake")[0]


def _define_flags(fv: flags.FlagValues) -> None:
  config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                  flag_values=fv, lock_config=True)
  flags.DEFINE_string("workdir", None, "run folder (created; resumed if it has a checkpoint)",
                      flag_values=fv)
  flags.DEFINE_string("genotype", None, "genotype.json path or a published genotype's name",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "output folder for `plot --genotype`", flag_values=fv)
  flags.DEFINE_bool("json", False, "print JSON", flag_values=fv)


class UsageError(Exception):
  pass


def _load_genotype(spec: str):
  from dnas import genotypes, published  # pylint: disable=g-import-not-at-top
  if os.path.exists(spec) or spec.endswith(".json"):
    return genotypes.load(spec)
  return published.get(spec)


def _info(cfg) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  train_lib.validate_search_config(cfg)
  model = train_lib.build_search_model(cfg, 10 if cfg.data.name == "cifar10" else 100)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3))))
  count = lambda t: int(sum(np.prod(x.shape) for x in jax.tree.leaves(t)))
  return {"space": cfg.model.space, "n_params": count(shapes["params"]),
          "n_arch_params": count(shapes["arch"]),
          "arch_shapes": {k: list(v.shape) for k, v in shapes["arch"].items()}}


def run(argv: List[str]) -> int:
  """Runs one command; returns the exit status."""
  fv = flags.FlagValues()
  _define_flags(fv)
  try:
    rest = fv(argv)
  except flags.Error as e:
    msg = str(e)
    if "Traceback (most recent call last)" in msg:
      # config_flags embeds the config file's traceback; keep its first and last lines.
      lines = [l for l in msg.splitlines() if l.strip()]
      msg = f"{lines[0]} {lines[-1]}"
    raise UsageError(msg) from None
  if len(rest) != 2 or rest[1] not in COMMANDS:
    raise UsageError(f"expected one command out of {list(COMMANDS)}, got {rest[1:]}\n"
                     f"usage:{USAGE}")
  command = rest[1]
  if command == "search":
    if fv.config is None or not fv.workdir:
      raise UsageError("search needs --config and --workdir")
    from dnas import train_lib  # pylint: disable=g-import-not-at-top
    result = train_lib.run_search(fv.config, fv.workdir)
    if "genotype" in result:
      print(f"genotype: {json.dumps(result['genotype'])}")
      print(f"written to {os.path.join(fv.workdir, 'genotype.json')} and "
            f"{os.path.join(fv.workdir, 'plots')}/")
    return 0
  if command == "train":
    if fv.config is None or not fv.workdir or not fv.genotype:
      raise UsageError("train needs --config, --genotype and --workdir")
    from dnas import train_lib  # pylint: disable=g-import-not-at-top
    result = train_lib.run_train(fv.config, _load_genotype(fv.genotype), fv.workdir)
    if "test_acc" in result:
      print(f"test accuracy {result['test_acc']:.4f} after {result['epochs']} epochs; "
            f"{os.path.join(fv.workdir, 'final_metrics.json')}")
    return 0
  if command == "info":
    if fv.config is None:
      raise UsageError("info needs --config")
    info = _info(fv.config)
    print(json.dumps(info) if fv.json else "\n".join(f"{k}: {v}" for k, v in info.items()))
    return 0
  # plot
  from dnas import plot, train_lib  # pylint: disable=g-import-not-at-top
  if fv.workdir:
    files = train_lib.draw(fv.workdir)
  elif fv.genotype:
    files = plot.draw_genotype(_load_genotype(fv.genotype), fv.out or ".", stem="genotype")
  else:
    raise UsageError("plot needs --workdir or --genotype")
  print("\n".join(files))
  return 0


def _user_errors():
  from dnas import data, genotypes, published, train_lib  # pylint: disable=g-import-not-at-top
  return (UsageError, train_lib.ConfigError, data.DataError, genotypes.GenotypeError,
          published.UnknownGenotypeError, FileNotFoundError)


def main(argv: Optional[List[str]] = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  try:
    code = run(argv)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, _user_errors()):
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    raise
  sys.exit(code)


if __name__ == "__main__":
  main()
