"""``python -m hpcfed.pretrain [config=FILE] [key=value ...] [--options]``: pre-train a ViT backbone on fractals.

The model comes from the project config (``model.*`` keys, parsed by :func:`hpcfed.config.load_config`; the
defaults here are ``model.family=timm_vit model.arch=tiny model.path=null model.pretrained=false``), the rest
from the ``--`` options. The result is a timm state dict in ``.safetensors`` that an FL run loads with::

    model.family=timm_vit model.arch=<same> model.path=<out> model.pretrained=true  (+ the same size keys)

Example (about 10 minutes on 2 CPU cores, see docs/pretraining.md)::

    python -m hpcfed.pretrain model.hidden_size=192 model.num_layers=6 model.num_heads=3 \\
        model.intermediate_size=768 model.img_size=32 model.patch_size=4 \\
        --classes 100 --per-class 40 --epochs 5 --out runs/pretrain/fractal_vit.safetensors
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from hpcfed.config import Config, ConfigError, ModelConfig, load_config
from hpcfed.pretrain.train import OBJECTIVES, PretrainConfig, pretrain, save_backbone


class UsageError(ValueError):
    """A bad command-line option (one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hpcfed.pretrain", allow_abbrev=False,
                description="Pre-train a ViT backbone on fractal images (supervised on IFS classes or SimSiam). "
                            "Words key=value (and config=FILE) set the model section, as for hpcfed.main.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--classes", type=int, default=100, help="fractal classes (IFS systems)")
    p.add_argument("--per-class", type=int, default=50, help="images per class")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--objective", choices=OBJECTIVES, default="supervised")
    p.add_argument("--out", type=Path, default=None,
                   help="checkpoint path (.safetensors); default <out_dir>/pretrain/fractal_<objective>_<arch>"
                        ".safetensors")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (warm-up, cosine)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="fractal data, init, batch order and augmentation")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--grid", type=Path, default=None, help="also write a PNG of the first 100 images' classes")
    return p


def _check(args: argparse.Namespace) -> None:
    for name, lo in (("classes", 2), ("per_class", 1), ("epochs", 1), ("batch_size", 2)):
        if getattr(args, name) < lo:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= {lo}")
    if not args.lr > 0:
        raise UsageError(f"--lr={args.lr} must be > 0")
    if args.weight_decay < 0:
        raise UsageError(f"--weight-decay={args.weight_decay} must be >= 0")
    if args.out is not None and args.out.suffix != ".safetensors":
        raise UsageError(f"--out={args.out} must end in .safetensors")


def base_config() -> Config:
    """Defaults for pre-training: a random-init tiny timm ViT."""
    return Config(model=ModelConfig(family="timm_vit", arch="tiny", path=None, pretrained=False))


def model_words(m: ModelConfig) -> list[str]:
    """The ``model.*`` words that rebuild this architecture (sizes only matter for arch=tiny)."""
    words = [f"model.family={m.family}", f"model.arch={m.arch}"]
    words += [f"model.{k}={v}" for k, v in (("img_size", m.img_size), ("patch_size", m.patch_size)) if v is not None]
    if m.arch == "tiny":
        words += [f"model.hidden_size={m.hidden_size}", f"model.num_layers={m.num_layers}",
                  f"model.num_heads={m.num_heads}", f"model.intermediate_size={m.intermediate_size}"]
    return words


def main(argv: Optional[Sequence[str]] = None, log=print) -> int:
    """Command-line entry; returns the exit status (0 ok, 2 bad input: one ``error:`` line, e.g.
    ``dist.device=cuda`` without a CUDA device)."""
    from hpcfed.dist import resolve_device
    from hpcfed.models import ModelError, build_model
    from hpcfed.pretrain.fractal import FractalDataset, save_grid

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, words = _parser().parse_known_args(argv)
        bad = [w for w in words if w.startswith("-")]
        if bad:
            raise UsageError(f"unknown option {bad[0]} (see --help)")
        _check(args)
        cfg = load_config(words, base=base_config())
        if cfg.model.family != "timm_vit":
            raise UsageError(f"model.family={cfg.model.family!r}: fractal pre-training needs model.family=timm_vit")
        device = resolve_device(cfg.dist.device)
        if cfg.dist.num_threads:
            torch.set_num_threads(cfg.dist.num_threads)
        out = args.out or Path(cfg.out_dir) / "pretrain" / f"fractal_{args.objective}_{cfg.model.arch}.safetensors"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out={out}: cannot create its folder ({e.strerror or e})") from None
        if not os.access(out.parent, os.W_OK):
            raise UsageError(f"--out={out}: folder {out.parent} is not writable")
        torch.manual_seed(args.seed)
        try:
            model = build_model(cfg.model, args.classes).to(device)
        except (AssertionError, RuntimeError, TypeError) as e:  # timm's own checks (e.g. heads vs width)
            raise ModelError(f"cannot build model {cfg.model.arch!r}: {str(e).splitlines()[0] or type(e).__name__}")
    except (UsageError, ConfigError, ModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    img_size = cfg.model.img_size or model.img_size  # null: the architecture's own input size
    data = FractalDataset(args.classes, args.per_class, size=img_size, seed=args.seed)
    t_data = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.backbone.parameters())
    log(f"fractal data: {len(data)} images ({args.classes} classes x {args.per_class}) of "
        f"{img_size}x{img_size} in {t_data:.1f} s; backbone {cfg.model.arch} "
        f"{n_params / 1e6:.2f}M parameters on {device}; objective {args.objective}")
    if args.grid is not None:
        save_grid(data.x[:: args.per_class][:100], str(args.grid))
    pcfg = PretrainConfig(objective=args.objective, classes=args.classes, per_class=args.per_class,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, seed=args.seed, bf16=args.bf16)
    t1 = time.perf_counter()
    history = pretrain(model, data.x, data.y, pcfg, device, log=log)
    t_train = time.perf_counter() - t1
    meta = {"model_words": model_words(cfg.model), "objective": args.objective, "classes": args.classes,
            "per_class": args.per_class, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "weight_decay": args.weight_decay, "seed": args.seed, "history": history,
            "data_s": round(t_data, 2), "train_s": round(t_train, 2), "device": str(device),
            "threads": torch.get_num_threads()}
    try:
        save_backbone(out, model.backbone, meta)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 2
    log(f"saved {out} ({t_train:.0f} s training); use it with: "
        + " ".join(model_words(cfg.model) + [f"model.path={out}", "model.pretrained=true"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
