"""User code from config: imports, registries, and traces never reused for changed code."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dnas import cli, plugins, train_lib
from dnas.ops import sets
from dnas.spaces import registry as space_registry
from dnas.strategies import registry as strategy_registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A user's module: an op and a strategy, registered on import. MARKER is what the strategy logs.
USER_MODULE = textwrap.dedent('''
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from dnas.ops import registry as ops
    from dnas.strategies import darts, registry

    MARKER = 1.0


    class ScaledSkip(nn.Module):
      stride: int

      @nn.compact
      def __call__(self, x, train):
        scale = self.param("scale", nn.initializers.ones, ())
        if self.stride == 2:
          x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return x * scale


    @ops.register("scaled_skip")
    def scaled_skip(channels, stride):
      return ScaledSkip(stride)


    @registry.register("favour", defaults={"op": 2})
    def build(options, context):
      base = darts(order=1)

      def derive_weights(arch, state):  # the genotype takes op `options["op"]` on every edge
        return {k: jax.nn.one_hot(jnp.full(a.shape[:-1], options["op"]), a.shape[-1])
                for k, a in arch.items()}

      def metrics(arch, state):
        return {"marker": jnp.float32(MARKER)}

      return base._replace(derive_weights=derive_weights, metrics=metrics)
''')

USER_CONFIG = textwrap.dedent('''
    from dnas import train_lib

    def get_config(variant="smoke"):
      c = train_lib.load_config({nb201!r}, "smoke")
      c.imports = ("user_ops.py",)   # next to this file
      c.model.ops = ("none", "skip_connect", "scaled_skip", "nor_conv_1x1")
      c.search.strategy = "favour"
      c.search.favour = {{"op": 2}}
      c.data.train_size = 64
      c.search.epochs = 1
      return c
''').format(nb201=os.path.join(REPO, "experiments", "nb201_darts_cifar10.py"))


def _cli(*args, cwd):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.run([sys.executable, "-m", "dnas.cli", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)


def _markers(run):
  with open(os.path.join(run, "metrics.jsonl")) as f:
    return {json.loads(line).get("marker") for line in f if '"marker"' in line}


def test_a_users_op_and_strategy_run_end_to_end_in_fresh_processes(tmp_path, cifar10_archive,
                                                                     caches):
  user = tmp_path / "user"
  user.mkdir()
  (user / "user_ops.py").write_text(USER_MODULE)
  (user / "my_config.py").write_text(USER_CONFIG)
  elsewhere = tmp_path / "cwd"  # the config's imports resolve from its own folder
  elsewhere.mkdir()
  common = [f"--config.data.path={cifar10_archive}",
            f"--config.data.cache_dir={caches / 'data'}",
            f"--config.compilation_cache_dir={tmp_path / 'jax'}"]
  run = tmp_path / "run"
  r = _cli("search", "--config", str(user / "my_config.py"), "--workdir", str(run), *common,
           cwd=elsewhere)
  assert r.returncode == 0, r.stderr[-3000:]
  genotype = json.loads((run / "genotype.json").read_text())
  assert genotype["arch"].count("scaled_skip") == 6, genotype
  recorded = json.loads((run / "config.json").read_text())["imports"]
  assert recorded == [str(user / "user_ops.py")]
  assert _markers(run) == {1.0}

  r = _cli("plot", "--workdir", str(run), cwd=elsewhere)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (run / "plots" / "genotype.png").exists()

  train = tmp_path / "train"
  r = _cli("train", "--config", os.path.join(REPO, "experiments", "train_cifar10.py:nb201"),
           "--genotype", str(run / "genotype.json"), "--workdir", str(train),
           "--config.model.channels=4", "--config.model.layers=1", "--config.train.epochs=1",
           "--config.data.batch_size=32", "--config.data.train_size=64",
           "--config.data.test_size=64", *common, cwd=elsewhere)
  assert r.returncode == 0, r.stderr[-3000:]
  assert json.loads((train / "final_metrics.json").read_text())["step"] == 2

  # The same config after the user edits the strategy: the saved trace is not reused.
  (user / "user_ops.py").write_text(USER_MODULE.replace("MARKER = 1.0", "MARKER = 2.0"))
  again = tmp_path / "again"
  r = _cli("search", "--config", str(user / "my_config.py"), "--workdir", str(again), *common,
           cwd=elsewhere)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "(saved trace)" not in r.stdout
  assert _markers(again) == {2.0}


def test_a_genotype_with_an_op_registered_nowhere_names_the_op_and_the_imports(tmp_path, capsys):
  run = tmp_path / "run"
  run.mkdir()
  arch = "|my_conv~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|"
  (run / "genotype.json").write_text(json.dumps({"space": "nb201", "arch": arch}))
  argv = ["dnas", "train", "--config", os.path.join(REPO, "experiments", "train_cifar10.py:nb201"),
          "--genotype", str(run / "genotype.json"), "--workdir", str(tmp_path / "t")]
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "unknown op 'my_conv'" in err and "config.json says which modules" in err, err
  (run / "config.json").write_text(json.dumps({"imports": [str(tmp_path / "gone.py")]}))
  with pytest.raises(SystemExit):
    cli.main(argv)
  err = capsys.readouterr().err
  assert "gone.py" in err and "file not found" in err, err
  (tmp_path / "gone.py").write_text("X = 1\n")  # imports fine, registers nothing
  with pytest.raises(SystemExit):
    cli.main(argv)
  err = capsys.readouterr().err
  assert "unknown op 'my_conv'" in err and "imported [" in err and "gone.py" in err, err


def test_imports_fail_naming_the_entry(tmp_path):
  with pytest.raises(plugins.PluginError, match=r"config.imports\[1\]: file not found: nope.py"):
    plugins.load(["json", "nope.py"])
  with pytest.raises(plugins.PluginError, match=r"config.imports\[0\]: cannot import "
                     r"'no_such_module_x'"):
    plugins.load(["no_such_module_x"])
  (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
  with pytest.raises(plugins.PluginError, match=r"importing .*broken.py.* RuntimeError: boom"):
    plugins.load([str(tmp_path / "broken.py")])
  with pytest.raises(plugins.PluginError, match=r"config.imports\[0\]: must be a module name"):
    plugins.load([3])


def test_the_trace_key_follows_the_source_of_plugins(tmp_path):
  c = train_lib.load_config(os.path.join(REPO, "experiments", "nb201_darts_cifar10.py"), "smoke")
  before = train_lib.trace_key(c)
  path = tmp_path / "trace_key_ops.py"
  path.write_text("from dnas.ops import sets\n"
                  "sets.register(sets.OpSet('trace_key_set', ('none', 'skip_connect')))\n")
  try:
    plugins.load([str(path)])
    loaded = train_lib.trace_key(c)
    assert loaded != before  # a plug-in is part of the key
    path.write_text(path.read_text() + "# edited\n")
    assert train_lib.trace_key(c) != loaded  # and so is its source
  finally:
    sets.unregister("trace_key_set")


def test_registries_fail_loudly_listing_names():
  with pytest.raises(KeyError, match="unknown strategy 'gdass'; registered strategies: .*darts"):
    strategy_registry.get("gdass")
  with pytest.raises(KeyError, match="unknown space 'resnet'; registered spaces: darts, nb201"):
    space_registry.get("resnet")
  with pytest.raises(KeyError, match="unknown op set 'x'; registered op sets: darts, nb201"):
    sets.get("x")
  with pytest.raises(ValueError, match="already registered"):
    strategy_registry.register("darts")(lambda options, context: None)
  with pytest.raises(ValueError, match="already registered"):
    space_registry.register("nb201")(lambda *a: None)
  with pytest.raises(ValueError, match="already registered"):
    sets.register(sets.OpSet("darts", ("none",)))
  with pytest.raises(ValueError, match=r"config.search.darts.ordr: strategy 'darts' takes no "
                     r"option 'ordr'"):
    strategy_registry.resolve_options("darts", {"ordr": 2})
  with pytest.raises(ValueError, match=r"config.search.darts.order: must be a int"):
    strategy_registry.resolve_options("darts", {"order": 1.5})


def test_a_config_names_its_ops_directly():
  c = train_lib.load_config(os.path.join(REPO, "experiments", "nb201_darts_cifar10.py"), "smoke")
  c.model.ops = ("none", "skip_connect", "nor_conv_3x3")
  train_lib.validate_search_config(c)
  model = train_lib.build_search_model(c, 10)
  assert model.op_set.ops == ("none", "skip_connect", "nor_conv_3x3")
  assert model.arch_shapes() == {"cell": (6, 3)}
  c.model.ops = ("none", "nor_conv_9x9")
  with pytest.raises(train_lib.ConfigError, match="config.model.ops: unknown op 'nor_conv_9x9'"):
    train_lib.validate_search_config(c)


def test_a_users_space_is_built_by_name():
  from dnas.spaces.nb201 import NB201SearchNet  # pylint: disable=g-import-not-at-top

  @space_registry.register("tiny201")
  def build(model_config, op_set, num_classes):
    return NB201SearchNet(num_classes=num_classes, channels=model_config.channels,
                          cells_per_stage=1, op_set=op_set)

  try:
    c = train_lib.load_config(os.path.join(REPO, "experiments", "nb201_darts_cifar10.py"),
                              "smoke")
    c.model.space = "tiny201"
    train_lib.validate_search_config(c)
    model = train_lib.build_search_model(c, 10)
    assert isinstance(model, NB201SearchNet) and model.cells_per_stage == 1
  finally:
    space_registry.unregister("tiny201")
