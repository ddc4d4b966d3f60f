"""The algorithm registry and ``fl.algo`` hyperparameter parsing (hpcfed/fl/algorithm.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from hpcfed.config import ConfigError, load_config
from hpcfed.dist import LocalComm
from hpcfed.algorithms import ALGORITHMS, get_algorithm, register
from hpcfed.fl.algorithm import Algorithm, parse_params
from hpcfed.compose import build_loop, load_run_config


@dataclass
class _Params:
    temperature: float = 3.0
    rounds_between: int = 5
    name: str = "x"
    share: Optional[float] = None

    def __post_init__(self):
        if self.temperature <= 0:
            raise ConfigError(f"fl.algo.temperature={self.temperature} must be > 0")


def test_parse_params_defaults_and_coercion():
    p = parse_params(_Params, {"temperature": 2, "share": 0.5}, "toy")
    assert p == _Params(temperature=2.0, share=0.5) and isinstance(p.temperature, float)
    assert parse_params(_Params, {}, "toy") == _Params()
    assert parse_params(None, {}, "fedavg") is None


@pytest.mark.parametrize("values,needle", [
    ({"temprature": 1.0}, "unknown key 'temprature' for algorithm 'toy'; valid keys: temperature"),
    ({"rounds_between": "five"}, "fl.algo.rounds_between='five': expected int"),
    ({"rounds_between": True}, "expected int"),
    ({"temperature": -1.0}, "fl.algo.temperature=-1.0 must be > 0"),
])
def test_parse_params_errors_are_one_line(values, needle):
    with pytest.raises(ConfigError) as e:
        parse_params(_Params, values, "toy")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_algorithm_without_params_rejects_values():
    with pytest.raises(ConfigError, match="takes no parameters"):
        load_run_config(["fl.algo.mu=1"])


def test_unknown_algorithm_is_a_config_error():
    with pytest.raises(ConfigError, match="fl.algorithm='fedfoo' is not one of .*fedavg.*fedprox"):
        load_run_config(["fl.algorithm=fedfoo"])
    assert get_algorithm("fedprox").name == "fedprox"


class _Rt:
    device = torch.device("cpu")


def test_hooks_are_called_and_state_is_checkpointed(toy_text):
    """A registered algorithm's hooks run in order, its extra metrics reach the round's metrics and its state
    tensors travel through the loop's checkpoint state."""

    calls = []

    @register
    class Probe(Algorithm):
        name = "_probe"

        def setup(self, loop):
            calls.append("setup")
            self.counter = torch.zeros(1)

        def on_round_start(self, loop, r):
            calls.append(f"start{r}")

        def after_round(self, loop, r):
            calls.append(f"after{r}")
            self.counter += 1
            return {"probe": float(self.counter)}

        def evaluate(self, loop):
            return {**loop.evaluate_test(), "probe_eval": 1.0}

        def state_tensors(self):
            return {"counter": self.counter}

        def load_state(self, tensors):
            self.counter = tensors["counter"].clone()

    try:
        cfg = load_config([*toy_text, "fl.algorithm=_probe"])
        loop, _ = build_loop(cfg, _Rt(), LocalComm())
        m = loop.run_round(1)
        assert m["probe"] == 1.0
        ev = loop.evaluate_global()
        assert ev["probe_eval"] == 1.0 and 0.0 <= ev["test_acc"] <= 1.0
        assert calls == ["setup", "start1", "after1"]
        st = loop.state_tensors()
        assert torch.equal(st["algo.counter"], torch.ones(1))
        loop2, _ = build_loop(cfg, _Rt(), LocalComm())
        loop2.load_state(st, 1, [m])
        assert torch.equal(loop2.algorithm.counter, torch.ones(1))
    finally:
        ALGORITHMS.pop("_probe", None)
