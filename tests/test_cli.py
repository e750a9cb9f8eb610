"""The `dnas` command end to end on real CIFAR-10 images; resume; usage errors."""

import glob
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest


from dnas import checkpoints, cli, discretize, genotypes, published, search_loop, train_lib
from dnas.ops import sets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "darts_cifar10.py")
TRAIN_CONFIG = os.path.join(REPO, "experiments", "train_cifar10.py")
NB201_CONFIG = os.path.join(REPO, "experiments", "nb201_darts_cifar10.py")
IMAGENET_CONFIG = os.path.join(REPO, "experiments", "train_imagenet.py")


def _config(path, variant, archive=None, caches=None):
  c = train_lib.load_config(path, variant)
  if archive is not None:
    c.data.path = archive
    c.data.cache_dir = str(caches / "data")
    c.compilation_cache_dir = str(caches / "jax")
  return c


def _event_scalars(workdir):
  """``{tag: [(step, value), ...]}`` from the TensorBoard event files in ``workdir``.

  Reads the TFRecord framing (length, its CRC, payload, its CRC) and parses each payload as
  an ``Event`` protocol buffer (tensorboardX's copy of TensorFlow's proto).
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(str(workdir), "events.out.tfevents.*")))
  assert files, f"no TensorBoard event file in {workdir}"
  out = {}
  for path in files:
    with open(path, "rb") as f:
      raw = f.read()
    pos, first = 0, True
    while pos < len(raw):
      (length,) = struct.unpack("<Q", raw[pos:pos + 8])
      event = event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      if first:
        assert event.file_version.startswith("brain.Event"), event
        first = False
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
    assert pos == len(raw), f"{path}: truncated record"
  return out


def _cli(*args, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "dnas.cli", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)


def test_search_then_plot_end_to_end(cifar10_archive, tmp_path, caches):
  work = tmp_path / "run"
  r = _cli("search", "--config", f"{CONFIG}:smoke", "--workdir", str(work),
           f"--config.data.path={cifar10_archive}",
           f"--config.data.cache_dir={caches / 'data'}",
           f"--config.compilation_cache_dir={caches / 'jax'}",
           "--config.data.train_size=128")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "genotype:" in r.stdout
  # The phases, short epoch lines (the genotype is in its file), and what to run next.
  for phase in ("loading data:", "compiling the search step", "searching: steps 1..8"):
    assert phase in r.stdout, phase
  epochs = [l for l in r.stdout.splitlines() if l.startswith("epoch ")]
  assert len(epochs) == 2 and all(len(l) < 120 and "ETA" in l for l in epochs), epochs
  assert (f"next, retrain it: dnas train --config experiments/train_cifar10.py --genotype {work}"
          in r.stdout)
  g = genotypes.load(str(work / "genotype.json"))
  assert g.space == "darts" and len(g.normal) == 4  # smoke: 2 nodes
  cfg = json.loads((work / "config.json").read_text())
  assert cfg["model"]["channels"] == 4 and cfg["data"]["train_size"] == 128
  all_lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  lines = [l for l in all_lines if "split" not in l]
  assert [l["step"] for l in lines] == [4, 8]  # log_every_steps=4, 4 steps per epoch
  for key in ("train_loss", "train_acc", "val_batch_loss", "val_batch_acc", "learning_rate",
              "images_per_s", "epoch"):
    assert all(np.isfinite(l[key]) for l in lines), key
  # One whole-validation-split line per epoch: 128 images, half of them held out for alpha.
  vals = [l for l in all_lines if l.get("split") == "val"]
  assert [(l["epoch"], l["step"], l["n"]) for l in vals] == [(0, 4, 64), (1, 8, 64)]
  assert all(0.0 <= l["val_acc"] <= 1.0 and np.isfinite(l["val_loss"]) and l["eval_s"] > 0
             for l in vals)
  assert vals[-1]["genotype"] == json.loads((work / "genotype.json").read_text())
  assert vals[-1]["data_split"] == "seeded"
  assert "data split: seeded" in r.stdout
  # genotype.json is the derivation from softmax(alpha) of the run's last checkpoint (DARTS'
  # rule ranks edges across a node by their op weights, so raw alpha would differ).
  payload = {"state": checkpoints.read(str(work))}
  assert int(payload["state"]["step"]) == 8
  weights = {k: jax.nn.softmax(np.asarray(v), -1) for k, v in payload["state"]["arch"].items()}
  model = train_lib.build_search_model(train_lib.load_config(CONFIG, "smoke"), 10)
  assert discretize.derive(model, weights) == g
  hist = json.loads((work / "alpha_history.json").read_text())
  assert np.asarray(hist["epochs"]["normal"]).shape == (2, 5, 8)
  np.testing.assert_allclose(np.asarray(hist["epochs"]["reduce"]).sum(-1), 1.0, rtol=1e-5)
  plots = work / "plots"
  for name in ("genotype_normal", "genotype_reduce"):
    for ext in ("png", "pdf", "dot"):
      assert (plots / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
  assert (plots / "alpha_history.png").read_bytes()[:4] == b"\x89PNG"
  scalars = _event_scalars(work)
  assert [s for s, _ in scalars["search/train_loss"]] == [4, 8]
  for key in ("train_acc", "val_batch_loss", "val_batch_acc", "learning_rate", "images_per_s"):
    assert all(np.isfinite(v) for _, v in scalars[f"search/{key}"]), key
  np.testing.assert_allclose([v for _, v in scalars["search/val_batch_acc"]],
                             [l["val_batch_acc"] for l in lines], rtol=1e-6)
  assert scalars["val/val_acc"] == [(l["step"], pytest.approx(l["val_acc"])) for l in vals]

  (plots / "alpha_history.png").unlink()  # `dnas plot` draws it again (in process here; a fresh
  cli.run(["dnas", "plot", "--workdir", str(work)])  # process: tests/test_plugins.py)
  assert (plots / "alpha_history.png").exists()

  # Retrain the genotype the search produced.
  train_dir = tmp_path / "train"
  r = _cli("train", "--config", f"{TRAIN_CONFIG}:smoke", "--genotype", str(work / "genotype.json"),
           "--workdir", str(train_dir), f"--config.data.path={cifar10_archive}",
           f"--config.data.cache_dir={caches / 'data'}",
           f"--config.compilation_cache_dir={caches / 'jax'}")
  assert r.returncode == 0, r.stderr[-3000:]
  final = json.loads((train_dir / "final_metrics.json").read_text())
  assert final["step"] == 8 and 0.0 <= final["test_acc"] <= 1.0  # 256 images, batch 32
  assert genotypes.load(str(train_dir / "genotype.json")) == g
  lines = [json.loads(l) for l in (train_dir / "metrics.jsonl").read_text().splitlines()]
  assert any(l.get("split") == "test" for l in lines)
  assert all(np.isfinite(l["loss"]) for l in lines if "loss" in l)
  scalars = _event_scalars(train_dir)
  for tag in ("train/loss", "train/accuracy", "train/learning_rate", "train/images_per_s",
              "test/test_acc"):
    assert tag in scalars, (tag, sorted(scalars))
  assert scalars["test/test_acc"][-1] == (8, pytest.approx(final["test_acc"]))


def test_nb201_search_smoke(cifar10_archive, tmp_path, caches, fast_compile, capsys,
                            monkeypatch):
  c = _config(NB201_CONFIG, "smoke", cifar10_archive, caches)
  c.data.train_size = 128  # 4 steps per epoch at batch 16
  work = tmp_path / "nb201"
  seen = []  # the matmul precision in force while the run builds its step

  def make_strategy(*args):
    seen.append(jax.config.jax_default_matmul_precision)
    return real_make_strategy(*args)

  real_make_strategy = search_loop.make_strategy
  monkeypatch.setattr(search_loop, "make_strategy", make_strategy)
  result = train_lib.run_search(c, str(work))
  assert seen == ["highest"] and jax.config.jax_default_matmul_precision != "highest"
  assert result["step"] == 8
  obj = json.loads((work / "genotype.json").read_text())
  assert set(obj) == {"space", "arch"} and obj["space"] == "nb201"
  g = genotypes.load(str(work / "genotype.json"))
  assert isinstance(g, genotypes.NB201Genotype) and g.to_json() == result["genotype"]
  assert genotypes.NB201Genotype.from_arch(obj["arch"]) == g
  assert [[src for _, src in node] for node in g.nodes] == [[0], [0, 1], [0, 1, 2]]
  assert all(op in sets.NB201.ops for node in g.nodes for op, _ in node)
  # NB201's rule: the argmax over every op on every edge, "none" included.
  w = result["op_weights"]["cell"]
  assert [op for node in g.nodes for op, _ in node] == [sets.NB201.ops[i] for i in w.argmax(-1)]
  hist = json.loads((work / "alpha_history.json").read_text())
  assert np.asarray(hist["epochs"]["cell"]).shape == (2, 6, 5)
  for name in ("genotype.png", "genotype.pdf", "genotype.dot", "alpha_history.png",
               "alpha_history.pdf"):
    assert (work / "plots" / name).stat().st_size > 0, name
  assert "val/val_acc" in _event_scalars(work)

  # NB201's split needs CIFAR in its original order; the JPEG archive is not: seeded, said so.
  out = capsys.readouterr().out
  assert "data split: seeded" in out and "NAS-Bench-201's split needs" in out
  vals = [l for l in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())
          if l.get("split") == "val"]
  assert [(l["epoch"], l["n"], l["data_split"]) for l in vals] == [(0, 64, "seeded"),
                                                                   (1, 64, "seeded")]
  assert result["val_acc"] == vals[-1]["val_acc"]
  # genotype.json is the derivation from softmax(alpha) of the checkpoint the run ended with.
  payload = {"state": checkpoints.read(str(work))}
  weights = {k: jax.nn.softmax(np.asarray(v), -1) for k, v in payload["state"]["arch"].items()}
  model = train_lib.build_search_model(c, 10)
  assert discretize.derive(model, weights) == g

  capsys.readouterr()
  assert cli.run(["dnas", "info", "--config", f"{NB201_CONFIG}:smoke", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["space"] == "nb201" and info["n_arch_params"] == 30
  assert info["n_params"] == info["n_params_aux"] > 0 and info["flops"] > 0


def test_info_prints_readable_figures():
  text = cli.readable_info({"kind": "train", "space": "darts_cifar", "input_shape": [1, 32, 32, 3],
                            "n_params": 3349342, "n_params_aux": 3825768, "n_arch_params": 0,
                            "flops": 1089000000})
  assert "weights: 3.35 M params (3.83 M params with the auxiliary head)" in text
  assert "inference: 1.09 GFLOPs per image" in text
  text = cli.readable_info({"kind": "search", "space": "nb201", "input_shape": [1, 32, 32, 3],
                            "n_params": 25050, "n_params_aux": 25050, "n_arch_params": 30,
                            "arch_shapes": {"cell": [6, 5]}, "flops": 6470000})
  assert "weights: 25.05 k params" in text and "auxiliary" not in text
  assert "architecture parameters: 30 (cell 6x5)" in text and "6.47 MFLOPs" in text


def test_info_reports_params_and_flops(capsys):
  assert cli.run(["dnas", "info", "--config", TRAIN_CONFIG, "--genotype", "DARTS_V2",
                  "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  # DARTS' published counts (eval-net tests): without and with the auxiliary head.
  assert (info["space"], info["n_params"], info["n_params_aux"], info["n_arch_params"]) == (
      "darts_cifar", 3349342, 3825768, 0)
  assert genotypes.from_json(info["genotype"]) == published.get("DARTS_V2")
  # XLA counts 2 flops per multiply-add, padding taps excluded: ~1.08e9 for DARTS_V2.
  assert 0.9e9 < info["flops"] < 1.2e9
  assert info["input_shape"] == [1, 32, 32, 3]

  assert cli.run(["dnas", "info", "--config", f"{CONFIG}:smoke", "--json"]) == 0
  info = json.loads(capsys.readouterr().out)
  assert info["space"] == "darts" and info["n_arch_params"] == 2 * 5 * 8  # 2 nodes: 5 edges
  assert info["n_params"] == info["n_params_aux"] > 0 and info["flops"] > 0


def test_imagenet_recipe_smoke(cifar10_archive, tmp_path, caches, fast_compile):
  full = _config(IMAGENET_CONFIG, "default")
  assert (full.model.space, full.model.channels, full.model.layers, full.data.batch_size,
          full.train.epochs, full.train.label_smoothing, full.train.aux_weight) == (
              "darts_imagenet", 48, 14, 128, 250, 0.1, 0.4)
  c = _config(IMAGENET_CONFIG, "smoke", cifar10_archive, caches)
  work = tmp_path / "imagenet"
  final = train_lib.run_train(c, published.get("DARTS_V2"), str(work))
  assert final["step"] == 8 and 0.0 <= final["test_acc"] <= 1.0  # 128 images, batch 32
  lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  lr = {l["epoch"]: l["learning_rate"] for l in lines if "learning_rate" in l}
  np.testing.assert_allclose([lr[0], lr[1]], [0.1, 0.1 * 0.97], rtol=1e-6)  # x0.97 per epoch
  assert all(np.isfinite(l["loss"]) for l in lines if "loss" in l)
  assert "train/learning_rate" in _event_scalars(work)


@pytest.mark.parametrize("args,needle", [
    (["search", "--config", f"{CONFIG}:smoke", "--workdir", "x", "--config.model.colour=3"],
     "colour"),
    (["search", "--config", f"{CONFIG}:smoke", "--workdir", "x", "--config.data.batch_size=0"],
     "data.batch_size"),
    (["search", "--config", f"{CONFIG}:smoke", "--workdir", "x", "--config.model.space=vit"],
     "model.space"),
    (["search", "--config", f"{CONFIG}:tiny", "--workdir", "x"], "tiny"),
    (["search", "--config", f"{CONFIG}:smoke"], "--workdir"),
    (["fly"], "fly"),
    (["plot", "--genotype", "NOT_A_GENOTYPE"], "NOT_A_GENOTYPE"),
    (["train", "--config", f"{TRAIN_CONFIG}:smoke", "--workdir", "x", "--genotype",
      "DARTS_V2", "--config.model.space=nb201"], "model.space"),
    (["train", "--config", f"{TRAIN_CONFIG}:smoke", "--workdir", "x", "--genotype",
      "missing.json"], "missing.json"),
    (["info", "--config", f"{TRAIN_CONFIG}:smoke"], "--genotype"),
])
def test_usage_errors_exit_2_without_traceback(args, needle, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["dnas", *args])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["search", "--help"], ["explore", "-h"],
                                  ["train", "--help"]])
def test_help_exits_0_and_names_the_config_flag_commands_experiments_and_genotypes(args, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["dnas", *args])
  out = capsys.readouterr().out
  assert e.value.code == 0
  assert "--config" in out and f"dnas {args[0] if args[0][0] != '-' else 'search'}" in out
  if args[0].startswith("-"):
    assert all(f"dnas {c}" in out for c in cli.COMMANDS if c != "bench")
  assert "experiments/nb201_darts_cifar10.py: first_order, second_order, smoke" in out
  assert "DARTS_V2" in out
  if args[0] == "explore":
    assert "--no_repeat" in out and "--budget" in out
  if args[0] == "search":
    assert "--workdir" in out and "--budget" not in out


def test_info_show_config_lists_every_key_with_its_value_and_comment(capsys):
  code = cli.run(["dnas", "info", "--config", f"{CONFIG}:smoke", "--show_config"])
  out = capsys.readouterr().out
  assert code == 0
  lines = {l.split()[0]: l for l in out.splitlines()}
  assert lines["data.batch_size"].split()[1] == json.dumps(_config(CONFIG, "smoke").data.batch_size)
  assert "# a local archive or folder" in lines["data.path"]
  flat = _flat_keys(_config(CONFIG, "smoke"))
  assert set(lines) == flat


def _flat_keys(cfg, prefix=""):
  out = set()
  for k, v in cfg.items():
    if hasattr(v, "items") and len(v):
      out |= _flat_keys(v, f"{prefix}{k}.")
    else:
      out.add(f"{prefix}{k}")
  return out


def _bad_path_cases(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  folder = tmp_path / "no_genotype_here"
  folder.mkdir()
  config = f"{CONFIG}:smoke"
  train = f"{TRAIN_CONFIG}:smoke"
  return [
      (["search", "--config", str(tmp_path / "missing.py"), "--workdir", str(tmp_path / "w")],
       "missing.py"),
      (["search", "--config", f"{tmp_path / 'missing.py'}:smoke", "--workdir",
        str(tmp_path / "w")], "missing.py"),
      (["search", "--config", str(tmp_path), "--workdir", str(tmp_path / "w")], "a folder"),
      (["info", "--config", str(tmp_path / "nope.py")], "nope.py"),
      (["search", "--config", config, "--workdir", str(a_file)], "--workdir"),
      (["train", "--config", train, "--genotype", "DARTS_V2", "--workdir", str(a_file)],
       "--workdir"),
      (["explore", "--strategy", "random_search", "--workdir", str(a_file)], "--workdir"),
      (["plot", "--genotype", "DARTS_V2", "--out", str(a_file)], "--out"),
      (["plot", "--genotype", str(folder)], "genotype.json"),
      (["train", "--config", train, "--genotype", str(folder), "--workdir",
        str(tmp_path / "w")], "genotype.json"),
      (["plot", "--genotype", str(tmp_path / "missing.json")], "missing.json"),
  ]


def test_bad_paths_give_one_error_line_exit_2_and_leave_nothing(tmp_path, capsys):
  before = sorted(os.listdir(tmp_path))
  for args, needle in _bad_path_cases(tmp_path):
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(SystemExit) as e:
      cli.main(["dnas", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2, args
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)
    assert needle in err and "Traceback" not in err, (args, err)
    assert sorted(os.listdir(tmp_path)) == before, args  # nothing created


def test_train_on_a_search_folder_names_it_and_a_failed_start_leaves_no_folder(tmp_path,
                                                                                capsys):
  run = tmp_path / "search_run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"search": {"epochs": 1}, "data": {}}))
  with pytest.raises(SystemExit) as e:
    cli.main(["dnas", "train", "--config", f"{TRAIN_CONFIG}:smoke", "--genotype", "DARTS_V2",
              "--workdir", str(run)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "holds a search run" in err and "another --workdir" in err
  # Missing data: the run folder the command created is removed again.
  work = tmp_path / "fresh"
  with pytest.raises(SystemExit) as e:
    cli.main(["dnas", "search", "--config", f"{CONFIG}:smoke", "--workdir", str(work),
              f"--config.data.path={tmp_path / 'no_such_archive.tar.gz'}"])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "no_such_archive" in err
  assert not work.exists()


def test_durations_and_the_next_command():
  from dnas import search_loop  # pylint: disable=g-import-not-at-top
  assert [search_loop._duration(s) for s in (42, 425, 11520)] == ["42s", "7m05s", "3h12m"]
  assert cli.next_command({"space": "nb201", "arch": "|..|"}, "runs/a/") == (
      "next, retrain it: dnas train --config experiments/train_cifar10.py:nb201 --genotype "
      "runs/a --workdir runs/a_train")
  assert ":nb201" not in cli.next_command({"space": "darts"}, "runs/b")
