"""peft.method=peft: any Hugging Face peft config from `peft.config` (IA3, DoRA, LoHa here) on a tiny random
BERT: its trainable parameters are the flat buffer's, a local step changes them and nothing frozen, and a tiny
federated round runs and exports peft's files."""

from __future__ import annotations

import pytest
import torch

import hpcfed
from hpcfed.config import ConfigError, load_config
from hpcfed.fl.client import LocalTrainer
from hpcfed.models import build_model
from hpcfed.peft import apply_peft, frozen_state
from tests.conftest import tiny_model_args, toy_client_data

CASES = {
    "ia3": ({"peft_type": "IA3", "target_modules": ["key", "value", "output.dense"],
             "feedforward_modules": ["output.dense"]}, "ia3_l"),
    "dora": ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": ["query", "value"]},
             "lora_magnitude_vector"),
    "loha": ({"peft_type": "LOHA", "r": 4, "target_modules": ["query", "value"]}, "hada_w1_a"),
}


def _setup(spec, *extra):
    cfg = load_config(tiny_model_args("hf_text") + ["peft.method=peft", "fl.local.steps=2", "fl.local.lr=1e-2",
                                                    "fl.local.batch_size=16", "model.dropout=0.0", *extra],
                      overrides={"peft.config": spec})
    torch.manual_seed(0)
    model = build_model(cfg.model, 2)
    return cfg, model, apply_peft(model, cfg.peft)


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainable_params_in_flat_buffer_and_trained(case):
    spec, marker = CASES[case]
    cfg, model, flat = _setup(spec)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(flat.names) == trainable  # everything peft trains, and only that, is on the buffer
    assert any(marker in n for n in flat.names) and {"head.weight", "head.bias"} <= trainable
    assert all(n.startswith("head.") or n.startswith("backbone.") for n in flat.names)
    frozen_before = {n: p.detach().clone() for n, p in frozen_state(model, flat)}
    assert len(frozen_before) > len(flat.names)
    theta0 = flat.data.clone()
    LocalTrainer(model, flat, cfg.fl.local, torch.device("cpu")).train(toy_client_data("hf_text", n=32), seed=1)
    method_part = flat.segment_mask(lambda n: marker in n)
    assert not torch.equal(flat.data[method_part], theta0[method_part])  # the method's own parameters moved
    for n, p in frozen_state(model, flat):
        assert torch.equal(p, frozen_before[n]), f"frozen parameter {n} changed"


@pytest.mark.parametrize("spec,needle", [
    ({}, "peft.method=peft needs peft.config"),
    ({"r": 4}, "peft.config: needs peft_type"),
    ({"peft_type": "NOPE"}, "peft.config.peft_type='NOPE' is not a peft method"),
    ({"peft_type": "LORA", "task_type": "SEQ_CLS"}, "peft.config.task_type='SEQ_CLS': leave it unset"),
    ({"peft_type": "LORA", "no_such_field": 1}, "peft.config (LORA):"),
    ({"peft_type": "LORA", "target_modules": ["nope"]}, "peft.config (LORA):"),
])
def test_bad_peft_config_is_one_line(spec, needle):
    with pytest.raises(ConfigError) as e:
        _setup(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_federated_round_and_export(toy_text, tmp_path):
    spec, _ = CASES["ia3"]
    res = hpcfed.run(toy_text, overrides={"peft.method": "peft", "peft.config": spec, "fl.rounds": 1,
                                          "out_dir": str(tmp_path), "name": "ia3", "dist.num_threads": 1})
    assert res.history[0]["round"] == 1 and res.history[0]["clients"] == 4
    export = res.exports["export"]
    assert (export / "adapter_config.json").is_file() and (export / "adapter_model.safetensors").is_file()
    assert '"peft_type": "IA3"' in (export / "adapter_config.json").read_text()
