"""Every strategy's NAS-Bench-201 config runs a real (tiny) search end to end on CIFAR-10."""

import json
import os

import numpy as np
import pytest

from dnas import genotypes, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = ("gdas", "snas", "drnas", "spos", "betadarts", "fairdarts", "dartsminus", "sdarts_rs",
              "sdarts_adv", "dartspt", "pcdarts", "idarts")


def _lines(work):
  return [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", STRATEGIES)
def test_smoke_search(name, cifar10_archive, tmp_path, caches, fast_compile):
  path = os.path.join(REPO, "experiments", f"nb201_{name}_cifar10.py")
  c = train_lib.load_config(path, "smoke")
  c.update_from_flattened_dict({
      "data.path": cifar10_archive, "data.cache_dir": str(caches / "data"),
      "compilation_cache_dir": str(caches / "jax"), "data.train_size": 64,
      "log_every_steps": 1})
  assert c.search.strategy == ("darts" if name in ("dartspt", "idarts") else name)
  work = tmp_path / name
  result = train_lib.run_search(c, str(work))
  spe = 2  # 32 weight-training images at batch 16
  assert result["step"] == c.search.epochs * spe
  g = genotypes.load(str(work / "genotype.json"))
  assert isinstance(g, genotypes.NB201Genotype) and g.to_json() == result["genotype"]
  lines = _lines(work)
  steps = [l for l in lines if "split" not in l]
  assert [l["step"] for l in steps] == list(range(1, result["step"] + 1))
  assert all(np.isfinite(l["train_loss"]) and l["skipped_steps"] == 0 for l in steps)
  vals = [l for l in lines if l.get("split") == "val"]
  assert [l["epoch"] for l in vals] == list(range(c.search.epochs))
  assert all(0.0 <= l["val_acc"] <= 1.0 for l in vals)
  if name in ("gdas", "snas"):  # the temperature, set once per epoch, logged with the step
    opts = train_lib.strategy_options(c)
    taus = [l["tau"] for l in steps]
    assert taus[0] == pytest.approx(opts["tau_max"])
    assert taus[spe - 1] == taus[0] and taus[spe] < taus[0]
  if name == "dartspt":  # DARTS-PT's selection: every edge decided, the kept op the genotype's
    pt = json.loads((work / "perturbation.json").read_text())
    assert sorted(r["edge"] for r in pt["records"]) == list(range(6))
    assert pt["tune_steps_between"] == c.search.perturbation.tune_epochs * spe
    kept = {r["edge"]: r["kept"] for r in pt["records"]}
    names = [op for node in g.nodes for op, _ in node]
    np.testing.assert_array_equal(result["op_weights"]["cell"].argmax(-1),
                                  [kept[e] for e in range(6)])
    assert len(names) == 6
  if name == "drnas":
    assert all(np.isfinite(l["anchor_kl"]) for l in steps)
  if name == "spos":  # weights only; the genotype is the best path scored after training
    assert "val_batch_acc" not in steps[0] and "arch_grad_norm" not in steps[0]
    assert all(l["genotype"] is None for l in vals)
    sel = json.loads((work / "selection.json").read_text())
    assert sel["selection"] == c.search.spos.selection
    assert sel["scored"] == len(sel["records"]) >= 1
    best = sel["records"][0]
    assert best["score"] == max(r["score"] for r in sel["records"]) == result["select_score"]
    ops = c.model.ops or None
    from dnas.ops import sets  # pylint: disable=g-import-not-at-top
    names = tuple(ops) if ops else sets.get(c.model.op_set).ops
    assert [op for node in g.nodes for op, _ in node] == [names[i] for i in best["path"]["cell"]]
  else:
    assert all(l["genotype"] for l in vals)
    if name != "dartspt":  # DARTS-PT's genotype is selected after the last epoch's argmax
      assert vals[-1]["genotype"] == g.to_json()
    assert all(np.isfinite(l["arch_grad_norm"]) for l in steps)
