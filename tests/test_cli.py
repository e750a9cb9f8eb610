"""The `dnas` command end to end on real CIFAR-10 images; resume; usage errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dnas import cli, genotypes, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "darts_cifar10.py")
TRAIN_CONFIG = os.path.join(REPO, "experiments", "train_cifar10.py")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
  return tmp_path_factory.mktemp("caches")


def _smoke(archive, caches, **overrides):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  del config_flags
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("darts_cifar10", CONFIG)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config("smoke")
  c.data.path = archive
  c.data.cache_dir = str(caches / "data")
  c.compilation_cache_dir = str(caches / "jax")
  c.data.train_size = 128     # 4 steps per epoch at batch 16
  c.checkpoint_every_steps = 2
  c.update_from_flattened_dict(overrides)
  return c


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
  g = genotypes.load(str(work / "genotype.json"))
  assert g.space == "darts" and len(g.normal) == 4  # smoke: 2 nodes
  cfg = json.loads((work / "config.json").read_text())
  assert cfg["model"]["channels"] == 4 and cfg["data"]["train_size"] == 128
  lines = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [4, 8]  # log_every_steps=4, 4 steps per epoch
  for key in ("train_loss", "train_acc", "val_loss", "val_acc", "learning_rate", "images_per_s",
              "epoch"):
    assert all(np.isfinite(l[key]) for l in lines), key
  hist = json.loads((work / "alpha_history.json").read_text())
  assert np.asarray(hist["epochs"]["normal"]).shape == (2, 5, 8)
  np.testing.assert_allclose(np.asarray(hist["epochs"]["reduce"]).sum(-1), 1.0, rtol=1e-5)
  plots = work / "plots"
  for name in ("genotype_normal", "genotype_reduce"):
    for ext in ("png", "pdf", "dot"):
      assert (plots / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
  assert (plots / "alpha_history.png").read_bytes()[:4] == b"\x89PNG"

  (plots / "alpha_history.png").unlink()
  r = _cli("plot", "--workdir", str(work))
  assert r.returncode == 0, r.stderr[-3000:]
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


def test_resumed_search_equals_uninterrupted(cifar10_archive, tmp_path, caches):
  full = train_lib.run_search(_smoke(cifar10_archive, caches), str(tmp_path / "full"))
  part = train_lib.run_search(_smoke(cifar10_archive, caches), str(tmp_path / "part"),
                              stop_after_steps=3)
  assert part == {"step": 3, "stopped": True}
  resumed = train_lib.run_search(_smoke(cifar10_archive, caches), str(tmp_path / "part"))
  assert resumed["step"] == full["step"] == 8
  for k in full["op_weights"]:
    np.testing.assert_array_equal(resumed["op_weights"][k], full["op_weights"][k])
  assert resumed["genotype"] == full["genotype"]


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
])
def test_usage_errors_exit_2_without_traceback(args, needle, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["dnas", *args])
  err = capsys.readouterr().err
  assert e.value.code == 2
  assert needle in err and "Traceback" not in err
