"""Config loading: YAML + dotlist merge, and one-line errors naming the key."""

import subprocess
import sys

import pytest

from hpcfed.compose import load_run_config
from hpcfed.config import Config, ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: abc\nfl:\n  rounds: 7\n  local:\n    lr: 0.5\n")
    cfg = load_config([f"config={y}", "fl.rounds=9", "peft.method=lora"])
    assert isinstance(cfg, Config)
    assert cfg.name == "abc" and cfg.fl.rounds == 9 and cfg.fl.local.lr == 0.5 and cfg.peft.method == "lora"
    assert cfg.data.source.endswith("sst2/train.tsv")
    assert "${" not in cfg.to_yaml()  # saved config is fully resolved


def test_all_shipped_configs_load():
    from pathlib import Path

    files = sorted(f for f in Path(__file__).resolve().parents[2].glob("configs/**/*.yaml")
                   if f.parent.name != "study")  # study files are checked by test_study.py
    assert files
    for f in files:
        load_config([f"config={f}"])


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fl.foo=1"], "unknown key 'fl.foo'"),
        (["fl.rounds=abc"], "'fl.rounds'"),
        (["data.partition=zipf"], "data.partition='zipf' is not valid; choose one of: iid, dirichlet"),
        (["peft.method=prefix"], "peft.method='prefix' is not valid; choose one of: head, bias, full, lora, peft, adapter"),
        (["data.alpha=0"], "data.alpha=0.0 must be > 0"),
        (["data.alpha=-1"], "data.alpha=-1.0 must be > 0"),
        (["fl.cohort_size=21"], "fl.cohort_size=21 is larger than data.num_clients=20"),
        (["fl.server_opt.name=sgd"], "fl.server_opt.name='sgd' is not valid"),
        (["rounds"], "not key=value"),
        (["config=/nonexistent.yaml"], "/nonexistent.yaml: not found"),
    ],
)
def test_bad_input_one_line(argv, needle):
    with pytest.raises(ConfigError) as ei:
        load_run_config(argv)  # the loader of every entry point: the schema, then the registries' names
    msg = str(ei.value)
    assert needle in msg
    assert "\n" not in msg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys here: .*cohort_size"):
        load_config(["fl.cohortsize=3"])


def test_bad_yaml_names_file(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("fl: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config([f"config={y}"])
    y.write_text("fl:\n  roundz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'fl.roundz'"):
        load_config([f"config={y}"])


def test_cli_exits_nonzero_with_one_line():
    r = subprocess.run([sys.executable, "-m", "hpcfed.main", "data.partition=zipf"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: data.partition='zipf' is not valid")
    assert "Traceback" not in r.stderr


def test_cached_default_schema_is_never_resolved_in_place():
    from omegaconf import OmegaConf

    # load_config builds OmegaConf.structured(Config) once per process; resolving a config must not resolve the
    # cached schema's interpolations (model.path: ${minilm_path:}), or a later load would keep the first value
    from hpcfed.config import load as load_mod

    load_mod.register_resolvers()
    first = load_config()
    assert load_mod._default_schema()._get_node("model")._get_node("path")._value() == "${minilm_path:}"
    OmegaConf.register_new_resolver("minilm_path", lambda: "/elsewhere/minilm", replace=True)
    try:
        assert load_config().model.path == "/elsewhere/minilm" != first.model.path
        assert load_config(["fl.rounds=2"]).model.path == "/elsewhere/minilm"
    finally:
        OmegaConf.clear_resolver("minilm_path")
        load_mod.register_resolvers()


def test_shared_prefix_loader_equals_load_config(tmp_path):
    from hpcfed.config import SharedPrefixLoader

    base = tmp_path / "base.yaml"
    base.write_text("name: base\nfl:\n  rounds: 7\n  local:\n    lr: 0.5\n")
    other = tmp_path / "other.yaml"
    other.write_text("fl:\n  rounds: 11\n")
    prefix = [f"config={base}", "progress=false", "peft.method=lora"]
    loader = SharedPrefixLoader(prefix)
    for words in ([], ["fl.rounds=9"], ["fl.local.lr=0.1", "peft.method=bias", "name=x"],
                  [f"config={other}", "fl.local.lr=0.2"],  # a config= word goes before every key=value word
                  ["fl.rounds=3"]):
        got, want = loader.load(words), load_config([*prefix, *words])
        assert got == want, words
    # the merged prefix is copied, never changed: a later load does not see an earlier one's words
    assert loader.load([]).fl.rounds == 7 and loader.load([]).peft.method == "lora"
    assert loader.load([f"config={other}"]).fl.rounds == 11


@pytest.mark.parametrize("prefix, words", [
    (["progress=false"], ["fl.foo=1"]),
    (["progress=false"], ["fl.rounds=abc"]),
    (["fl.roundz=2"], ["fl.rounds=3"]),  # the error is in the shared words
    (["progress=false"], ["config=/nonexistent.yaml"]),
])
def test_shared_prefix_loader_errors_match_load_config(prefix, words):
    from hpcfed.config import SharedPrefixLoader

    with pytest.raises(ConfigError) as want:
        load_config([*prefix, *words])
    loader = SharedPrefixLoader(prefix)
    with pytest.raises(ConfigError) as got:
        loader.load(words)
    assert str(got.value) == str(want.value) and "\n" not in str(got.value)
    if "fl.roundz=2" not in prefix:
        assert loader.load(["fl.rounds=4"]).fl.rounds == 4  # a bad cell does not spoil the loader


def test_first_line_quotes_one_line_of_the_cause():
    """Every one-line error quotes its cause through config.first_line: the message's first line, else the type."""
    from hpcfed.config import first_line
    from hpcfed.dist.comm import _describe

    assert first_line(ValueError("  bad value\n  at line 3\n")) == "bad value"
    assert first_line(KeyError()) == "KeyError"
    assert _describe(OSError("disk full\ntraceback...")) == "OSError: disk full"
    assert _describe(RuntimeError()) == "RuntimeError"
