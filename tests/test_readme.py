"""The README's walkthrough, run as written: every command exits 0 and leaves what the README
says it leaves.

The commands run in a scratch folder holding a link to ``experiments/``; the README's relative
paths to the shared data (``../shared/...``) are replaced by where the tests find the data, and
``.venv/bin/dnas`` by the ``dnas`` of the interpreter running the tests. Nothing else changes.
They run with XLA's optimisations off (``JAX_DISABLE_MOST_OPTIMIZATIONS``, the environment, not
the commands): at smoke size the runs are mostly compilation.
"""

import json
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
NB201_DIR = os.environ.get("DNAS_NB201_DIR", os.path.join(REPO, "..", "shared", "nasbench"))


def _block(section: str) -> list:
  """The commands of the first ```bash block after the heading ``section``."""
  text = open(README, encoding="utf-8").read()
  start = text.index(section)
  body = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
  return [l for l in body.splitlines() if l.strip() and not l.lstrip().startswith("#")]


def _args(line: str, archive: str) -> list:
  words = shlex.split(line)
  assert words[0] == ".venv/bin/dnas", line
  out = [sys.executable, "-m", "dnas.cli"]
  for w in words[1:]:
    w = w.replace("../shared/data/cifar10-jpeg.tar.gz", archive)
    w = w.replace("../shared/nasbench", NB201_DIR)
    out.append(w)
  return out


def test_the_walkthrough_runs_as_written(cifar10_archive, tmp_path, caches):
  lines = _block("## Walkthrough")
  assert len(lines) == 6, lines
  os.symlink(os.path.join(REPO, "experiments"), tmp_path / "experiments")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
             DNAS_CACHE_DIR=str(caches / "data"), HOME=str(caches / "home"))
  outputs = []
  for line in lines:
    r = subprocess.run(_args(line, cifar10_archive), cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (line, r.stderr[-3000:])
    outputs.append(r.stdout)
  walk = tmp_path / "runs" / "walk"
  # 1: a search's folder, as the README describes it.
  for name in ("genotype.json", "metrics.jsonl", "config.json", "checkpoints"):
    assert (walk / "search" / name).exists(), name
  assert json.loads((walk / "search" / "genotype.json").read_text())["space"] == "nb201"
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(walk / "search"))
  # 2: the drawings.
  assert (walk / "search" / "plots" / "genotype.png").stat().st_size > 0
  assert (walk / "search" / "plots" / "alpha_history.png").stat().st_size > 0
  # 3: readable figures, then a retrained cell with its test accuracy.
  assert "weights:" in outputs[2] and "params" in outputs[2] and "FLOPs" in outputs[2]
  final = json.loads((walk / "train" / "final_metrics.json").read_text())
  assert 0.0 <= final["test_acc"] <= 1.0
  # 4: a second strategy's search.
  assert (walk / "gdas" / "genotype.json").exists()
  # 5: twenty runs of evolution on the table.
  result = json.loads((walk / "explore" / "result.json").read_text())
  assert result["strategy"] == "regularized_evolution" and len(result["runs"]) == 20


def test_the_set_up_commands_are_the_ones_ci_and_the_tests_run():
  text = open(README, encoding="utf-8").read()
  blocks = re.findall(r"```bash\n(.*?)```", text[text.index("## Set-up"):], re.S)
  main_job, tests = blocks[0].strip(), blocks[1].strip()
  assert main_job.startswith("python3 -m venv .venv && .venv/bin/pip install -e . && "
                             ".venv/bin/dnas search --config experiments/darts_cifar10.py:smoke")
  ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
  test_command = tests.split("&&")[-1].strip()
  assert test_command in ci, (test_command, ci)
