"""Nothing lost, clear errors: kills and resumes, malformed genotypes, bad config values.

The kill tests run the ``dnas`` command in subprocesses on the real CIFAR-10 archive, SIGKILL
them at seeded random points, run the same command again, and check that the final artifacts
equal an uninterrupted run's bit for bit and that every JSON file parses after each kill. The
property tests feed malformed genotypes and config values to the loaders and validators: each
case either loads something valid or raises the library's error naming the field or key.
"""

import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

import hypothesis
from hypothesis import strategies as st
import jax
import ml_collections
import numpy as np
import pytest

from dnas import checkpoints, cli, genotypes, published, train_lib
from dnas import data as data_lib
from dnas.ops import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH_CONFIG = os.path.join(REPO, "experiments", "darts_cifar10.py")
TRAIN_CONFIG = os.path.join(REPO, "experiments", "train_cifar10.py")
SETTINGS = hypothesis.settings(max_examples=80, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))


def _config(path, variant):
  return train_lib.load_config(path, variant)


# --------------------------------------------------------------------------------------------
# Kills and resumes: the same command run again ends where an uninterrupted run ends.

# Tinier than the smoke variants: one node per cell, few images, a checkpoint every 3 steps
# (so a kill loses steps that must be redone) and a metrics line every step (so every resume
# starts on a line boundary and the lines can be compared too).
SEARCH_OVERRIDES = {"data.train_size": 64, "data.batch_size": 8, "model.nodes": 1,
                    "log_every_steps": 1, "checkpoint_every_steps": 3}  # 2 epochs of 4 steps
TRAIN_OVERRIDES = {"data.train_size": 64, "data.test_size": 32, "data.batch_size": 16,
                   "data.eval_batch_size": 32, "model.channels": 4, "model.layers": 3,
                   "model.auxiliary": False, "train.epochs": 2, "log_every_steps": 1,
                   "checkpoint_every_steps": 3}  # 2 epochs of 4 steps
TINY_GENOTYPE = genotypes.darts(normal=[("sep_conv_3x3", 0), ("skip_connect", 1)],
                                reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1)],
                                normal_concat=(2,), reduce_concat=(2,))


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu")


def _overrides(archive, caches, extra):
  return {"data.path": archive, "data.cache_dir": str(caches / "data"),
          "compilation_cache_dir": str(caches / "jax"), **extra}


def _command(kind, overrides, work, genotype=None):
  config = SEARCH_CONFIG if kind == "search" else TRAIN_CONFIG
  cmd = [sys.executable, "-m", "dnas.cli", kind, "--config", f"{config}:smoke", "--workdir",
         str(work)] + [f"--config.{k}={v}" for k, v in overrides.items()]
  return cmd + (["--genotype", genotype] if genotype else [])


def _metrics(work):
  path = work / "metrics.jsonl"
  return path.read_text().splitlines() if path.exists() else []


def _check_readable(work):
  """Every JSON file and metrics line parses and the checkpoint restores: nothing half-written."""
  for path in glob.glob(str(work / "**" / "*.json"), recursive=True):
    if "/checkpoints/" not in path:  # orbax's own metadata
      with open(path) as f:
        json.load(f)
  for line in _metrics(work):
    json.loads(line)
  if checkpoints.exists(str(work)):
    checkpoints.read(str(work))


def _interrupt(cmd, work, log, sig, rng, timeout=300):
  """Runs ``cmd`` and sends ``sig`` a seeded random time after it has made 1-2 steps of progress.

  Returns the exit status and the output; a run that ends first is left to end.
  """
  env = _env()
  # Lines a killed run logged after its checkpoint are dropped at the start and logged again;
  # a line this run writes differs from them in its timing, so new lines count its steps.
  old = set(_metrics(work))
  # SIGTERM early enough that the loop, not the final drawing, sees it.
  steps, delay = (rng.randint(1, 2), 1.0) if sig == signal.SIGKILL else (1, 0.3)
  with open(log, "w") as out:
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while p.poll() is None and time.time() < deadline:
      if sum(line not in old for line in _metrics(work)) >= steps:
        time.sleep(rng.uniform(0.0, delay))  # mid-step, mid-checkpoint, mid-artifact
        p.send_signal(sig)
        break
      time.sleep(0.02)
    try:
      p.wait(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      p.kill()
      raise
  return p.returncode, log.read_text()


def _comparable(lines):
  out = []
  for line in lines:
    d = json.loads(line)
    d.pop("images_per_s", None)  # timings
    d.pop("eval_s", None)
    out.append(d)
  return out


def _kill_and_resume(kind, overrides, genotype, tmp_path, signals, seed):
  """Interrupts the command with each of ``signals`` in turn, then lets it finish."""
  rng = random.Random(seed)
  work = tmp_path / "killed"
  cmd = _command(kind, overrides, work, genotype)
  interrupted = []
  for i, sig in enumerate(signals):
    code, out = _interrupt(cmd, work, tmp_path / f"run{i}.log", sig, rng)
    _check_readable(work)
    if code == 0 and "stopped by signal" not in out:
      break  # it finished before the signal; nothing left to interrupt
    interrupted.append(sig)
    if sig == signal.SIGKILL:
      assert code == -signal.SIGKILL, out[-3000:]
    else:
      assert code == 128 + sig, out[-3000:]  # a scheduler sees the run unfinished
      assert re.search(r"stopped by signal 15 at step \d+; run the same command again to "
                       r"resume from .*checkpoints", out), out[-3000:]
      assert "Traceback" not in out, out[-3000:]
      step = int(re.search(r"at step (\d+)", out).group(1))
      assert json.loads(_metrics(work)[-1])["step"] == step  # checkpointed where it stopped
  assert interrupted[:2] == signals[:2], interrupted  # the schedule leaves room for these
  # Leftovers of a write cut short (the kills rarely hit one) go at the next start.
  (work / ".checkpoint.msgpack.stale.tmp").write_bytes(b"half")
  r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  if signal.SIGTERM in interrupted:  # SIGTERM checkpoints: the last start resumed from one
    assert re.search(r"resuming .* from step [1-9]", r.stdout), r.stdout[-3000:]
  assert not glob.glob(str(work / ".*.tmp")) and not glob.glob(str(work / "plots" / ".*.tmp"))
  # An orbax save cut short leaves a temporary folder, which the next start removes.
  assert sorted(os.listdir(work / "checkpoints")) == [str(s) for s in checkpoints.steps(str(work))]
  _check_readable(work)
  return work


def _same_checkpoint(work, ref):
  """The latest checkpoints of two runs hold the same step and every array bit for bit."""
  assert checkpoints.steps(str(work))[-1] == checkpoints.steps(str(ref))[-1]
  a, b = checkpoints.read(str(work)), checkpoints.read(str(ref))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (where, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(where)


def _assert_same_run(work, ref, files):
  _same_checkpoint(work, ref)
  for name in files:
    assert (work / name).read_bytes() == (ref / name).read_bytes(), name
  assert _comparable(_metrics(work)) == _comparable(_metrics(ref))


def test_a_restart_forgets_what_a_killed_run_wrote_after_its_checkpoint(tmp_path):
  lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 5, "lo')
  (tmp_path / "plots").mkdir()
  for stale in (".checkpoint.msgpack.x1.tmp", "plots/.genotype_normal.png.x2.tmp"):
    (tmp_path / stale).write_bytes(b"half")
  (tmp_path / "keep.tmp").write_bytes(b"not ours")
  train_lib.start_clean(str(tmp_path), 2)
  assert _metrics(tmp_path) == lines[:2]
  assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == ["keep.tmp"]
  train_lib.start_clean(str(tmp_path), 0)
  assert _metrics(tmp_path) == []


def test_search_survives_kills_and_sigterm_bit_for_bit(cifar10_archive, tmp_path, caches):
  overrides = _overrides(cifar10_archive, caches, SEARCH_OVERRIDES)
  c = _config(SEARCH_CONFIG, "smoke")
  c.update_from_flattened_dict(overrides)
  ref = tmp_path / "uninterrupted"
  full = train_lib.run_search(c, str(ref))  # in this process: fills the compilation cache
  assert full["step"] == 8
  work = _kill_and_resume("search", overrides, None, tmp_path,
                          [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL], seed=0)
  # The checkpoint holds every array of the search state (alpha, weights, both optimizer
  # states, the key) and the alpha history: byte-equal files are bit-equal runs.
  _assert_same_run(work, ref, ["alpha_history.json", "genotype.json"])
  assert genotypes.load(str(work / "genotype.json")).to_json() == full["genotype"]


def _files(work):
  """Every file under ``work`` (checkpoints included), by relative path, with its bytes."""
  return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*"))
          if p.is_file()}


def test_resume_under_another_config_is_refused_before_anything_is_written(
    cifar10_archive, tmp_path, caches):
  """Every changed key is named with both values; the run folder is left byte for byte."""
  c = _config(SEARCH_CONFIG, "smoke")
  c.update_from_flattened_dict(_overrides(cifar10_archive, caches, SEARCH_OVERRIDES))
  c.search.epochs = 1
  work = tmp_path / "run"
  train_lib.run_search(c, str(work), stop_after_steps=3)
  before = _files(work)
  assert any(k.startswith("checkpoints/3/") for k in before) and "config.json" in before
  changed = c.copy_and_resolve_references()
  assert c.model.scan_inputs
  changed.search.learning_rate, changed.model.scan_inputs = 0.05, False
  with pytest.raises(train_lib.ConfigError) as e:
    train_lib.run_search(changed, str(work))
  msg = str(e.value)
  assert re.search(r"config\.model\.scan_inputs: True in .*config\.json, False now", msg), msg
  assert "config.search.learning_rate: 0.025" in msg and "0.05 now" in msg, msg
  assert _files(work) == before
  # Logging and checkpoint intervals may change: the run resumes and finishes its epoch.
  c.log_every_steps, c.checkpoint_every_steps = 2, 100
  assert train_lib.run_search(c, str(work))["step"] == 4


def test_a_checkpoint_of_another_model_is_refused_by_name(cifar10_archive, tmp_path, caches):
  """Without the run's config.json to compare, the checkpoint itself is checked: its tree
  (another layout) and every array's shape (another width), and it is left untouched."""
  c = _config(SEARCH_CONFIG, "smoke")
  c.update_from_flattened_dict(_overrides(cifar10_archive, caches, SEARCH_OVERRIDES))
  c.search.epochs = 1
  work = tmp_path / "run"
  train_lib.run_search(c, str(work), stop_after_steps=3)
  before = _files(work / "checkpoints")
  for key, value, match in [("scan_inputs", False, r"checkpoints/3: .*scan_inputs"),
                            ("channels", 6, r"checkpoints/3: .*\[.*6.*expected")]:
    (work / "config.json").unlink()
    other = c.copy_and_resolve_references()
    other.model[key] = value
    with pytest.raises(train_lib.CheckpointError, match=match):
      train_lib.run_search(other, str(work))
    assert _files(work / "checkpoints") == before


def test_a_run_with_an_older_msgpack_checkpoint_resumes_and_moves_to_orbax(
    cifar10_archive, tmp_path, caches):
  """Run folders written before the orbax format hold one ``checkpoint.msgpack``; such a run
  resumes from it, ends as an uninterrupted run does, and its first orbax checkpoint replaces
  the file."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  c = _config(SEARCH_CONFIG, "smoke")
  c.update_from_flattened_dict(_overrides(cifar10_archive, caches, SEARCH_OVERRIDES))
  c.search.epochs = 1
  ref, work = tmp_path / "ref", tmp_path / "run"
  full = train_lib.run_search(c, str(ref))
  train_lib.run_search(c, str(work), stop_after_steps=3)
  # The older format: {"state": the state's dict (the key as its data), "history": per alpha
  # group, the epochs' weights so far (none before the first epoch ends)}.
  state = checkpoints.read(str(work))
  payload = {"state": state, "history": {k: np.zeros((0,), np.float32) for k in state["arch"]}}
  (work / "checkpoint.msgpack").write_bytes(serialization.msgpack_serialize(payload))
  for step in checkpoints.steps(str(work)):
    for p in sorted((work / "checkpoints" / str(step)).rglob("*"), reverse=True):
      p.unlink() if p.is_file() else p.rmdir()
    (work / "checkpoints" / str(step)).rmdir()
  assert train_lib.run_search(c, str(work))["genotype"] == full["genotype"]
  assert not (work / "checkpoint.msgpack").exists()
  _same_checkpoint(work, ref)


def test_resume_with_another_genotype_is_refused(cifar10_archive, tmp_path, caches):
  c = _config(TRAIN_CONFIG, "smoke")
  c.update_from_flattened_dict(_overrides(cifar10_archive, caches, TRAIN_OVERRIDES))
  work = tmp_path / "run"
  train_lib.run_train(c, TINY_GENOTYPE, str(work), stop_after_steps=3)
  before = _files(work)
  other = genotypes.darts(normal=[("sep_conv_3x3", 0), ("max_pool_3x3", 1)],
                          reduce=[("max_pool_3x3", 0), ("dil_conv_3x3", 1)],
                          normal_concat=(2,), reduce_concat=(2,))
  with pytest.raises(train_lib.ConfigError, match=r"another genotype \(.*genotype\.json"):
    train_lib.run_train(c, other, str(work))
  assert _files(work) == before
  assert train_lib.run_train(c, TINY_GENOTYPE, str(work))["step"] == 8  # its own genotype resumes


def test_train_survives_kills_bit_for_bit(cifar10_archive, tmp_path, caches):
  genotype = tmp_path / "tiny.json"
  genotypes.save(TINY_GENOTYPE, str(genotype))
  overrides = _overrides(cifar10_archive, caches, TRAIN_OVERRIDES)
  c = _config(TRAIN_CONFIG, "smoke")
  c.update_from_flattened_dict(overrides)
  ref = tmp_path / "uninterrupted"
  full = train_lib.run_train(c, TINY_GENOTYPE, str(ref))
  assert full["step"] == 8
  work = _kill_and_resume("train", overrides, str(genotype), tmp_path,
                          [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL], seed=1)
  _assert_same_run(work, ref, ["genotype.json"])
  final = json.loads((work / "final_metrics.json").read_text())
  for k in ("step", "epochs", "test_loss", "test_acc", "n_params"):
    assert final[k] == full[k], k


# --------------------------------------------------------------------------------------------
# Malformed genotypes: a valid genotype or a GenotypeError naming the field, nothing else.

OPS = registry.names()
DARTS_KEYS = ("space", "normal", "normal_concat", "reduce", "reduce_concat")

json_scalars = (st.none() | st.booleans() | st.integers(-5, 10) | st.floats(allow_nan=False)
                | st.text(max_size=8) | st.sampled_from(OPS))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)


def _is_index(v, n):
  return type(v) is int and 0 <= v < n  # pylint: disable=unidiomatic-typecheck


def _darts_ok(obj) -> bool:
  """An independent statement of the DARTS genotype JSON format."""
  if set(obj) != set(DARTS_KEYS):
    return False
  for cell in ("normal", "reduce"):
    edges = obj[cell]
    if not isinstance(edges, list) or not edges or len(edges) % 2:
      return False
    for i, pair in enumerate(edges):
      if not isinstance(pair, list) or len(pair) != 2:
        return False
      if not (isinstance(pair[0], str) and pair[0] in OPS and _is_index(pair[1], i // 2 + 2)):
        return False
    concat = obj[cell + "_concat"]
    if not isinstance(concat, list) or not concat:
      return False
    if not all(_is_index(s, len(edges) // 2 + 2) for s in concat):
      return False
  return True


def _nb201_arch_ok(arch) -> bool:
  if not isinstance(arch, str):
    return False
  for i, node in enumerate(arch.split("+")):
    m = re.fullmatch(r"\|((?:[^|~+]+~[0-9]+\|)+)", node)
    if not m:
      return False
    edges = [e.split("~") for e in m.group(1)[:-1].split("|")]
    if sorted(int(s) for _, s in edges) != list(range(i + 1)):
      return False
    if any(op not in OPS for op, _ in edges):
      return False
  return True


def _expected_valid(obj) -> bool:
  if not isinstance(obj, dict):
    return False
  if obj.get("space") == "darts":
    return _darts_ok(obj)
  if obj.get("space") == "nb201":
    return set(obj) == {"space", "arch"} and _nb201_arch_ok(obj["arch"])
  return False


def _check_genotype(obj, field):
  """Loads ``obj``; asserts the outcome agrees with the format and errors name ``field``."""
  valid = _expected_valid(obj)
  try:
    g = genotypes.from_json(obj, where="g.json")
  except genotypes.GenotypeError as e:
    assert not valid, f"rejected a valid genotype {obj!r}: {e}"
    msg = str(e)
    assert msg.startswith("g.json"), msg
    if field is not None:
      assert field in msg or repr(field) in msg, (field, msg)
    return
  assert valid, f"accepted an invalid genotype {obj!r} as {g!r}"
  assert genotypes.validate(g) is g
  assert genotypes.from_json(g.to_json()) == g
  if g.space == "darts":
    assert g.to_json() == obj


@st.composite
def darts_genotypes(draw):
  cells = {}
  for cell in ("normal", "reduce"):
    nodes = draw(st.integers(1, 4))
    cells[cell] = [[draw(st.sampled_from(OPS)), draw(st.integers(0, i // 2 + 1))]
                   for i in range(2 * nodes)]
    cells[cell + "_concat"] = draw(st.lists(st.integers(0, nodes + 1), min_size=1, max_size=5))
  return {"space": "darts", **cells}


@st.composite
def nb201_archs(draw):
  nodes = draw(st.integers(1, 4))
  return "+".join("|" + "|".join(f"{draw(st.sampled_from(OPS))}~{s}"
                                 for s in draw(st.permutations(range(i + 1)))) + "|"
                  for i in range(nodes))


@st.composite
def mangled_darts(draw):
  """A valid DARTS genotype with one field broken (or not); returns (obj, field)."""
  obj = draw(darts_genotypes())
  kind = draw(st.sampled_from(["none", "value", "op", "source", "pair", "drop", "add", "concat",
                               "del_key", "add_key", "space"]))
  cell = draw(st.sampled_from(["normal", "reduce"]))
  edges = obj[cell]
  i = draw(st.integers(0, len(edges) - 1))
  field = cell
  if kind == "value":
    field = draw(st.sampled_from(DARTS_KEYS[1:]))
    obj[field] = draw(json_values)
  elif kind == "op":
    edges[i][0] = draw(st.text(max_size=14) | json_values)
  elif kind == "source":
    edges[i][1] = draw(st.integers(-3, 8) | json_values)
  elif kind == "pair":
    edges[i] = draw(json_values)
  elif kind == "drop":
    del edges[i]
  elif kind == "add":
    edges.append([draw(st.sampled_from(OPS)), draw(st.integers(0, 6))])
  elif kind == "concat":
    field = cell + "_concat"
    concat = obj[field]
    if draw(st.booleans()):
      concat.append(draw(st.integers(-2, 8)))
    else:
      concat[draw(st.integers(0, len(concat) - 1))] = draw(json_values)
  elif kind == "del_key":
    field = draw(st.sampled_from(DARTS_KEYS))
    del obj[field]
  elif kind == "add_key":
    field = draw(st.text(min_size=1, max_size=6))
    obj[field] = draw(json_values)
  elif kind == "space":
    field = "space"
    obj["space"] = draw(json_values)
  return obj, (None if kind == "none" else field)


def _mangle_text(draw, text):
  for _ in range(draw(st.integers(1, 3))):
    pos = draw(st.integers(0, len(text)))
    how = draw(st.sampled_from(["insert", "delete", "replace", "digit", "source"]))
    char = draw(st.sampled_from(list("|~+ 0123456789_x") + ["\u00b2", "\u0663", "\uff11", "|+|"])
                | st.characters())
    if how == "insert":
      text = text[:pos] + char + text[pos:]
    elif how == "delete":
      text = text[:pos] + text[pos + 1:]
    elif how == "replace":
      text = text[:pos] + char + text[pos + 1:]
    elif how == "digit":
      text = re.sub(r"~[0-9]+", lambda m: "~" + str(draw(st.integers(0, 12))), text, count=1)
    else:  # a source that only looks like a number
      src = draw(st.sampled_from(["\u00b2", "\u0663", "\uff11", "-1", "", "1.0", " 1", "01", "0x1"])
                 | st.text(max_size=3))
      text = re.sub(r"~[0-9]+", lambda m: "~" + src, text, count=1)
  return text


@SETTINGS
@hypothesis.given(st.data())
def test_mangled_darts_genotypes_load_or_name_the_field(data):
  obj, field = data.draw(mangled_darts())
  _check_genotype(obj, field)


@SETTINGS
@hypothesis.given(st.data())
def test_mangled_nb201_arch_strings_load_or_name_the_field(data):
  arch = data.draw(nb201_archs())
  if data.draw(st.booleans()):
    arch = _mangle_text(data.draw, arch)
  obj = {"space": "nb201", "arch": arch}
  _check_genotype(obj, "arch")
  # The same string as the CLI's --genotype takes it.
  try:
    g = genotypes.NB201Genotype.from_arch(arch, where="--genotype")
  except genotypes.GenotypeError as e:
    assert not _nb201_arch_ok(arch) and "--genotype" in str(e)
  else:
    assert _nb201_arch_ok(arch) and genotypes.NB201Genotype.from_arch(g.arch) == g


@pytest.mark.parametrize("src",
                         ["\u00b2", "\u0663", "\uff11", "-1", "", "1.0", " 1", "0x1", "1e0"])
def test_nb201_sources_that_only_look_like_numbers_are_rejected(src):
  arch = f"|nor_conv_3x3~0|+|skip_connect~{src}|avg_pool_3x3~0|"
  _check_genotype({"space": "nb201", "arch": arch}, "arch")
  with pytest.raises(genotypes.GenotypeError, match="node 2"):
    genotypes.NB201Genotype.from_arch(arch)


@SETTINGS
@hypothesis.given(json_values | st.dictionaries(st.sampled_from(DARTS_KEYS + ("arch",)),
                                                json_values, max_size=6))
def test_random_json_is_rejected_with_a_genotype_error(obj):
  _check_genotype(obj, None)


@SETTINGS
@hypothesis.given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_genotype_files_with_garbage_raise_genotype_errors(raw):
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "genotype.json")
    with open(path, "wb") as f:
      f.write(raw)
    try:
      obj = json.loads(raw)
    except (ValueError, RecursionError):
      obj = None
    if obj is not None and _expected_valid(obj):
      genotypes.load(path)
      return
    with pytest.raises(genotypes.GenotypeError, match=re.escape(path)):
      genotypes.load(path)


@pytest.mark.parametrize("content", [b"[" * 100000, b"\xff\xfe{", b"\"\\ud800\""])
def test_pathological_genotype_files_raise_genotype_errors(tmp_path, content):
  path = tmp_path / "g.json"
  path.write_bytes(content)
  with pytest.raises(genotypes.GenotypeError, match="g.json"):
    genotypes.load(str(path))


def test_unreadable_genotype_paths_raise_genotype_errors(tmp_path):
  with pytest.raises(genotypes.GenotypeError, match="not found"):
    genotypes.load(str(tmp_path / "missing.json"))
  (tmp_path / "dir.json").mkdir()
  with pytest.raises(genotypes.GenotypeError, match="dir.json"):
    genotypes.load(str(tmp_path / "dir.json"))


def test_published_genotypes_pass_the_independent_format_check():
  for name in published.names():
    _check_genotype(published.get(name).to_json(), None)


# --------------------------------------------------------------------------------------------
# Bad config values: a ConfigError naming the key, before any data is loaded.

NAN, INF = float("nan"), float("inf")
wrong_type = st.none() | st.text(max_size=4) | st.lists(st.integers(), max_size=2) | st.just({})
ints = lambda lo, hi: wrong_type | st.booleans() | st.floats(-3, 3) | st.integers(lo, hi)
positive_int = ints(-100, 0)              # bad values of a key that must be an int >= 1
natural = ints(-100, -1)                  # ... an int >= 0
reals = lambda *bad: wrong_type | st.booleans() | st.sampled_from([NAN, INF, -INF, *bad])
VALID_NAMES = ("darts", "nb201", "exact", "finite_difference", "auto", "float32", "bfloat16",
               "darts_cifar", "darts_imagenet", "fast_compile", "default",
               "fast_runtime", "paper", "optimizer", "gdas", "snas", "drnas",
               "spos") + data_lib.TFDS_NAMES
choice = lambda: wrong_type | st.integers(0, 3) | st.text(max_size=8).filter(
    lambda s: s not in VALID_NAMES)
flag = wrong_type | st.integers(0, 1) | st.floats(0, 1)

COMMON_BAD = {
    "seed": wrong_type | st.booleans() | st.floats(0, 3),
    "data.name": choice(),
    "data.path": st.none() | st.integers() | st.lists(st.text(), max_size=1),
    "data.batch_size": positive_int,
    "data.train_size": natural,
    "data.crop_padding": natural,
    "data.flip": flag,
    "model.space": choice(),
    "model.channels": positive_int,
    "log_every_steps": positive_int,
    "checkpoint_every_steps": positive_int,
    "checkpoint_keep": positive_int,
    "compilation_cache_dir": st.none() | st.integers() | st.lists(st.text(), max_size=1),
    "xla_cpu_preset": choice(),
    "xla_cpu_ynn_fusions": flag,
}
SEARCH_BAD = dict(COMMON_BAD, **{
    "data.train_portion": reals(0.0, 1.0, -0.5, 1.5),
    "model.op_set": choice(),
    "model.nodes": positive_int,
    "model.layers": ints(-100, 2),  # the DARTS space needs two reductions and a normal cell
    "model.scan_inputs": flag,
    "model.remat": flag,
    "model.pack": flag,
    "search.strategy": choice(),
    "search.darts.order": ints(3, 10) | st.integers(-10, 0),
    "search.darts.hessian": choice(),
    "search.darts.virtual_step": choice(),
    "search.epochs": positive_int,
    "search.learning_rate": reals(0.0, -0.1),
    "search.min_learning_rate": reals(-0.1),
    "search.momentum": reals(-0.1, 1.0, 2.0),
    "search.nesterov": flag,
    "search.weight_decay": reals(-1e-4),
    "search.grad_clip": reals(-1.0),
    "search.arch_learning_rate": reals(0.0, -1.0),
    "search.arch_weight_decay": reals(-1.0),
    "max_bad_steps": positive_int,
})
TRAIN_BAD = dict(COMMON_BAD, **{
    "data.eval_batch_size": positive_int,
    "data.test_size": natural,
    "data.cutout": natural,
    "model.layers": ints(-100, 2),
    "model.auxiliary": flag,
    "train.epochs": positive_int,
    "train.optimizer": choice(),
    "train.learning_rate": reals(0.0, -0.1),
    "train.min_learning_rate": reals(-0.1),
    "train.momentum": reals(-0.1, 1.0, 2.0),
    "train.weight_decay": reals(-1e-4),
    "train.grad_clip": reals(-1.0),
    "train.nesterov": flag,
    "train.aux_weight": reals(-0.4),
    "train.drop_path_prob": reals(-0.1, 1.0),
    "train.label_smoothing": reals(-0.1, 1.0),
    "train.compute_dtype": choice(),
    "eval_every_epochs": positive_int,
})


def _with(config, key, value):
  """``config`` with ``key`` set to ``value``, type checks off (as a hand-built config has)."""
  d = config.to_dict()
  node = d
  *path, leaf = key.split(".")
  for part in path:
    node = node[part]
  node[leaf] = value
  return ml_collections.ConfigDict(d, type_safe=False)


def _has(config, key):
  node = config
  for part in key.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


@SETTINGS
@hypothesis.given(st.data())
def test_bad_search_config_values_raise_config_errors_naming_the_key(data):
  base = _config(SEARCH_CONFIG, "smoke")
  key = data.draw(st.sampled_from(sorted(k for k in SEARCH_BAD if _has(base, k))))
  value = data.draw(SEARCH_BAD[key])
  c = _with(base, key, value)
  with pytest.raises(train_lib.ConfigError, match=re.escape(f"config.{key}:")):
    train_lib.validate_search_config(c)


@SETTINGS
@hypothesis.given(st.data())
def test_bad_train_config_values_raise_config_errors_naming_the_key(data):
  base = _config(TRAIN_CONFIG, "smoke")
  key = data.draw(st.sampled_from(sorted(k for k in TRAIN_BAD if _has(base, k))))
  value = data.draw(TRAIN_BAD[key])
  c = _with(base, key, value)
  with pytest.raises(train_lib.ConfigError, match=re.escape(f"config.{key}:")):
    train_lib.validate_train_config(c, published.get("DARTS_V2"))


@SETTINGS
@hypothesis.given(batch=st.integers(1, 512), layers=st.integers(3, 20),
                  order=st.sampled_from([1, 2]), lr=st.floats(1e-5, 1.0),
                  portion=st.floats(0.01, 0.99), space=st.booleans())
def test_good_search_config_values_pass(batch, layers, order, lr, portion, space):
  c = _config(SEARCH_CONFIG, "smoke")
  c.data.batch_size, c.model.layers, c.search.darts.order = batch, layers, order
  c.search.learning_rate, c.data.train_portion = lr, portion
  if space:
    c.model.space, c.model.op_set = "nb201", "nb201"
  train_lib.validate_search_config(c)


def test_every_shipped_config_variant_passes_validation():
  nb201 = genotypes.NB201Genotype.from_arch(
      "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
      "skip_connect~2|")
  checked = 0
  for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
    with pytest.raises(ValueError, match="valid:"):
      _config(path, "no such variant")
    for variant in train_lib.load_module(path).VARIANTS:
      c = _config(path, variant)
      if "explore" in c:   # a discrete search's settings (tests/test_explore.py)
        from dnas import blackbox  # pylint: disable=g-import-not-at-top
        blackbox.get(c.explore.strategy, **c.explore.options.to_dict())
      elif "search" in c:
        train_lib.validate_search_config(c)
      else:
        train_lib.validate_train_config(
            c, nb201 if c.model.space == "nb201" else published.get("DARTS_V2"))
      checked += 1
  assert checked >= 5


@pytest.mark.parametrize("args,needle", [
    (["search", "--config.search.darts.order=3"], "search.darts.order"),
    (["search", "--config.search.strategy=gdass"], "search.strategy"),
    (["search", "--config.search.epochs=-1"], "search.epochs"),
    (["search", "--config.model.layers=2"], "model.layers"),
    (["search", "--config.model.op_set=resnet"], "model.op_set"),
    (["search", "--config.data.name=imagenet9"], "data.name"),
    (["search", "--config.search.learning_rate=nan"], "search.learning_rate"),
    (["search", "--config.data.batch_size=1.5"], "data.batch_size"),
    (["train", "--config.train.epochs=0"], "train.epochs"),
    (["train", "--config.eval_every_epochs=0"], "eval_every_epochs"),
    (["train", "--config.train.drop_path_prob=1.0"], "train.drop_path_prob"),
    (["train", "--genotype", "|nor_conv_3x3~1|"], "--genotype"),
])
def test_cli_bad_values_exit_2_without_traceback(args, needle, capsys, monkeypatch, tmp_path):
  command, *rest = args
  config = SEARCH_CONFIG if command == "search" else TRAIN_CONFIG
  argv = ["dnas", command, "--config", f"{config}:smoke", "--workdir", str(tmp_path / "run")]
  if command == "train" and "--genotype" not in rest:
    argv += ["--genotype", "DARTS_V2"]
  argv += rest
  # As on a real command line, sys.argv holds the same words (main reads its argv argument).
  monkeypatch.setattr(sys, "argv", argv)
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2, err
  assert needle in err and "Traceback" not in err, err
  assert not (tmp_path / "run").exists()  # nothing written before the config is checked
