"""``dnas explore``: many discrete searches on the NAS-Bench-201 table, and what they report."""

import json
import os

import jax
import numpy as np
import pytest

from dnas import benchmarks, blackbox, cli, explore, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_DIR = os.environ.get(benchmarks.ENV_VAR, os.path.join(REPO, "..", "shared", "nasbench"))
CONFIG = os.path.join(REPO, "experiments", "explore_nb201.py")
# The searches compile a scan each; these tests run a few queries, so compile time dominates.
pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def table():
  return benchmarks.load_nb201(NB201_DIR)


def test_exhaustive_search_returns_the_tables_argmax_with_and_without_a_constraint(table):
  valid = table.column("cifar10_valid")
  r = explore.explore("exhaustive", table, metric="cifar10_valid", budget=len(table), runs=1)
  best = int(np.argmax(valid))
  assert r["runs"][0]["arch"] == table.archs[best]
  assert r["runs"][0]["cifar10_valid"] == valid[best]
  assert r["runs"][0]["cifar10_test"] == table.column("cifar10_test")[best]
  # Cut the budget at the query that found it: the last query counts too.
  found = r["runs"][0]["found_at"]
  again = explore.explore("exhaustive", table, metric="cifar10_valid", budget=found, runs=1)
  assert again["runs"][0]["arch"] == table.archs[best] and again["runs"][0]["found_at"] == found
  # Under a latency bound, the best cell among those that meet it.
  lat = table.column("pixel3_ms")
  bound = float(np.median(lat))
  r = explore.explore("exhaustive", table, metric="cifar10_valid", budget=len(table), runs=1,
                      constraints=[f"pixel3_ms<={bound}"])
  ok = lat <= bound
  best_ok = int(np.flatnonzero(ok)[np.argmax(valid[ok])])
  assert r["runs"][0]["arch"] == table.archs[best_ok] and r["runs"][0]["pixel3_ms"] <= bound
  assert best_ok != best   # the bound binds


def test_each_run_reports_the_best_cell_it_queried_and_the_stats_over_runs(table, tmp_path):
  r = explore.explore("regularized_evolution", table, metric="cifar10_valid", budget=30,
                      runs=5, seed=3, options={"population_size": 10, "sample_size": 3},
                      workdir=str(tmp_path))
  # The same searches, run directly: each pick is the best queried by the searched metric.
  space = blackbox.nb201_space(table)
  strategy = blackbox.get("regularized_evolution", population_size=10, sample_size=3)
  hist = blackbox.run_on_table(strategy, space, table.column("cifar10_valid"), 30,
                               jax.random.split(jax.random.key(3), 5))
  rows = np.asarray(space.table_index(hist.codes))          # [runs, budget]
  for run, rec in enumerate(r["runs"]):
    queried = table.column("cifar10_valid")[rows[run]]
    assert rec["cifar10_valid"] == queried.max()
    assert rec["arch"] == table.archs[rows[run][np.argmax(queried)]]
    assert rec["found_at"] == int(np.argmax(queried)) + 1
  for column in ("cifar10_valid", "cifar10_test", "pixel3_ms"):
    picks = np.array([rec[column] for rec in r["runs"]])
    assert r["mean"][column] == pytest.approx(picks.mean())
    assert r["std"][column] == pytest.approx(picks.std())
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["runs"] == r["runs"]
  curve = json.loads((tmp_path / "anytime.json").read_text())
  best = np.maximum.accumulate(table.column("cifar10_valid")[rows], axis=1)
  np.testing.assert_allclose(curve["mean"], best.mean(0), rtol=1e-6)
  np.testing.assert_allclose(curve["p10"], np.percentile(best, 10, axis=0), rtol=1e-6)
  assert np.all(np.diff(curve["mean"]) >= 0) and curve["queries"] == list(range(1, 31))
  assert (tmp_path / "anytime.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_arguments_name_what_is_wrong(table):
  kw = dict(metric="cifar10_valid", budget=5, runs=2)
  with pytest.raises(explore.ExploreError, match="--metric 'accuracy'.*cifar10_test"):
    explore.explore("random_search", table, **dict(kw, metric="accuracy"))
  with pytest.raises(explore.ExploreError, match="--budget must be a positive integer"):
    explore.explore("random_search", table, **dict(kw, budget=0))
  with pytest.raises(explore.ExploreError, match="--strategy 'nope'.*regularized_evolution"):
    explore.explore("nope", table, **kw)
  with pytest.raises(explore.ExploreError, match="population_size"):
    explore.explore("regularized_evolution", table, options={"population_size": 0}, **kw)
  with pytest.raises(explore.ExploreError, match="--constraint .pixel3_ms=<5.: expected"):
    explore.explore("random_search", table, constraints=["pixel3_ms=<5"], **kw)
  with pytest.raises(explore.ExploreError,
                     match="--constraint 'pixel9_ms<=5': unknown column .*pixel3_ms"):
    explore.explore("random_search", table, constraints=["pixel9_ms<=5"], **kw)
  with pytest.raises(explore.ExploreError, match="no architecture .* satisfies pixel3_ms<=0"):
    explore.explore("random_search", table, constraints=["pixel3_ms<=0"], **kw)


def test_the_command_prints_one_json_line_and_takes_the_configs(capsys):
  code = cli.run(["dnas", "explore", "--config", f"{CONFIG}:rea", "--benchmark", NB201_DIR,
                  "--runs", "3", "--budget", "20", "--json"])
  assert code == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert r["strategy"] == "regularized_evolution" and r["budget"] == 20 and len(r["runs"]) == 3
  assert r["options"] == {"population_size": 10, "sample_size": 3}
  assert set(r["mean"]) >= {"cifar10_valid", "cifar10_test", "pixel3_ms"}
  code = cli.run(["dnas", "explore", "--strategy", "regularized_evolution", "--benchmark",
                  NB201_DIR, "--runs", "2", "--budget", "12", "--option", "population_size=4",
                  "--constraint", "pixel3_ms<=6", "--json"])
  r = json.loads(capsys.readouterr().out)
  assert r["options"] == {"population_size": 4} and r["constraints"] == ["pixel3_ms<=6"]
  assert all(run["pixel3_ms"] <= 6 for run in r["runs"])
  assert r["no_repeat"] is False
  code = cli.run(["dnas", "explore", "--config", f"{CONFIG}:local_search", "--benchmark",
                  NB201_DIR, "--runs", "2", "--budget", "12", "--no_repeat", "--json"])
  assert code == 0 and json.loads(capsys.readouterr().out)["no_repeat"] is True
  with pytest.raises(cli.UsageError, match="--option 'population_size'.*KEY=VALUE"):
    cli.run(["dnas", "explore", "--strategy", "random_search", "--benchmark", NB201_DIR,
             "--option", "population_size"])
  with pytest.raises(cli.UsageError, match="--benchmark '/no/such'"):
    cli.run(["dnas", "explore", "--strategy", "random_search", "--benchmark", "/no/such"])
  with pytest.raises(cli.UsageError, match="explore needs --strategy"):
    cli.run(["dnas", "explore", "--benchmark", NB201_DIR])


def test_explore_configs_name_registered_strategies():
  module = train_lib.load_module(CONFIG)
  for variant in module.VARIANTS:
    c = train_lib.load_config(CONFIG, variant)
    blackbox.get(c.explore.strategy, **c.explore.options.to_dict())
  rea = train_lib.load_config(CONFIG, "rea").explore
  # scripts-search/algos/R-EA.sh: --ea_population 10 --ea_sample_size 3.
  assert rea.options.to_dict() == {"population_size": 10, "sample_size": 3}
  assert rea.metric == "cifar10_valid" and rea.budget == 100 and rea.runs == 100


def _front_by_hand(points):
  """Indices of ``points`` ([N, 2], both maximised) that no other point dominates."""
  keep = []
  for i, p in enumerate(points):
    if not any(np.all(q >= p) and np.any(q > p) for q in points):
      keep.append(i)
  return keep


def test_objectives_give_each_run_its_pareto_front_and_hypervolume(table, tmp_path):
  r = explore.explore("nsga2", table, metric="cifar10_valid", budget=40, runs=3, seed=1,
                      objectives=["latency:pixel3_ms"], constraints=["pixel3_ms<=9"],
                      workdir=str(tmp_path))
  assert r["objectives"] == [{"column": "pixel3_ms", "maximize": False, "label": "latency"}]
  assert r["options"]["num_objectives"] == 2
  # The same searches, run directly.
  from dnas.blackbox import multiobjective  # pylint: disable=g-import-not-at-top
  space = blackbox.nb201_space(table)
  valid, lat = table.column("cifar10_valid"), table.column("pixel3_ms")
  signed = np.stack([valid, -lat], -1)
  feasible = lat <= 9
  hist = multiobjective.run_multi_on_table(
      blackbox.get("nsga2", num_objectives=2), space, signed, 40,
      jax.random.split(jax.random.key(1), 3), feasible)
  rows = np.asarray(space.table_index(hist.codes))
  hvs = []
  for run, rec in enumerate(r["runs"]):
    ok_rows = sorted({int(x) for x in rows[run] if feasible[x]})
    pts = signed[ok_rows]
    front = [ok_rows[i] for i in _front_by_hand(pts)]
    assert rec["front"] == sorted(table.archs[x] for x in front)
    best = max(ok_rows, key=lambda x: valid[x])
    assert rec["cifar10_valid"] == valid[best] and rec["pixel3_ms"] <= 9
    # Hypervolume by hand: the area the front dominates above the worst feasible point.
    ref = signed[feasible].min(0)
    f = sorted((tuple(signed[x]) for x in front), reverse=True)   # metric falling
    area, top = 0.0, ref[1]
    for a, b in f:
      if b > top:
        area += (a - ref[0]) * (b - top)
        top = b
    assert rec["hypervolume"] == pytest.approx(area, rel=1e-5)
    hvs.append(area)
  assert r["mean"]["hypervolume"] == pytest.approx(np.mean(hvs), rel=1e-5)
  assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_objective_parsing_and_single_objective_strategies(table):
  cols = table.column_names
  assert explore.parse_objective("pixel3_ms", cols) == ("pixel3_ms", False, "pixel3_ms")
  assert explore.parse_objective("max:pixel3_ms", cols).maximize
  assert explore.parse_objective("min:cifar10_test", cols) == ("cifar10_test", False,
                                                                "cifar10_test")
  assert explore.parse_objective("acc:cifar10_test", cols) == ("cifar10_test", True, "acc")
  with pytest.raises(explore.ExploreError, match="--objective 'lat:pixel9_ms'.*pixel3_ms"):
    explore.parse_objective("lat:pixel9_ms", cols)
  with pytest.raises(explore.ExploreError, match="searches one objective.*nsga2"):
    explore.explore("regularized_evolution", table, metric="cifar10_valid", budget=5, runs=1,
                    objectives=["pixel3_ms"])


def test_random_search_without_replacement_visits_every_cell_once(table):
  valid = table.column("cifar10_valid")
  r = explore.explore("random_search", table, metric="cifar10_valid", budget=len(table),
                      runs=2, options={"unique": True})
  assert all(run["arch"] == table.archs[int(np.argmax(valid))] for run in r["runs"])
  space = blackbox.nb201_space(table)
  hist = blackbox.run_on_table(blackbox.get("random_search", unique=True), space, valid, 300,
                               jax.random.split(jax.random.key(0), 2))
  rows = np.asarray(space.table_index(hist.codes))
  assert all(len(set(r.tolist())) == 300 for r in rows)        # no cell twice
  assert not np.array_equal(rows[0], rows[1])                  # each run its own order
