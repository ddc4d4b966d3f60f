"""Multi-task model surgery for FedYolo (Zhang, Li, Chang, Chen, Roy-Chowdhury, Suresh, Oymak, "FedYolo:
Augmenting Federated Learning with Pretrained Transformers", arXiv:2307.04905, 2023): one PEFT module and one head per task on one frozen backbone, a switch
that selects the task a forward pass computes, and the flat-buffer layout ``[shared | M_0, h_0 | M_1, h_1 ...]``
whose per-task segments the method masks. Nothing here knows about FL or processes
(:mod:`hpcfed.algorithms.fedyolo` is the method).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from hpcfed.config import ConfigError, PeftConfig
from hpcfed.peft.adapter import add_adapters
from hpcfed.peft.arch import find_encoder
from hpcfed.peft.flat import FlatParams
from hpcfed.peft.registry import METHODS

PER_TASK_METHODS = ("lora", "prompt", "adapter", "head")
"""PEFT methods with one module per task."""
SHARED_METHODS = ("full", "bias")
"""PEFT methods whose trainable backbone parameters are shared by every task (the heads stay per task)."""


class TaskHeads(nn.ModuleList):
    """One ``nn.Linear`` head per task; calling it applies the active task's head: (B, D) -> (B, K_t).

    Registered as the classifier's ``head``, so parameters are named ``head.<t>.weight`` / ``head.<t>.bias``
    (``is_head`` holds for all of them, so ``fl.local.head_lr`` applies).
    """

    def __init__(self, heads: list[nn.Linear]):
        super().__init__(heads)
        self.active = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self[self.active](h)

    @property
    def out_features(self) -> int:
        return self[self.active].out_features


class _AdapterGate:
    """Replaces an :class:`~hpcfed.peft.adapter.Adapter`'s forward: its output when its task is active, else
    a scalar 0 (so the hook adds nothing and computes nothing)."""

    def __init__(self, adapter: nn.Module, task: int, switch: "TaskSwitch"):
        self.fwd, self.task, self.switch = type(adapter).forward.__get__(adapter), task, switch

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return self.fwd(h) if self.switch.task == self.task else h.new_zeros(())


@dataclass
class TaskSwitch:
    """Selects the task a multi-task model computes: its head, and its module (peft adapter name or gate)."""

    model: nn.Module
    adapter_names: Optional[list[str]] = None
    task: int = 0

    def set(self, t: int) -> None:
        self.task = t
        self.model.head.active = t
        if self.adapter_names is not None:
            self.model.backbone.set_adapter(self.adapter_names[t])


def adapter_name(t: int) -> str:
    """peft adapter name of task ``t`` ('default' for task 0, as ``get_peft_model`` names it)."""
    return "default" if t == 0 else f"task{t}"


def segment_task(name: str, method: str, num_tasks: int) -> Optional[int]:
    """Task owning the trainable parameter ``name``; None for a shared one (backbone under full/bias)."""
    if name.startswith("head."):
        return int(name.split(".")[1])
    if method in ("lora", "prompt"):
        for t in range(num_tasks):
            if f".{adapter_name(t)}." in name:
                return t
        raise ValueError(f"{name}: belongs to no task adapter")
    if method == "adapter":
        part = next(p for p in name.split(".") if p.startswith("adapter_"))
        return int(part.rsplit("_task", 1)[1])
    return None


def make_multitask(model: nn.Module, peft_cfg: PeftConfig, num_classes: list[int]
                   ) -> tuple[FlatParams, "TaskSwitch", list[Optional[int]]]:
    """Turn a freshly built classifier into a multi-task one, in place: one head per task (task 0 keeps the
    model's head; the others are new ``nn.Linear`` drawn from the global RNG) and one PEFT module per task.

    Layout of the returned flat buffer (offset order): ``[shared | M_0, h_0 | M_1, h_1 | ...]`` where ``shared``
    is the backbone under ``full``/``bias`` (empty otherwise).

    Args:
        model: a classifier (``.backbone``, ``.head`` an ``nn.Linear`` with K_0 outputs), no PEFT applied yet.
        peft_cfg: ``peft.*`` (method and its sizes).
        num_classes: K_t per task.

    Returns:
        (flat, switch, seg_task): ``seg_task[i]`` is the task of ``flat.layout[i]`` (None = shared).

    Raises:
        ConfigError: a PEFT method without a per-task variant (visual prompts, for example).
    """
    method, num_tasks = peft_cfg.method, len(num_classes)
    dim = model.head.in_features
    ref = model.head.weight
    heads = [model.head] + [nn.Linear(dim, k).to(ref.device, ref.dtype) for k in num_classes[1:]]
    model.head = TaskHeads(heads)
    switch = TaskSwitch(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if method in ("lora", "prompt"):
        METHODS[method](model, peft_cfg)
        if not hasattr(model.backbone, "peft_config"):
            raise ConfigError(f"peft.method={method!r}: FedYolo needs the peft-library variant (text prompts or "
                              "LoRA); visual prompts have no per-task switch")
        base_cfg = model.backbone.peft_config["default"]
        for t in range(1, num_tasks):
            model.backbone.add_adapter(adapter_name(t), dataclasses.replace(base_cfg))
        switch.adapter_names = [adapter_name(t) for t in range(num_tasks)]
    elif method == "adapter":
        for t in range(num_tasks):
            adapters = add_adapters(model, peft_cfg)
            blocks = [b.module for b in find_encoder(model, "adapter").blocks]
            it = iter(adapters)
            for blk in blocks:
                for kind in ("attn", "mlp"):
                    a = next(it)
                    delattr(blk, f"adapter_{kind}")
                    blk.add_module(f"adapter_{kind}_task{t}", a)
                    a.forward = _AdapterGate(a, t, switch)
    elif method in SHARED_METHODS or method == "head":
        names = METHODS[method](model, peft_cfg)
    else:  # pragma: no cover - PeftConfig validates the method
        raise ConfigError(f"peft.method={method!r}: no per-task variant")
    if method in ("lora", "prompt", "adapter"):
        names = [n for n, _ in model.named_parameters()
                 if n.startswith("head.") or "lora_" in n or "prompt" in n or "adapter_" in n]
    tasks_of = {n: segment_task(n, method, num_tasks) for n in names}
    order = [n for n in names if tasks_of[n] is None]
    for t in range(num_tasks):
        order += [n for n in names if tasks_of[n] == t and not n.startswith("head.")]
        order += [n for n in names if n.startswith(f"head.{t}.")]
    flat = FlatParams(model, order)
    switch.set(0)
    return flat, switch, [tasks_of[s.name] for s in flat.layout]


def task_masks(flat: "FlatParams", seg_task: list[Optional[int]], num_tasks: int) -> list[torch.Tensor]:
    """(n,) bool mask of each task: its own segments plus the shared ones."""
    out = []
    for t in range(num_tasks):
        m = torch.zeros(flat.numel, dtype=torch.bool, device=flat.data.device)
        for s, st in zip(flat.layout, seg_task):
            if st is None or st == t:
                m[s.offset:s.end] = True
        out.append(m)
    return out
