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


@dataclass(frozen=True)
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


def test_params_must_be_frozen_and_are_parsed_once(monkeypatch):
    """A method's Params are a frozen dataclass, parsed once per construction; the method gets them and the
    FL section, not the whole config."""
    import dataclasses

    @dataclass
    class Mutable:
        x: int = 1

    with pytest.raises(TypeError, match="frozen"):
        parse_params(Mutable, {}, "toy")
    from hpcfed.algorithms.fedyolo import FedYolo

    parsed = []
    real = FedYolo.parse_params.__func__
    monkeypatch.setattr(FedYolo, "parse_params", classmethod(lambda cls, v: parsed.append(v) or real(cls, v)))
    cfg = load_config(["fl.algorithm=fedyolo", "fl.algo.tasks=label", "peft.method=adapter"])
    algo = FedYolo.from_config(cfg)
    assert len(parsed) == 1 and algo.fl is cfg.fl and not hasattr(algo, "run_cfg")
    with pytest.raises(dataclasses.FrozenInstanceError):
        algo.params.tasks = "wordorder"


def test_fedprox_mu_is_its_own_parameter():
    """FedProx reads μ from fl.algo.mu (its Params); the old fl.prox_mu key says where it went."""
    from hpcfed.algorithms.fedprox import FedProx
    from hpcfed.peft import FlatParams

    algo = FedProx.from_config(load_config(["fl.algorithm=fedprox", "fl.algo.mu=0.5"]))
    assert algo.params.mu == 0.5
    model = torch.nn.Linear(3, 1)
    flat = FlatParams(model, ["weight", "bias"])
    theta_global = flat.data.clone()
    flat.data.add_(2.0)
    flat.zero_grad()
    algo.grad_hook(theta_global)(flat)
    torch.testing.assert_close(flat.grad, torch.full_like(flat.grad, 1.0))  # μ(θ − θg) = 0.5·2
    with pytest.raises(ConfigError, match="fl.algo.mu=-1.0 must be >= 0"):
        load_run_config(["fl.algorithm=fedprox", "fl.algo.mu=-1"])
    with pytest.raises(ConfigError, match="unknown key 'fl.prox_mu'; it moved to fl.algo.mu"):
        load_config(["fl.prox_mu=0.1"])
