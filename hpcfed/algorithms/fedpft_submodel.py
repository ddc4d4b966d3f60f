"""Sub-model alignment helpers of FedPFT (used by :mod:`hpcfed.algorithms.fedpft`); the sub-model surgery itself
is :mod:`hpcfed.models.submodel` (re-exported here for the method).

Peng, Fan, Chen, Wang, Pan, Wen, Zhang, Wang, "FedPFT: Federated Proxy Fine-Tuning of Foundation Models",
IJCAI 2024 (arXiv:2404.11536), Sec. 4 (sub-FM construction: layer-wise FFN compression by neuron saliency;
sub-FM alignment: layer-level distillation before FL, neuron-level distillation during FL).

Everything here works on a Hugging Face BERT-like encoder (``encoder.layer[i].intermediate.dense`` /
``.output.dense`` / ``.output.LayerNorm``), bare or wrapped by ``peft``; nothing here knows about FL or processes.

Notation for one transformer layer's FFN with hidden size D and F neurons:
``W1`` = ``intermediate.dense.weight`` (F, D), ``b1`` (F,), ``W2`` = ``output.dense.weight`` (D, F), ``b2`` (D,);
neuron j is row ``W1[j]``, entry ``b1[j]`` and column ``W2[:, j]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import nn

from hpcfed.config import ConfigError
from hpcfed.data import ClientData, reserved_rows
from hpcfed.fl.client import batch_to, local_batches
from hpcfed.models.submodel import (
    build_submodel, compress_ffn_, default_compressed_layers, encoder_layers, neuron_saliency, num_kept,
    top_k_neurons,
)
from hpcfed.rng import MethodStream, generator

if TYPE_CHECKING:  # pragma: no cover
    from hpcfed.config import Config

__all__ = [  # the surgery is re-exported: the method reaches everything as sm.*
    "build_submodel",
    "compress_ffn_",
    "default_compressed_layers",
    "encoder_layers",
    "neuron_saliency",
    "num_kept",
    "top_k_neurons",
    "layer_distill_loss",
    "weight_distill_loss",
    "apoz",
    "freeze_mask",
    "distilled_params",
    "pack_params",
    "unpack_params_",
    "DistillReport",
    "distill",
    "distill_eval",
    "load_public_text",
    "ApozCounter",
]


# ------------------------------------------------------------------------------------------ losses
def layer_distill_loss(h_teacher: torch.Tensor, h_student: torch.Tensor,
                       mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalised hidden-state MSE of one layer: mean((h_t − h_s)²) / mean(h_t²) over real tokens.

    The authors' code divides the difference by sqrt(mean(h_t²)) before squaring, which is the same number.

    Args:
        h_teacher, h_student: (B, L, D) outputs of the same layer of the full and the sub-model.
        mask: (B, L) 1 on real tokens (None: all). Padding positions do not count (our choice; the authors'
            corpus is packed into full 512-token blocks and has no padding).

    Returns:
        scalar float32 (0 when the student equals the teacher).
    """
    t, s = h_teacher.float(), h_student.float()
    if mask is None:
        return (t - s).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)
    m = mask.to(t.dtype).unsqueeze(-1)  # (B, L, 1)
    return ((t - s).pow(2) * m).sum() / (t.pow(2) * m).sum().clamp_min(1e-12)


def weight_distill_loss(w1_t: torch.Tensor, w2_t: torch.Tensor, w1_s: torch.Tensor, w2_s: torch.Tensor,
                        teacher_product: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Normalised distance of the FFN's linear part: mean((W2ᵗW1ᵗ − W2ˢW1ˢ)²) / mean((W2ᵗW1ᵗ)²).

    The second term of the authors' layer-level loss (``distill_alpha``); W2W1 is (D, D) whatever F is.

    Args:
        w1_t (F, D), w2_t (D, F): the full layer; w1_s (k, D), w2_s (D, k): the sub-model's layer.
        teacher_product: W2ᵗW1ᵗ (D, D) if already computed (it is constant during distillation).
    """
    a = teacher_product if teacher_product is not None else w2_t.float() @ w1_t.float()  # (D, D)
    b = w2_s.float() @ w1_s.float()  # (D, D)
    return (a - b).pow(2).mean() / a.pow(2).mean().clamp_min(1e-12)


def apoz(zero_counts: torch.Tensor, tokens: torch.Tensor | float) -> torch.Tensor:
    """Average Percentage of Zeros per neuron: zero activations / tokens seen (Hu et al., 2016, "Network
    Trimming"). ``zero_counts`` (..., F); returns float64 (..., F) in [0, 1] (0 where nothing was seen)."""
    t = torch.as_tensor(tokens, dtype=torch.float64)
    return zero_counts.double() / t.clamp_min(1.0)


def freeze_mask(apoz_values: torch.Tensor, freeze_ratio: float, which: str = "active") -> torch.Tensor:
    """Neurons kept fixed during neuron-level alignment: ``floor(freeze_ratio · F)`` of them.

    Args:
        apoz_values: (F,) APoZ of one layer's neurons.
        freeze_ratio: share of neurons frozen, in [0, 1].
        which: 'active' freezes the most active neurons (lowest APoZ: the ones the clients' data use, as in the
            authors' code, ``sort(APoZ)[:int(F·ratio)]``); 'inactive' freezes the least active (highest APoZ).
            Ties go to the lower index.

    Returns:
        (F,) bool, True = frozen (excluded from re-distillation).
    """
    f = apoz_values.numel()
    n = int(math.floor(freeze_ratio * f + 1e-9))
    key = apoz_values.double() if which == "active" else -apoz_values.double()
    order = torch.sort(key, stable=True).indices
    out = torch.zeros(f, dtype=torch.bool, device=apoz_values.device)
    out[order[:n]] = True
    return out


# ------------------------------------------------------------------------------------------ distillation
def distilled_params(backbone: nn.Module, layers: Sequence[int], with_layernorm: bool = True) -> dict[str, nn.Parameter]:
    """The student tensors distillation trains, by a stable name: FFN weights/biases (and the FFN LayerNorm)
    of each compressed layer (the authors train every non-attention parameter of a compressed layer)."""
    enc = encoder_layers(backbone)
    out = {}
    for i in layers:
        lay = enc[i]
        mods = {"w1": lay.intermediate.dense, "w2": lay.output.dense}
        if with_layernorm:
            mods["ln"] = lay.output.LayerNorm
        for tag, mod in mods.items():
            out[f"{i}.{tag}.weight"] = mod.weight
            if mod.bias is not None:
                out[f"{i}.{tag}.bias"] = mod.bias
    return out


def pack_params(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """(n,) fp32 concatenation of ``params`` in dict order (to move them through one collective)."""
    return torch.cat([p.detach().reshape(-1).float() for p in params.values()])


def unpack_params_(params: dict[str, torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat`` (from :func:`pack_params` of same-shaped params) into ``params`` in place."""
    off = 0
    with torch.no_grad():
        for p in params.values():
            p.copy_(flat[off:off + p.numel()].view(p.shape).to(p.dtype))
            off += p.numel()
    if off != flat.numel():
        raise ValueError(f"buffer has {flat.numel()} elements, the parameters {off}")


@dataclass
class DistillReport:
    """Mean distillation loss over the first and the last 10% of the steps, and the number of steps."""

    loss_first: float
    loss_last: float
    steps: int


def _hidden_states(backbone: nn.Module, x: torch.Tensor, lengths: torch.Tensor):
    lmax = int(lengths.max())
    x = x[:, :lmax].long()  # (B, Lmax)
    attn = (torch.arange(lmax, device=x.device)[None, :] < lengths[:, None]).long()  # (B, Lmax)
    out = backbone(input_ids=x, attention_mask=attn, output_hidden_states=True)
    return out.hidden_states, attn  # tuple of N+1 (B, Lmax, D)


def distill(teacher: nn.Module, student: nn.Module, layers: Sequence[int], data: ClientData, *, steps: int,
            batch_size: int, lr: float, seed: int, device: torch.device, weight_alpha: float = 0.0,
            frozen: Optional[dict[int, torch.Tensor]] = None, warmup: float = 0.0,
            train_layernorm: bool = True, weight_term_grad: bool = False) -> DistillReport:
    """Distil the compressed layers of ``student`` from ``teacher`` on unlabelled ``data`` (in place).

    Loss (FedPFT Sec. 4.2): mean over compressed layers i of :func:`layer_distill_loss` of layer i's outputs
    (+ ``weight_alpha`` · :func:`weight_distill_loss` of its FFN). AdamW (no weight decay), learning rate
    rising linearly over the first ``warmup`` share of the steps, then decaying linearly to 0; both models in
    eval mode (no dropout), fp32.

    The weight term: with ``weight_term_grad`` False (the authors' code, ``DistillBertModel.forward``, computes
    it from ``.weight.data``) it is added to the reported loss as a constant and trains nothing; True lets it
    backpropagate into W1 and W2 (a deviation).

    Layer level (``frozen`` None, Sec. 4.2.1): FFN weights, biases and the FFN LayerNorm of each compressed
    layer are trained. Neuron level (``frozen`` given, Sec. 4.2.2): only the non-frozen neurons of each
    compressed layer (W1 rows, b1 entries, W2 columns), b2 and (``train_layernorm``, as the authors' code)
    the FFN LayerNorm are trained; frozen neurons are restored after every step, so they stay bitwise
    unchanged. ``train_layernorm`` False keeps the LayerNorm fixed (a deviation).

    Args:
        teacher, student: backbones (BERT-like, bare or ``peft``-wrapped; the same attention/LoRA structure).
        layers: compressed layer indices.
        data: token ids (x, lengths); labels are not used.
        frozen: {layer: (k,) bool} neurons to keep fixed, or None.

    Returns:
        :class:`DistillReport`. Every other parameter's ``requires_grad`` is restored on return.
    """
    params = distilled_params(student, layers, with_layernorm=train_layernorm)
    flags = {id(p): p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    saved = {}
    if frozen is not None:
        for i, fz in frozen.items():
            enc = encoder_layers(student)[i]
            saved[i] = (fz.to(device), enc.intermediate.dense.weight.detach().clone(),
                        enc.intermediate.dense.bias.detach().clone(), enc.output.dense.weight.detach().clone())
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    n_warm = int(round(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / n_warm if s < n_warm else max(0.0, 1.0 - (s - n_warm) / max(steps - n_warm, 1)))
    was_training = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    gen = torch.Generator().manual_seed(seed)
    batches = local_batches(len(data), batch_size, epochs=1, steps=steps, generator=gen) if steps > 0 else []
    losses = []
    t_enc, s_enc = encoder_layers(teacher), encoder_layers(student)
    with torch.no_grad():
        prod_t = {i: t_enc[i].output.dense.weight.float() @ t_enc[i].intermediate.dense.weight.float()
                  for i in layers} if weight_alpha > 0 else {}  # (D, D) each, constant
    try:
        for idx in batches:
            x, _, lengths = batch_to(data, idx, device)
            with torch.no_grad():
                h_t, attn = _hidden_states(teacher, x, lengths)
            h_s, _ = _hidden_states(student, x, lengths)
            loss = torch.zeros((), device=device)
            for i in layers:
                li = layer_distill_loss(h_t[i + 1], h_s[i + 1], attn)
                if weight_alpha > 0:
                    with torch.set_grad_enabled(weight_term_grad):  # detached: reported, trains nothing
                        wi = weight_distill_loss(
                            t_enc[i].intermediate.dense.weight, t_enc[i].output.dense.weight,
                            s_enc[i].intermediate.dense.weight, s_enc[i].output.dense.weight, prod_t[i])
                    li = li + weight_alpha * wi
                loss = loss + li
            loss = loss / max(len(layers), 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if saved:
                with torch.no_grad():
                    for i, (fz, w1, b1, w2) in saved.items():
                        enc = s_enc[i]
                        enc.intermediate.dense.weight[fz] = w1[fz]
                        enc.intermediate.dense.bias[fz] = b1[fz]
                        enc.output.dense.weight[:, fz] = w2[:, fz]
            losses.append(float(loss.detach()))
    finally:
        for p in params.values():
            p.grad = None  # only these received gradients (everything else had requires_grad off)
        for p in student.parameters():
            p.requires_grad_(flags[id(p)])
        teacher.train(was_training[0])
        student.train(was_training[1])
    if not losses:
        return DistillReport(float("nan"), float("nan"), 0)
    m = max(1, len(losses) // 10)
    return DistillReport(sum(losses[:m]) / m, sum(losses[-m:]) / m, len(losses))


@torch.no_grad()
def distill_eval(teacher: nn.Module, student: nn.Module, layers: Sequence[int], data: ClientData, *,
                 batch_size: int, device: torch.device, max_batches: int = 4) -> float:
    """Mean :func:`layer_distill_loss` over the compressed layers on the first ``max_batches`` batches of
    ``data`` (a fixed probe of how far the sub-model is from the full model)."""
    was = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    tot, n = 0.0, 0
    for b in torch.arange(len(data)).split(batch_size)[:max_batches]:
        x, _, lengths = batch_to(data, b, device)
        h_t, attn = _hidden_states(teacher, x, lengths)
        h_s, _ = _hidden_states(student, x, lengths)
        tot += float(sum(layer_distill_loss(h_t[i + 1], h_s[i + 1], attn) for i in layers)) / max(len(layers), 1)
        n += 1
    teacher.train(was[0])
    student.train(was[1])
    return tot / max(n, 1)


# ------------------------------------------------------------------------------------------ data and APoZ
def load_public_text(cfg: "Config", params) -> ClientData:
    """The public, unlabelled distillation set: ``public_samples`` rows of ``public_source`` (default
    ``data.source``) drawn without replacement by ``public_seed``, tokenized like the client shards.

    Returns:
        ClientData with x int32 (n, data.max_length) right-padded, lengths int32 (n,), y zeros (unused).

    Raises:
        ConfigError: no tokenizer configured.
        DataError: unreadable source (from :func:`hpcfed.data.sources.read_text_table`).
    """
    from transformers import AutoTokenizer

    from hpcfed.data.sources import read_text_table

    src = params.public_source or cfg.data.source
    table = read_text_table(src, cfg.data.text_column, cfg.data.label_column)
    rows = np.arange(len(table.texts)) if params.public_source else reserved_rows(len(table.texts), cfg.data)
    n = min(params.public_samples, len(rows))
    idx = np.sort(rows[generator(params.public_seed, MethodStream.FEDPFT_PUBLIC).permutation(len(rows))[:n]])
    name = cfg.data.tokenizer or cfg.model.path
    if not name:
        raise ConfigError("fl.algo (fedpft): public data needs a tokenizer; set data.tokenizer or model.path")
    tok = AutoTokenizer.from_pretrained(name)
    tok.padding_side = "right"
    enc = tok([table.texts[i] for i in idx], truncation=True, max_length=cfg.data.max_length,
              padding="max_length", return_attention_mask=True, return_token_type_ids=False, return_tensors="np")
    x = torch.from_numpy(np.ascontiguousarray(enc["input_ids"], dtype=np.int32))  # (n, L)
    lengths = torch.from_numpy(enc["attention_mask"].sum(axis=1).astype(np.int32))  # (n,)
    return ClientData(x=x, y=torch.zeros(n, dtype=torch.long), lengths=lengths)


class ApozCounter:
    """Forward hooks counting, per neuron of each compressed FFN, activations ≤ 0 over real tokens.

    ``counts`` float64 (n_layers, k); ``tokens`` float64 scalar. Counting is on only while ``active``.
    """

    def __init__(self, backbone: torch.nn.Module, layers: list[int]):
        enc = encoder_layers(backbone)
        self.layers = layers
        k = enc[layers[0]].intermediate.dense.out_features if layers else 0
        self.counts = torch.zeros(len(layers), k, dtype=torch.float64)
        self.tokens = torch.zeros((), dtype=torch.float64)
        self.active = False
        self._mask: Optional[torch.Tensor] = None
        self._handles = [self._encoder_model(backbone).register_forward_pre_hook(self._pre, with_kwargs=True)]
        for j, i in enumerate(layers):
            self._handles.append(enc[i].intermediate.register_forward_hook(self._hook(j)))

    @staticmethod
    def _encoder_model(backbone):
        # the module whose forward takes attention_mask: the HF model inside a peft wrapper, or the backbone
        get = getattr(backbone, "get_base_model", None)
        return get() if callable(get) else backbone

    def _pre(self, module, args, kwargs):
        if self.active:
            self._mask = self.real_tokens(kwargs.get("attention_mask"),
                                          kwargs.get("input_ids", args[0] if args else None))
        return None

    @staticmethod
    def real_tokens(attention_mask: Optional[torch.Tensor], input_ids: Optional[torch.Tensor]):
        """(B, L) bool of the positions holding real tokens, or None (all real).

        ``attention_mask`` is the usual (B, L) padding mask, or the (R, 1, T, T) block-diagonal mask of a packed
        batch (:mod:`hpcfed.models.packing`), where a padding position attends to itself alone and holds token
        id 0. A real position attends to its whole sequence (≥ 2 tokens for tokenizer output: [CLS] … [SEP])
        or holds a non-zero id, so it is told apart without the packing plan.
        """
        if attention_mask is None or attention_mask.dim() == 2:
            return attention_mask
        allowed = attention_mask[:, 0].bool()  # (R, T, T)
        real = allowed.sum(-1) > 1  # (R, T)
        return real if input_ids is None else real | (input_ids != 0)

    def _hook(self, j: int):
        def hook(module, inputs, output):
            if not self.active:
                return
            a = output.detach()  # (B, L, k)
            m = self._mask
            if m is None:
                m = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
            m = m[:, : a.shape[1]].bool()  # (B, L)
            zero = (a <= 0) & m.unsqueeze(-1)  # (B, L, k)
            self.counts[j] += zero.sum(dim=(0, 1)).to("cpu", torch.float64)
            if j == 0:
                self.tokens += float(m.sum())

        return hook

    def reset(self) -> None:
        self.counts.zero_()
        self.tokens.zero_()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
