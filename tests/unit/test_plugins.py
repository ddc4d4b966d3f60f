"""Plugins: modules named in `plugins:` (or entry points of the group hpcfed.plugins) are imported before the
config is validated, so an out-of-tree algorithm and an out-of-tree PEFT method run without editing hpcfed.
Method names are checked against the registries (no hard-coded list)."""

from __future__ import annotations

import textwrap
import uuid

import pytest

import hpcfed
import hpcfed.config.load as config_load
from hpcfed.algorithms import ALGORITHMS
from hpcfed.compose import load_run_config
from hpcfed.config import ConfigError, import_plugins
from hpcfed.peft import METHODS

PLUGIN = '''
"""An out-of-tree algorithm and PEFT method."""
from dataclasses import dataclass

from hpcfed.algorithms import register as register_algorithm
from hpcfed.algorithms.fedavg import FedAvg
from hpcfed.peft import is_head, register as register_peft


@dataclass(frozen=True)
class Params:
    bonus: float = 1.0


@register_algorithm
class Counting(FedAvg):
    """FedAvg that reports a metric of its own each round."""

    name = "{algo}"
    Params = Params

    def after_round(self, loop, round_idx):
        return {{"plugin_metric": self.params.bonus * round_idx}}


@register_peft("{peft}")
def layernorm_only(model, cfg):
    """LayerNorm weights and the head."""
    return [n for n, _ in model.named_parameters() if is_head(n) or ("LayerNorm" in n and n.endswith("weight"))]
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fresh plugin module on sys.path: (module name, algorithm name, PEFT method name)."""
    tag = uuid.uuid4().hex[:8]
    mod, algo, peft = f"hpcfed_test_plugin_{tag}", f"counting_{tag}", f"lnonly_{tag}"
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent(PLUGIN.format(algo=algo, peft=peft)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield mod, algo, peft
    ALGORITHMS.pop(algo, None)
    METHODS.pop(peft, None)


def test_names_are_checked_against_the_registries(plugin):
    mod, algo, peft = plugin
    with pytest.raises(ConfigError, match=f"fl.algorithm='{algo}' is not one of"):
        load_run_config([f"fl.algorithm={algo}"])
    with pytest.raises(ConfigError, match=f"peft.method='{peft}' is not valid"):
        load_run_config([f"peft.method={peft}"])
    cfg = load_run_config([f"plugins=[{mod}]", f"fl.algorithm={algo}", f"peft.method={peft}", "fl.algo.bonus=2"])
    assert algo in ALGORITHMS and peft in METHODS and cfg.plugins == [mod]


def test_out_of_tree_algorithm_and_peft_method_run(plugin, toy_text, tmp_path):
    mod, algo, peft = plugin
    res = hpcfed.run(toy_text, overrides={"plugins": [mod], "fl.algorithm": algo, "peft.method": peft,
                                          "fl.algo": {"bonus": 0.5}, "out_dir": str(tmp_path), "fl.rounds": 1,
                                          "dist.num_threads": 1})
    assert res.history[0]["plugin_metric"] == 0.5
    import json

    info = json.loads((res.run_dir / "run_info.json").read_text())
    assert info["peft_method"] == peft
    assert "plugins:\n- " + mod in (res.run_dir / "config.yaml").read_text()  # a restore re-imports it


def test_plugin_import_error_is_one_line():
    with pytest.raises(ConfigError) as e:
        load_run_config(["plugins=[no_such_module_hpcfed_xyz]"])
    assert str(e.value).startswith("plugins: cannot import 'no_such_module_hpcfed_xyz'") and "\n" not in str(e.value)


def test_plugin_that_fails_while_importing_is_one_line(tmp_path, monkeypatch):
    mod = f"hpcfed_broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{mod}.py").write_text("undefined_name + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as e:
        load_run_config([f"plugins=[{mod}]"])
    assert str(e.value) == f"plugins: cannot import '{mod}' (NameError: name 'undefined_name' is not defined)"


def test_name_clash_is_refused(plugin):
    from hpcfed.peft import register

    with pytest.raises(ConfigError, match="peft method 'bias' .* is already registered"):
        register("bias")(lambda model, cfg: [])


def test_entry_point_group(tmp_path, monkeypatch):
    tag = uuid.uuid4().hex[:8]
    mod = f"hpcfed_ep_plugin_{tag}"
    (tmp_path / f"{mod}.py").write_text(
        "from hpcfed.peft import is_head, register\n"
        f"@register('ep_{tag}')\n"
        "def head_plus(model, cfg):\n"
        "    return [n for n, _ in model.named_parameters() if is_head(n)]\n")
    dist = tmp_path / f"hpcfed_ep_plugin_{tag}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: hpcfed-ep-plugin-{tag}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[hpcfed.plugins]\nmine = {mod}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(config_load, "_entry_points_imported", False)
    try:
        assert f"ep_{tag}" not in METHODS
        import_plugins()
        assert f"ep_{tag}" in METHODS
        assert load_run_config([f"peft.method=ep_{tag}"]).peft.method == f"ep_{tag}"
    finally:
        METHODS.pop(f"ep_{tag}", None)
