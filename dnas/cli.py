"""The ``dnas`` command: a thin entry point over ``dnas.train_lib`` (the loops).

Usage::

  dnas search --config experiments/darts_cifar10.py[:VARIANT] --workdir DIR [--config.KEY=VALUE]
              [--coordinator_address HOST:PORT --num_processes N --process_id I | --distributed]
  dnas train  --config experiments/train_cifar10.py[:VARIANT] --genotype FILE_OR_NAME --workdir DIR
  dnas info   --config experiments/darts_cifar10.py[:VARIANT] [--json]
  dnas info   --config experiments/train_cifar10.py[:VARIANT] --genotype FILE_OR_NAME [--json]
  dnas plot   --workdir DIR | --genotype FILE_OR_NAME [--out DIR]
  dnas bench  search --config experiments/darts_cifar10.py[:VARIANT] [--steps N] [--json]
  dnas bench  train  --config experiments/train_cifar10.py[:VARIANT] --genotype NAME [--dtypes float32,bfloat16]
  dnas explore [--config experiments/explore_nb201.py[:VARIANT]] --strategy NAME --benchmark DIR
               [--metric cifar10_valid] [--budget N] [--runs N] [--seed S] [--option KEY=VALUE]
               [--constraint "pixel3_ms<=5"] [--objective latency:pixel3_ms] [--table CSV]
               [--no_repeat] [--workdir DIR] [--json]

A user mistake (unknown flag or config key, a bad value, a missing file) prints one ``error:``
line and exits with status 2; no traceback. A search or training stopped by SIGTERM or SIGINT
checkpoints and exits with status 128 + the signal's number (143, 130), as a shell reports a
process the signal killed, so a job scheduler sees a run that has not finished.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from absl import flags
from ml_collections import config_flags

COMMANDS = ("search", "train", "info", "plot", "bench", "explore")
USAGE = __doc__.split("Usage::")[1].split("A user mistake")[0]


def _define_flags(fv: flags.FlagValues, argv: List[str]) -> None:
  # sys_argv: the config flag reads its --config.KEY overrides from the argv being parsed
  # (not from sys.argv), so `main(argv)` called in-process honours them.
  config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                  flag_values=fv, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "run folder (created; resumed if it has a checkpoint)",
                      flag_values=fv)
  flags.DEFINE_string("genotype", None, "genotype.json path, a published genotype's name or an "
                      "NB201 arch string",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "`plot`: the output folder of `plot --genotype`", flag_values=fv)
  flags.DEFINE_bool("json", False, "print JSON", flag_values=fv)
  flags.DEFINE_bool("show_config", False, "`info`: print every config key, its value and "
                    "what it means (the config file's comment)", flag_values=fv)
  flags.DEFINE_integer("steps", 10, "`bench`: steps timed after compiling (0: compile only)", flag_values=fv)
  flags.DEFINE_string("dtypes", None, "`bench train`: comma-separated compute dtypes "
                      "(default: the config's train.compute_dtype)", flag_values=fv)
  # `explore`: discrete search on a benchmark table (dnas.explore).
  flags.DEFINE_string("space", "nb201", "`explore`: the search space (nb201)", flag_values=fv)
  flags.DEFINE_string("strategy", None, "`explore`: a dnas.blackbox strategy", flag_values=fv)
  flags.DEFINE_string("benchmark", None, "`explore`: the NAS-Bench-201 tables' folder or a "
                      "registered table's name (default: $DNAS_NB201_DIR)", flag_values=fv)
  flags.DEFINE_string("metric", "cifar10_valid", "`explore`: the column searched on",
                      flag_values=fv)
  flags.DEFINE_integer("budget", 100, "`explore`: table queries per run", flag_values=fv)
  flags.DEFINE_integer("runs", 100, "`explore`: independent runs", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "`explore`: the runs' seed", flag_values=fv)
  flags.DEFINE_multi_string("option", [], "`explore`: a strategy option KEY=VALUE (repeatable)",
                            flag_values=fv)
  flags.DEFINE_multi_string("constraint", [], "`explore`: COLUMN<=VALUE every pick satisfies "
                            "(repeatable)", flag_values=fv)
  flags.DEFINE_multi_string("objective", [], "`explore`: a column traded off against the "
                            "metric, [min:|max:|LABEL:]COLUMN (repeatable)", flag_values=fv)
  flags.DEFINE_multi_string("table", [], "`explore`: a CSV (arch + metric columns, every cell "
                            "listed) whose columns join the benchmark's, e.g. latency measured "
                            "here by benchmarks/local_latency.py (repeatable)", flag_values=fv)
  # `search`, `train` on several processes (hosts): jax.distributed (dnas.parallel.initialize).
  flags.DEFINE_string("coordinator_address", None, "`search`, `train` on several processes: "
                      "HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS, or found by "
                      "JAX under SLURM, Open MPI, on a TPU pod or Kubernetes)", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "`search`, `train` on several processes: how "
                       "many", flag_values=fv)
  flags.DEFINE_integer("process_id", None, "`search`, `train` on several processes: this "
                       "one's index, 0..num_processes-1 (process 0 writes the run folder)",
                       flag_values=fv)
  flags.DEFINE_boolean("distributed", False, "`search`, `train`: join a multi-process run whose "
                       "coordinator, size and index JAX finds itself (TPU pod slice, SLURM, "
                       "Open MPI, Kubernetes)", flag_values=fv)
  flags.DEFINE_boolean("no_repeat", False, "`explore`: never query a cell twice (a repeat is "
                       "answered from memory, then replaced by an unqueried cell)",
                       flag_values=fv)


class UsageError(Exception):
  pass


def _load_genotype(spec: str):
  from dnas import genotypes, plugins, published  # pylint: disable=g-import-not-at-top
  if os.path.isdir(spec):  # a run folder: its genotype.json
    inner = os.path.join(spec, "genotype.json")
    if not os.path.isfile(inner):
      raise UsageError(f"--genotype {spec}: a folder without genotype.json (a search writes it "
                       f"when it finishes); give a genotype.json, a published name or an NB201 "
                       f"arch string")
    spec = inner
  if os.path.exists(spec) or spec.endswith(".json"):
    # A run folder's genotype: first the modules that run imported (its ops may be the user's).
    folder = os.path.dirname(os.path.abspath(spec))
    imported = plugins.from_run_folder(folder)
    try:
      return genotypes.load(spec)
    except genotypes.GenotypeError as e:
      if "unknown op" not in str(e):
        raise
      where = os.path.join(folder, "config.json")
      said = (f"the run that wrote it imported {imported} ({where})" if imported else
              f"{where} records no imports" if os.path.exists(where) else
              f"no {where} says which modules registered its ops")
      raise genotypes.GenotypeError(f"{e}; {said}: list the module that registers the op in "
                                    f"the config's imports") from None
  if spec.startswith("|"):  # a NAS-Bench-201 arch string
    return genotypes.NB201Genotype.from_arch(spec, where="--genotype")
  return published.get(spec)


# data.name -> (classes, [H, W, C]) of the known sources, so that `info` needs no data.
_DATA_SHAPES = {
    "cifar10": (10, (32, 32, 3)), "cifar100": (100, (32, 32, 3)),
    "svhn_cropped": (10, (32, 32, 3)), "mnist": (10, (28, 28, 1)),
    "fashion_mnist": (10, (28, 28, 1)), "imagenet_resized/16x16": (1000, (16, 16, 3)),
    "imagenet_resized/32x32": (1000, (32, 32, 3)), "imagenet16-120": (120, (16, 16, 3)),
    "imagenet2012": (1000, (224, 224, 3)),
}


def _info(cfg, genotype_spec: Optional[str] = None) -> dict:
  """What a config builds: weight and alpha counts and the FLOPs of one forward pass.

  ``flops`` is XLA's cost analysis of the compiled inference forward pass on one image. XLA
  counts a multiply-add as two flops and leaves out the kernel taps that fall on zero padding,
  so ``flops / 2`` is somewhat below papers' "mult-adds" (DARTS_V2 in the ImageNet mobile
  setting: 537M against the published 574M, at the published 4.7M weights). For a search
  config it is the supernet with every op active; for a train config, the network of
  ``genotype_spec``. ``n_params`` leaves out the auxiliary head (DARTS' convention);
  ``n_params_aux`` counts it.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dnas import train_lib  # pylint: disable=g-import-not-at-top
  name = cfg.data.name
  if name not in _DATA_SHAPES:
    raise UsageError(f"info: unknown input shape for data.name={name!r}; known: "
                     f"{sorted(_DATA_SHAPES)}")
  num_classes, shape = _DATA_SHAPES[name]
  x = jax.ShapeDtypeStruct((1,) + shape, np.float32)
  count = lambda t: int(sum(np.prod(v.shape) for v in jax.tree.leaves(t)))
  if "search" in cfg:
    if genotype_spec:
      raise UsageError("info: --genotype goes with a train config, not a search config")
    train_lib.validate_search_config(cfg)
    model = train_lib.build_search_model(cfg, num_classes)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    forward = lambda v, images: model.apply(v, images, None, train=False)
    info = {"kind": "search", "space": cfg.model.space, "n_params": count(shapes["params"]),
            "n_params_aux": count(shapes["params"]), "n_arch_params": count(shapes["arch"]),
            "arch_shapes": _leaf_shapes(shapes["arch"])}
  else:
    if not genotype_spec:
      raise UsageError("info with a train config needs --genotype")
    genotype = _load_genotype(genotype_spec)
    train_lib.validate_train_config(cfg, genotype)
    model = train_lib.build_train_model(cfg, genotype, num_classes)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=True), x)
    params = shapes["params"]
    forward = lambda v, images: model.apply(v, images, train=False)[0]
    info = {"kind": "train", "space": cfg.model.space,
            "n_params": count({k: v for k, v in params.items() if k != "auxiliary_head"}),
            "n_params_aux": count(params), "n_arch_params": 0,
            "genotype": genotype.to_json()}
  from dnas import bench  # pylint: disable=g-import-not-at-top
  cost = bench.xla_cost(jax.jit(forward).lower(shapes, x).compile())
  info["flops"] = int(cost["flops"])
  info["input_shape"] = list(x.shape)
  return info


def _leaf_shapes(tree) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  """``{"normal": [14, 8], ...}``; nested groups (PC-DARTS' edge betas) as ``cell.beta.0``."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    out[name] = list(leaf.shape)
  return out


def next_command(genotype_json: dict, workdir: str) -> str:
  """The line a finished search ends with: how to retrain what it found."""
  variant = ":nb201" if genotype_json.get("space") == "nb201" else ""
  run = os.path.normpath(workdir)
  return (f"next, retrain it: dnas train --config experiments/train_cifar10.py{variant} "
          f"--genotype {run} --workdir {run}_train")


def _si(n: float, unit: str) -> str:
  """``1.93 M params``, ``0.22 GFLOPs``."""
  sep = "" if unit == "FLOPs" else " "
  for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {prefix}{sep}{unit}"
  return f"{n:g} {unit}"


def readable_info(info: dict) -> str:
  """``dnas info``'s figures for people (``--json`` keeps the raw ones)."""
  lines = [f"{info['kind']} network, space {info['space']}, input {info['input_shape']}"]
  lines.append(f"weights: {_si(info['n_params'], 'params')}"
               + (f" ({_si(info['n_params_aux'], 'params')} with the auxiliary head)"
                  if info["n_params_aux"] != info["n_params"] else ""))
  if info.get("n_arch_params"):
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in info["arch_shapes"].items())
    lines.append(f"architecture parameters: {info['n_arch_params']} ({shapes})")
  lines.append(f"inference: {_si(info['flops'], 'FLOPs')} per image (XLA's count, 2 per "
               f"multiply-add)")
  if "genotype" in info:
    lines.append(f"genotype: {json.dumps(info['genotype'])}")
  return "\n".join(lines)


def _unknown_override(fv, argv, err) -> str:
  """Names the first --config.KEY override whose KEY the config lacks."""
  del fv
  base = [a for a in argv if not a.startswith("--config.")]
  try:  # the config as the file gives it, to list the keys it does have
    fv_base = flags.FlagValues()
    _define_flags(fv_base, base)
    fv_base(base)
    cfg = fv_base.config
  except Exception:  # pylint: disable=broad-except
    cfg = None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0].split(".")
    node = cfg
    for i, part in enumerate(path):
      if node is None or not hasattr(node, "keys"):
        break
      if part not in node:
        where = ".".join(path[:i]) or "the config"
        return (f"unknown config key {'.'.join(path)!r}: {where} has "
                f"{sorted(node.keys())}")
      node = node[part]
  return f"unknown config key in the overrides: {err}"


def _bench(fv: flags.FlagValues, what: str) -> int:
  if what not in ("search", "train"):
    raise UsageError(f"bench takes `search` or `train`, got {what!r}")
  if fv.config is None:
    raise UsageError(f"bench {what} needs --config")
  if fv.steps < 0:
    raise UsageError(f"--steps must be >= 0 (0: compile only), got {fv.steps}")
  from dnas import bench  # pylint: disable=g-import-not-at-top
  cfg = fv.config
  if cfg.data.name not in _DATA_SHAPES:
    raise UsageError(f"bench: data.name {cfg.data.name!r} is not one of {list(_DATA_SHAPES)}")
  num_classes, shape = _DATA_SHAPES[cfg.data.name]
  if what == "search":
    rows = [bench.bench_search(cfg, fv.steps, num_classes, shape)]
  else:
    if not fv.genotype:
      raise UsageError("bench train needs --genotype")
    dtypes = fv.dtypes.split(",") if fv.dtypes else None
    for d in dtypes or []:
      if d not in ("float32", "bfloat16", "auto"):
        raise UsageError(f"--dtypes: {d!r} is not one of ['float32', 'bfloat16', 'auto']")
    rows = bench.bench_train(cfg, _load_genotype(fv.genotype), fv.steps, num_classes, shape,
                             dtypes)
  for r in rows:
    print(json.dumps(r) if fv.json else
          f"{r['benchmark']} {r.get('dtype', '')} on {r['device']}: compile {r['compile_s']} s, "
          f"{r['step_ms_median']} ms/step (median of {r['steps']}), "
          f"{r['images_per_s']} images/s")
  return 0


HELP_FLAGS = ("--help", "-h", "-help", "--helpfull", "-?")


def _experiments_dir() -> Optional[str]:
  """The repository's experiments/ folder (beside the package), if there is one."""
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
  return here if os.path.isdir(here) else None


def _experiment_variants() -> List[str]:
  """``experiments/NAME.py: VARIANT, ...`` lines, read from each file's VARIANTS tuple."""
  import ast  # pylint: disable=g-import-not-at-top
  folder = _experiments_dir()
  if folder is None:
    return []
  lines = []
  for name in sorted(os.listdir(folder)):
    if not name.endswith(".py") or name.startswith("_"):
      continue
    variants = []
    try:
      with open(os.path.join(folder, name), encoding="utf-8") as f:
        tree = ast.parse(f.read())
      for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
            and getattr(node.targets[0], "id", None) == "VARIANTS"):
          variants = list(ast.literal_eval(node.value))
    except (OSError, SyntaxError, ValueError):
      pass
    lines.append(f"  experiments/{name}" + (f": {', '.join(variants)}" if variants else ""))
  return lines


# The untagged flags each command reads (tagged flags' help starts with `command`).
_COMMAND_FLAGS = {
    "search": ("config", "workdir"), "train": ("config", "workdir", "genotype"),
    "info": ("config", "genotype", "json"), "plot": ("workdir", "genotype"),
    "bench": ("config", "genotype", "json"), "explore": ("config", "workdir", "json"),
}


def help_text(command: Optional[str], fv: flags.FlagValues) -> str:
  """``dnas [COMMAND] --help``: usage, the command's flags, the experiments, the genotypes."""
  from dnas import published  # pylint: disable=g-import-not-at-top
  entries: List[List[str]] = []
  for line in USAGE.strip("\n").splitlines():
    if line.lstrip().startswith("dnas "):
      entries.append([line])
    elif entries:
      entries[-1].append(line)
  shown = [e for e in entries if command is None or e[0].split()[1] == command]
  out = ["dnas: differentiable and discrete neural architecture search in JAX.", "", "usage:"]
  out += [line for e in shown for line in e] + [""]
  if command is None:
    out += [f"commands: {', '.join(COMMANDS)}; `dnas COMMAND --help` lists its flags.",
            "Every config key can be overridden: --config.KEY=VALUE (e.g. "
            "--config.search.epochs=5); `dnas info --config FILE --show_config` lists them.", ""]
  else:
    tag = f"`{command}"
    out.append(f"flags of `{command}`:")
    for name in sorted(fv):
      flag = fv[name]
      text = flag.help or ""
      if name in _COMMAND_FLAGS.get(command, ()) or text.startswith(tag):
        default = "" if flag.default in (None, [], False) else f" (default {flag.default!r})"
        out.append(f"  --{name}: {text}{default}")
    out.append("")
  exps = _experiment_variants()
  if exps:
    out += ["experiments (--config FILE[:VARIANT]):"] + exps + [""]
  out += ["published genotypes (--genotype NAME): " + ", ".join(published.names())]
  return "\n".join(out)


def show_config(cfg, path: str) -> str:
  """Every key of ``cfg`` with its value and the comment the config file gives it."""
  import re  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  comments = {}
  try:
    with open(path, encoding="utf-8") as f:
      for line in f:
        m = re.match(r"\s*c\.([\w.]+)\s*=.*?#\s*(.+)$", line)
        if m:
          comments[m.group(1)] = m.group(2).strip()
  except OSError:
    pass
  flat = traverse_util.flatten_dict(json.loads(cfg.to_json_best_effort()), sep=".")
  width = max(len(k) for k in flat)
  lines = []
  for key in sorted(flat):
    note = comments.get(key, "")
    lines.append(f"{key:<{width}}  {json.dumps(flat[key])}" + (f"  # {note}" if note else ""))
  return "\n".join(lines)


def _flag_args(argv: List[str], names) -> dict:
  """The values ``argv`` gives the flags ``names`` (``--name VALUE`` or ``--name=VALUE``),
  read before the flags are parsed."""
  values = {}
  for i, a in enumerate(argv):
    for name in names:
      if a == f"--{name}" and i + 1 < len(argv):
        values[name] = argv[i + 1]
      elif a.startswith(f"--{name}="):
        values[name] = a.split("=", 1)[1]
  return values


def _check_paths(argv: List[str]) -> None:
  """One-line errors for the paths a command is given, before anything starts."""
  values = _flag_args(argv, ("config", "workdir", "out"))
  if "config" in values:
    path = values["config"]
    if not os.path.isfile(path) and ":" in path:
      path = path.rsplit(":", 1)[0]
    if not os.path.exists(path):
      raise UsageError(f"--config {values['config']}: no such file ({path})")
    if os.path.isdir(path):
      raise UsageError(f"--config {values['config']}: a folder; give a config file such as "
                       f"experiments/nb201_darts_cifar10.py[:VARIANT]")
  for name in ("workdir", "out"):
    if name in values and os.path.exists(values[name]) and not os.path.isdir(values[name]):
      raise UsageError(f"--{name} {values[name]}: a file, not a folder; give a folder (it is "
                       f"created if missing)")


def _check_run_kind(command: str, workdir: str) -> None:
  """A search run folder given to `train`, or a training one to `search`: say so."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return  # the resume check reports an unreadable config.json
  kind = "search" if "search" in saved else "train"
  if kind != command:
    raise UsageError(f"--workdir {workdir} holds a {kind} run ({path}); `dnas {command}` writes "
                     f"its own run folder: choose another --workdir")


def run(argv: List[str]) -> int:
  """Runs one command; returns the exit status."""
  fv = flags.FlagValues()
  _define_flags(fv, argv)
  if any(a in HELP_FLAGS for a in argv[1:]):
    words = [a for a in argv[1:] if not a.startswith("-")]
    command = words[0] if words and words[0] in COMMANDS else None
    print(help_text(command, fv))
    return 0
  _check_paths(argv)
  try:
    rest = fv(argv)
  except flags.Error as e:
    msg = str(e)
    if "Traceback (most recent call last)" in msg:
      # config_flags embeds the config file's traceback; keep its first and last lines.
      lines = [l for l in msg.splitlines() if l.strip()]
      msg = f"{lines[0]} {lines[-1]}"
    raise UsageError(msg) from None
  except (AttributeError, KeyError) as e:
    # ml_collections raises these for an override of a key the config lacks.
    raise UsageError(_unknown_override(fv, argv, e)) from None
  if fv.config is not None and "imports" in fv.config:
    # The user's modules, before anything is validated; .py paths from the working directory,
    # else the config file's folder, recorded absolute in the run folder's config.json.
    from dnas import plugins  # pylint: disable=g-import-not-at-top
    base = os.path.dirname(os.path.abspath(config_flags.get_config_filename(fv["config"])))
    fv.config.imports = tuple(plugins.load(fv.config.imports, base_dir=base))
  if rest[1:2] and rest[1] in ("search", "train", "bench"):
    from dnas import compiler  # pylint: disable=g-import-not-at-top
    # Process flags, set before JAX starts its backends.
    if rest[1:] in (["search"], ["bench", "search"]):
      compiler.low_memory_schedule()
    compiler.no_triton_gemm()
  if rest[1:] in (["search"], ["train"]):
    from dnas import parallel  # pylint: disable=g-import-not-at-top
    # Several processes run one search or training; JAX must not have started yet.
    if parallel.initialize(fv.coordinator_address, fv.num_processes, fv.process_id,
                           detect=fv.distributed) and not parallel.is_writer():
      # Process 0 reports; errors still reach stderr. The file descriptor too: native
      # libraries (the collectives) print to it.
      sys.stdout.flush()
      os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
      sys.stdout = open(os.devnull, "w")
  if len(rest) == 3 and rest[1] == "bench":
    return _bench(fv, rest[2])
  if len(rest) != 2 or rest[1] not in COMMANDS or rest[1] == "bench":
    raise UsageError(f"expected one command out of {list(COMMANDS)}, got {rest[1:]}\n"
                     f"usage:{USAGE}")
  command = rest[1]
  if command in ("search", "train") and fv.workdir:
    _check_run_kind(command, fv.workdir)
  if command == "search":
    if fv.config is None or not fv.workdir:
      raise UsageError("search needs --config and --workdir")
    from dnas import train_lib  # pylint: disable=g-import-not-at-top
    result = train_lib.run_search(fv.config, fv.workdir)
    if result.get("signal"):
      return 128 + result["signal"]
    if "genotype" in result:
      print(f"genotype: {json.dumps(result['genotype'])}")
      print(f"written to {os.path.join(fv.workdir, 'genotype.json')} and "
            f"{os.path.join(fv.workdir, 'plots')}/")
      print(next_command(result["genotype"], fv.workdir))
    for seed, one in result.get("seeds", {}).items():  # search.num_seeds > 1: a folder each
      if "genotype" in one:
        print(next_command(one["genotype"], os.path.join(fv.workdir, f"seed_{seed}")))
    return 0
  if command == "train":
    if fv.config is None or not fv.workdir or not fv.genotype:
      raise UsageError("train needs --config, --genotype and --workdir")
    from dnas import train_lib  # pylint: disable=g-import-not-at-top
    result = train_lib.run_train(fv.config, _load_genotype(fv.genotype), fv.workdir)
    if result.get("signal"):
      return 128 + result["signal"]
    for split in ("test", "holdout"):
      if f"{split}_acc" in result:
        print(f"{split} accuracy {result[split + '_acc']:.4f} after {result['epochs']} epochs; "
              f"{os.path.join(fv.workdir, 'final_metrics.json')}")
    return 0
  if command == "info":
    if fv.config is None:
      raise UsageError("info needs --config")
    if fv.show_config:
      path = config_flags.get_config_filename(fv["config"])
      if not os.path.isfile(path) and ":" in path:
        path = path.rsplit(":", 1)[0]
      print(show_config(fv.config, path))
      return 0
    info = _info(fv.config, fv.genotype)
    print(json.dumps(info) if fv.json else readable_info(info))
    return 0
  if command == "explore":
    return _explore(fv)
  # plot
  from dnas import plot, train_lib  # pylint: disable=g-import-not-at-top
  if fv.workdir:
    from dnas import plugins  # pylint: disable=g-import-not-at-top
    plugins.from_run_folder(fv.workdir)  # the run's own ops, for its genotype
    files = train_lib.draw(fv.workdir)
  elif fv.genotype:
    files = plot.draw_genotype(
        _load_genotype(fv.genotype), fv.out or ".", stem="genotype",
        name=os.path.basename(os.path.normpath(fv.genotype))[:60])
  else:
    raise UsageError("plot needs --workdir or --genotype")
  print("\n".join(files))
  return 0


def _option_value(text: str):
  """A strategy option's value from the command line: a Python literal, else the string."""
  import ast  # pylint: disable=g-import-not-at-top
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _explore(fv: flags.FlagValues) -> int:
  from dnas import benchmarks, explore  # pylint: disable=g-import-not-at-top
  settings = {"strategy": fv.strategy, "benchmark": fv.benchmark, "metric": fv.metric,
              "budget": fv.budget, "runs": fv.runs, "seed": fv.seed, "options": {},
              "constraints": list(fv.constraint), "objectives": list(fv.objective),
              "no_repeat": fv.no_repeat, "tables": list(fv.table)}
  if fv.config is not None:  # the config's explore section; flags given explicitly win
    if "explore" not in fv.config:
      raise UsageError("explore --config: the config has no `explore` section "
                       "(see experiments/explore_nb201.py)")
    e = fv.config.explore
    for key in ("strategy", "benchmark", "metric", "budget", "runs", "seed"):
      if key in e and not fv[key].present:
        settings[key] = e[key] or settings[key]
    if "no_repeat" in e and not fv["no_repeat"].present:
      settings["no_repeat"] = bool(e.no_repeat)
    if not fv["table"].present:
      settings["tables"] = list(e.get("tables", ()))
    settings["options"] = dict(e.get("options", {}))
    for key in ("constraints", "objectives"):
      if not fv[key[:-1]].present:
        settings[key] = list(e.get(key, ()))
  for item in fv.option:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise UsageError(f"--option {item!r}: expected KEY=VALUE")
    settings["options"][key] = _option_value(value)
  if not settings["strategy"]:
    from dnas import blackbox  # pylint: disable=g-import-not-at-top
    raise UsageError(f"explore needs --strategy, one of {blackbox.names()}")
  if fv.space != "nb201":
    raise UsageError(f"--space {fv.space!r}: explore runs on a benchmark table; tables exist "
                     f"for the nb201 space only")
  where = settings["benchmark"]
  if where and os.path.isdir(where):
    table = benchmarks.load_nb201(where)
  elif where and where in benchmarks.table_names():
    table = benchmarks.get_table(where)
  elif where:
    raise UsageError(f"--benchmark {where!r}: neither a folder nor a registered table "
                     f"({', '.join(benchmarks.table_names())})")
  else:
    table = benchmarks.load_nb201()
  for path in settings["tables"]:
    table = benchmarks.join(table, benchmarks.load_csv(path))
  result = explore.explore(settings["strategy"], table, metric=settings["metric"],
                           budget=settings["budget"], runs=settings["runs"],
                           seed=settings["seed"], options=settings["options"],
                           constraints=settings["constraints"],
                           objectives=settings["objectives"],
                           no_repeat=settings["no_repeat"], workdir=fv.workdir)
  if fv.json:
    print(explore.to_json_line(result))
  else:
    report = [c for c in ("cifar10_valid", "cifar10_test") if c in result["mean"]]
    print(f"{result['strategy']}: {result['feasible_runs']} of {len(result['runs'])} runs of "
          f"{result['budget']} queries on {result['metric']}, {result['wall_s']:.2f}s")
    for c in report + [o["column"] for o in result["objectives"]] + (
        ["hypervolume"] if "hypervolume" in result["mean"] else []):
      print(f"  {c}: {result['mean'][c]:.3f} +- {result['std'][c]:.3f}")
    if fv.workdir:
      print(f"written to {fv.workdir}/result.json, anytime.json, anytime.png"
            + (", pareto.png" if os.path.exists(os.path.join(fv.workdir, "pareto.png")) else ""))
  return 0


def _user_errors():
  # pylint: disable-next=g-import-not-at-top
  from dnas import benchmarks, data, explore, genotypes, plugins, published, train_lib
  return (UsageError, train_lib.ConfigError, train_lib.CheckpointError, data.DataError,
          genotypes.GenotypeError, published.UnknownGenotypeError, FileNotFoundError,
          plugins.PluginError, explore.ExploreError, benchmarks.TableError)


def _new_folders(argv: List[str]) -> List[str]:
  """The --workdir/--out folders that do not exist yet (removed again if the command fails
  before writing more than its config)."""
  return [v for v in _flag_args(argv, ("workdir", "out")).values() if v and not os.path.exists(v)]


def _remove_if_unused(folder: str) -> None:
  """Removes ``folder`` if it holds nothing but a config.json and empty folders."""
  if not os.path.isdir(folder):
    return
  for root, _, files in os.walk(folder):
    if any(not (root == folder and f == "config.json") for f in files):
      return
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(folder, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  fresh = _new_folders(argv)
  try:
    code = run(argv)
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, _user_errors()):
      for folder in fresh:
        _remove_if_unused(folder)
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    raise
  sys.exit(code)


if __name__ == "__main__":
  main()
