"""Federated self-supervised pre-training on the clients' own (unlabelled) images, through the same FL loop.

The pre-training study of Chen, Tu, Li, Shen, Chao, "On the Importance and Applicability of Pre-Training for
Federated Learning", ICLR 2023, asks whether clients can pre-train a backbone together on their own data
before the supervised FL task. ``fl.algorithm=fedsimsiam`` does that with SimSiam (Chen & He, "Exploring
Simple Siamese Representation Learning", CVPR 2021, Algorithm 1): each client minimises

    L = −½ [cos(p₁, sg(z₂)) + cos(p₂, sg(z₁))],   z_i = proj(f(v_i)),  p_i = pred(z_i)

over two augmented views v₁, v₂ of its images (labels are never read), and the server averages backbone,
projector and predictor with FedAvg (the federated SimSiam of Zhuang et al., "Collaborative Unsupervised
Visual Representation Learning from Decentralized Data", ICCV 2021, without their divergence-aware update).

Choices where the papers are silent:
- the whole backbone plus the SimSiam head are federated (``peft.method=full``; the classification head is
  neither trained nor sent); BatchNorm running statistics of the projector stay local (only parameters are
  in the flat buffer; training uses batch statistics);
- views come from :func:`hpcfed.pretrain.train.augment` with the SimSiam recipe (crop 30–100 %, flip,
  colour jitter p 0.8, grey p 0.2), seeded by the client's round seed, so a client's update does not depend
  on which process trains it;
- evaluation reports the SimSiam loss on two fixed views of the test images and the collapse monitor (std of
  the normalised projections; ≈ 1/√dim when healthy, 0 when collapsed);
- after the last round, :meth:`FedSimSiam.save_final` (called once by the entry point) writes the backbone as ``<run_dir>/final/backbone.safetensors`` (timm names,
  the format of ``python -m hpcfed.pretrain``), which a later FL run loads with
  ``model.path=<that file> model.pretrained=true``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from hpcfed.config import Config, ConfigError
from hpcfed.data import ClientData
from hpcfed.algorithms.registry import register
from hpcfed.fl.algorithm import Algorithm
from hpcfed.fl.client import LocalResult, LocalTrainer, autocast_ctx, local_batches

log = logging.getLogger("hpcfed.fl")
_EVAL_VIEW_SEEDS = (1, 2)


@dataclass(frozen=True)
class FedSimSiamParams:
    """Hyperparameters of federated SimSiam (``fl.algo.*``)."""

    proj_dim: Optional[int] = None
    """Projector width; null = min(2048, 4·D) as ``python -m hpcfed.pretrain`` (Chen & He use 2048)."""
    eval_max_images: int = 512
    """Test images used for the evaluation loss (the first ones of the test split)."""

    def __post_init__(self) -> None:
        if self.proj_dim is not None and self.proj_dim < 8:
            raise ConfigError(f"fl.algo.proj_dim={self.proj_dim} must be >= 8")
        if self.eval_max_images < 2:
            raise ConfigError(f"fl.algo.eval_max_images={self.eval_max_images} must be >= 2")


@register
class FedSimSiam(Algorithm):
    """Federated SimSiam pre-training of an image backbone (see the module docstring).

    Args:
        cfg: the run config; needs ``data.kind=image``, ``model.family=timm_vit`` and ``peft.method=full``.
    """

    name = "fedsimsiam"
    Params = FedSimSiamParams

    @classmethod
    def check_config(cls, params, cfg: Config) -> None:
        if cfg.data.kind != "image" or cfg.model.family != "timm_vit":
            raise ConfigError("fl.algorithm=fedsimsiam pre-trains image backbones: needs data.kind=image and "
                              "model.family=timm_vit")
        if cfg.peft.method != "full":
            raise ConfigError("fl.algorithm=fedsimsiam trains the whole backbone: set peft.method=full")
        if cfg.fl.mode != "federated":
            raise ConfigError("fl.algorithm=fedsimsiam runs with fl.mode=federated")

    def build(self, cfg: Config, device: torch.device, dataset):
        from hpcfed.models import build_model
        from hpcfed.peft import FlatParams
        from hpcfed.pretrain.train import SimSiamHead

        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, cfg.model.num_classes or dataset.num_classes).to(device)
        model.add_module("ssl_head", SimSiamHead(model.backbone.num_features, self.params.proj_dim).to(device))
        names = [n for n, _ in model.named_parameters() if n.startswith(("backbone.", "ssl_head."))]
        return model, FlatParams(model, names)

    def _loss(self, model, x: torch.Tensor, gen: torch.Generator, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from hpcfed.pretrain.train import SIMSIAM_AUG, augment

        v1, v2 = augment(x, gen, SIMSIAM_AUG), augment(x, gen, SIMSIAM_AUG)
        with autocast_ctx(x.device, bf16):
            f = model.features(torch.cat([v1, v2]))  # one pass over both views
        f1, f2 = f.float().chunk(2)
        return model.ssl_head.loss(f1, f2)

    def local_update(self, trainer: LocalTrainer, theta_global: torch.Tensor, data: ClientData, seed: int,
                     client_id: int) -> LocalResult:
        """SimSiam steps on the client's images from θ_global (fl.local: steps/epochs, batch size, optimizer,
        lr, bf16); labels are not read. θ_c is left in ``trainer.flat.data``."""
        c, flat, model = trainer.cfg, trainer.flat, trainer.model
        flat.data.copy_(theta_global)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        trainer.optimizer.reset()
        model.train()
        batches = local_batches(len(data), c.batch_size, epochs=c.epochs, steps=c.steps, generator=gen)
        loss_sum, seen, last, first = 0.0, 0, float("nan"), float("nan")
        for step, idx in enumerate(batches, start=1):
            if len(idx) < 2:  # BatchNorm needs two examples
                continue
            flat.zero_grad()
            loss, _ = self._loss(model, data.x[idx].to(trainer.device), gen, c.bf16)
            loss.backward()
            trainer.step(step)
            last = float(loss.detach())
            if seen == 0:
                first = last
            loss_sum += last * len(idx)
            seen += len(idx)
        return LocalResult(loss_sum, seen, len(batches), last, first)

    @torch.no_grad()
    def evaluate(self, loop) -> dict:
        """SimSiam loss and projection std on two fixed views of the first ``eval_max_images`` test images, as
        one batch in every process (the projector's BatchNorm uses that batch's statistics: its running
        statistics are local and never federated, so they are not used)."""
        if loop.test_data is None:
            return {}
        from hpcfed.pretrain.train import SIMSIAM_AUG, augment

        loop.flat.data.copy_(loop.theta_global)
        model = loop.model
        model.eval()
        model.ssl_head.train()
        x = loop.test_data.x[: self.params.eval_max_images].to(loop.device)
        gens = [torch.Generator().manual_seed(s) for s in _EVAL_VIEW_SEEDS]
        v1, v2 = augment(x, gens[0], SIMSIAM_AUG), augment(x, gens[1], SIMSIAM_AUG)
        loss, std = model.ssl_head.loss(model.features(v1).float(), model.features(v2).float())
        return {"ssl_test_loss": float(loss), "ssl_proj_std": float(std)}

    def save_final(self, loop, final_dir) -> None:
        """Write the pre-trained backbone as ``<final_dir>/backbone.safetensors`` for later fine-tuning."""
        from hpcfed.pretrain.train import save_backbone

        loop.flat.data.copy_(loop.theta_global)
        path = save_backbone(final_dir / "backbone.safetensors", loop.model.backbone,
                             {"objective": "fedsimsiam", "rounds": loop.state.round, "model": _model_words(loop.cfg)})
        log.info("federated SimSiam backbone written to %s", path)


def _model_words(cfg: Config) -> list[str]:
    m = cfg.model
    return [f"model.{k}={getattr(m, k)}" for k in ("family", "arch", "hidden_size", "num_layers", "num_heads",
                                                   "intermediate_size", "img_size", "patch_size")]
