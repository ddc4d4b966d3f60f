"""Learnable prompt tokens: VPT for vision transformers, soft prompts (peft prompt tuning) for text encoders.

Vision (``timm_vit``, ``open_clip``) — Jia et al., "Visual Prompt Tuning", ECCV 2022:

* ``peft.prompt_depth=shallow`` (VPT-shallow): P = ``peft.prompt_length`` learnable tokens are inserted
  after the prefix tokens (class token, registers) and before the patch tokens, at the input of the first
  block: ``[cls, p_1..p_P, patch_1..patch_N]``. They carry no position embedding.
* ``deep`` (VPT-deep): every block i gets its own P fresh tokens; at block i > 0 they replace the P prompt
  outputs of block i - 1.

After the last block the P prompt positions are removed, so the backbone's own pooling (class token, mean
of patch tokens, ...) and final norm see the token layout they were built for. Tokens are a parameter
``prompt.embeddings`` (depth, P, D) of the vision transformer (``backbone.prompt.embeddings`` for timm,
``backbone.visual.prompt.embeddings`` for open_clip), initialised uniform(±sqrt(6 / (3·patch² + D))) as in
VPT (Xavier uniform over the patch-embedding fan-in), from the global RNG; they are inserted by forward
hooks on the blocks, so every backbone parameter keeps its name.

Text (``hf_text``) — Lester, Al-Rfou, Constant, "The Power of Scale for Parameter-Efficient Prompt Tuning",
EMNLP 2021, through the peft library (``PromptTuningConfig``, task FEATURE_EXTRACTION): P virtual token
embeddings (initialised from randomly sampled vocabulary embeddings, Lester et al.'s better init) are
prepended to the word embeddings, before [CLS]; peft extends the attention mask with ones for them. The
backbone then returns P + L positions; :class:`hpcfed.models.TextClassifier` drops the P prompt outputs
before pooling, so 'mean' pooling averages exactly the real tokens and 'cls' still reads [CLS] (prompts act
through attention only). The backbone becomes a ``peft.PeftModel`` and exports with ``save_pretrained``.
Only ``prompt_depth=shallow`` exists for text.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from hpcfed.config import ConfigError, PeftConfig
from hpcfed.peft.arch import Encoder, backbone_family, find_encoder
from hpcfed.peft.registry import is_head, register


def is_prompt(name: str) -> bool:
    return "prompt" in name


class VisualPrompt(nn.Module):
    """VPT tokens ``embeddings`` (depth, P, D) and the hooks that put them into the token sequence.

    Args:
        depth: 1 (shallow) or the number of blocks (deep).
        length: P.
        dim: D.
        num_prefix_tokens: tokens before the patch tokens; prompts go right after them.
        patch_size: patch side (pixels), for the initialisation range.
    """

    def __init__(self, depth: int, length: int, dim: int, num_prefix_tokens: int, patch_size: int):
        super().__init__()
        self.length, self.num_prefix_tokens = length, num_prefix_tokens
        self.embeddings = nn.Parameter(torch.empty(depth, length, dim))
        bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + dim))
        nn.init.uniform_(self.embeddings, -bound, bound)

    def _tokens(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.embeddings[i].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, P, D)

    @staticmethod
    def _check(kwargs: dict) -> None:
        if kwargs.get("attn_mask") is not None:
            raise RuntimeError("visual prompts do not support an attention mask on the vision tower")

    def insert(self, module: nn.Module, args: tuple, kwargs: dict):
        """Pre-hook of block 0: (B, n + N, D) -> (B, n + P + N, D), prompts after the n prefix tokens."""
        self._check(kwargs)
        x, n = args[0], self.num_prefix_tokens
        x = torch.cat([x[:, :n], self._tokens(0, x), x[:, n:]], dim=1)
        return (x,) + tuple(args[1:]), kwargs

    def replace(self, i: int, module: nn.Module, args: tuple, kwargs: dict):
        """Pre-hook of block i > 0 (deep; bind ``i`` with functools.partial): the P prompt positions get
        block i's fresh tokens."""
        self._check(kwargs)
        x, n, p = args[0], self.num_prefix_tokens, self.length
        x = torch.cat([x[:, :n], self._tokens(i, x), x[:, n + p:]], dim=1)
        return (x,) + tuple(args[1:]), kwargs

    def remove(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the last block: (B, n + P + N, D) -> (B, n + N, D)."""
        n, p = self.num_prefix_tokens, self.length
        return torch.cat([output[:, :n], output[:, n + p:]], dim=1)


def add_visual_prompts(enc: Encoder, cfg: PeftConfig) -> VisualPrompt:
    """Attach a :class:`VisualPrompt` as ``enc.root.prompt`` and hook it into the blocks."""
    if hasattr(enc.root, "prompt"):
        raise ConfigError("the vision transformer already has prompts (peft applied twice?)")
    deep = cfg.prompt_depth == "deep"
    ref = next(enc.root.parameters())
    vp = VisualPrompt(len(enc.blocks) if deep else 1, cfg.prompt_length, enc.dim, enc.num_prefix_tokens,
                      enc.patch_size or 16).to(device=ref.device, dtype=ref.dtype)
    enc.root.add_module("prompt", vp)
    enc.blocks[0].module.register_forward_pre_hook(vp.insert, with_kwargs=True)
    if deep:
        for i, blk in enumerate(enc.blocks[1:], start=1):
            blk.module.register_forward_pre_hook(functools.partial(vp.replace, i), with_kwargs=True)
    enc.blocks[-1].module.register_forward_hook(vp.remove)
    return vp


def add_text_prompts(model: nn.Module, cfg: PeftConfig) -> None:
    """Wrap ``model.backbone`` in peft's prompt tuning (FEATURE_EXTRACTION)."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

    if cfg.prompt_depth != "shallow":
        raise ConfigError(f"peft.prompt_depth={cfg.prompt_depth!r}: text encoders support only 'shallow' "
                          "(soft prompts at the input)")
    find_encoder(model, "prompt")  # a BERT-like encoder, or a clear error
    bb = model.backbone
    pcfg = PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=cfg.prompt_length,
                              prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
                              token_dim=bb.config.hidden_size, num_layers=bb.config.num_hidden_layers,
                              num_attention_heads=bb.config.num_attention_heads)
    model.backbone = get_peft_model(bb, pcfg)


@register("prompt")
def prompt(model: nn.Module, cfg: PeftConfig) -> list[str]:
    """Prompt tuning: VPT (shallow/deep) on vision transformers, soft prompts (peft) on text encoders; + head."""
    if backbone_family(model) == "hf_text":
        add_text_prompts(model, cfg)
    else:
        add_visual_prompts(find_encoder(model, "prompt"), cfg)
    return [n for n, _ in model.named_parameters() if is_head(n) or is_prompt(n)]
