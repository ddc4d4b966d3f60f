"""Property test: whatever words a user types, the config loader returns a Config or raises ConfigError
with a one-line message — never another exception, never a traceback from deep inside."""

from hypothesis import given, settings
from hypothesis import strategies as st

from hpcfed.config import Config, ConfigError, load_config

KEYS = ["fl.rounds", "fl.cohort_size", "fl.local.lr", "fl.local.steps", "data.alpha", "data.partition",
        "data.num_clients", "data.num_shards", "peft.method", "fl.server_opt.name", "model.family",
        "eval.every_rounds", "dist.timeout_s", "seed", "name", "fl.nope", "data", "fl.local", "checkpoint.resume",
        "fl.inject_failure_rate", "peft.lora_rank", "model.dropout", "fl.local.bf16"]
VALUES = st.one_of(
    st.integers(-5, 50).map(str), st.floats(-2, 2).map(str), st.sampled_from(["nan", "inf", "-inf"]),
    st.sampled_from(["iid", "dirichlet", "lora", "bias", "adam", "true", "null", "[1,2]", "{a: 1}", "", "x y",
                     "${oops}", "${hpcfed_data_root:}", "'quoted'", "1e-3"]),
    st.text(max_size=8),
)
WORDS = st.lists(st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=4)


@settings(max_examples=150, deadline=None)
@given(WORDS)
def test_loader_never_crashes(words):
    try:
        cfg = load_config(words)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg
        return
    assert isinstance(cfg, Config)
    assert cfg.fl.cohort_size <= cfg.data.num_clients
    assert cfg.data.alpha > 0
