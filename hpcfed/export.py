"""Saving and loading the global PEFT parameters.

* :func:`save_peft` / :func:`load_peft`: one safetensors file, one tensor per trainable parameter (names as in
  the model) and metadata: ``layout`` (JSON list of [name, shape, offset]), ``peft_method`` and
  ``config_hash``. This is the run's own format (``final/peft.safetensors``, checkpoints).
* :func:`export_peft` / :func:`load_export`: a folder in the libraries' formats (peft ``save_pretrained``
  where the method uses peft; otherwise a safetensors state dict named as the backbone's own
  ``state_dict``), for use outside hpcfed.

Loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hpcfed.atomic import atomic_path
from hpcfed.peft import FlatParams, LayoutError

log = logging.getLogger(__name__)

def save_peft(path: Path, flat: FlatParams, theta: Optional[torch.Tensor] = None, **metadata: str) -> Path:
    """Write ``theta`` (default: the flat buffer's values) as named tensors to ``path`` atomically."""
    tensors = {k: v.contiguous().cpu() for k, v in flat.state_dict(theta).items()}
    meta = {"layout": flat.layout_json(), **{k: str(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_peft(path: Path, flat: FlatParams) -> torch.Tensor:
    """Read a file written by :func:`save_peft` into an (n,) vector of ``flat``'s layout.

    Raises:
        LayoutError: the file is unreadable or does not fit the model (names the file).
    """
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise LayoutError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        return flat.flat_from_state_dict(sd)
    except LayoutError as e:
        raise LayoutError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------------------------------
# Library-native exports
# ---------------------------------------------------------------------------------------------------------

EXPORT_META = "export.json"
STATE_FILE = "trainable.safetensors"
MODEL_DIR = "model"
EXPORT_VERSION = 2
MERGEABLE = ("bias", "head", "full", "lora")
"""Methods whose trained model is the plain backbone with other weights (LoRA merged into them): exported whole."""
_PEFT_PREFIX = "base_model.model."


def _is_peft_model(module: nn.Module) -> bool:
    return callable(getattr(module, "save_pretrained", None)) and hasattr(module, "peft_config")


def export_name(name: str, peft_wrapped: bool = False) -> str:
    """The name a trainable parameter gets in an exported state dict: the backbone's own ``state_dict`` name
    (our ``backbone.`` prefix, and peft's ``base_model.model.`` where the backbone is wrapped, stripped);
    ``head.*`` unchanged."""
    if name.startswith("backbone."):
        name = name[len("backbone."):]
        if peft_wrapped and name.startswith(_PEFT_PREFIX):
            name = name[len(_PEFT_PREFIX):]
    return name


@contextlib.contextmanager
def _flat_values(flat: FlatParams, theta: Optional[torch.Tensor]) -> Iterator[None]:
    """Temporarily make the model's trainable parameters hold ``theta`` (they are views of ``flat.data``)."""
    if theta is None:
        yield
        return
    if theta.shape != flat.data.shape:
        raise LayoutError(f"theta has shape {tuple(theta.shape)}, the flat buffer {tuple(flat.data.shape)}")
    saved = flat.data.detach().clone()
    with torch.no_grad():
        flat.data.copy_(theta)
    try:
        yield
    finally:
        with torch.no_grad():
            flat.data.copy_(saved)


def _split_segments(model: nn.Module, flat: FlatParams) -> tuple[list, list]:
    """(segments exported by peft's save_pretrained, segments exported as a state dict)."""
    if not _is_peft_model(model.backbone):
        return [], list(flat.layout)
    # Methods that wrap the backbone with peft (lora, text prompts) train nothing else inside it.
    peft_segs = [s for s in flat.layout if s.name.startswith("backbone.")]
    return peft_segs, [s for s in flat.layout if not s.name.startswith("backbone.")]


def export_peft(model: nn.Module, flat: FlatParams, theta: Optional[torch.Tensor], out_dir: Path, cfg) -> Path:
    """Export the trained parameters ``theta`` (default: the flat buffer's values) in the libraries' formats.

    ``out_dir`` gets (written to a temporary folder, then renamed):

    * where the backbone is a ``peft.PeftModel`` (``lora``; ``prompt`` on text encoders): peft's
      ``save_pretrained`` files (``adapter_config.json``, ``adapter_model.safetensors``), loadable with
      ``PeftModel.from_pretrained(backbone, out_dir)``;
    * ``trainable.safetensors``: every other trained tensor — for peft methods the head only; for the others
      (``bias``, ``head``, ``full``, ``adapter``, visual ``prompt``) all of them — named as in the backbone's
      own ``state_dict`` (our ``backbone.`` prefix stripped; adapters and visual prompts under their module
      names, e.g. ``blocks.0.adapter_attn.down.weight``, ``visual.prompt.embeddings``) and the head as
      ``head.weight`` / ``head.bias``; load with ``backbone.load_state_dict(sd, strict=False)`` after
      applying the same method;
    * ``model/`` (unless ``checkpoint.export_model=false``; methods in :data:`MERGEABLE`: the plain architecture with merged weights; adapters and prompts
      add modules the libraries' models do not have, so they are exported as trainable tensors only) — the whole
      classifier, loadable in one call by the backbone's library (:func:`_export_whole_model`):
      timm: ``timm.create_model("local-dir:EXPORT/model", pretrained=True)``; text: a sentence-transformers
      folder, ``SentenceTransformer("EXPORT/model").encode(texts)`` gives the logits;
    * ``export.json``: method, family, files, the config hash, ``model`` (folder and format) or
      ``model_not_exported`` (why).

    Args:
        model, flat: the model with its PEFT method applied and its flat buffer.
        theta: (n,) values to export (e.g. the global parameters); the model is left as it was.
        out_dir: folder to create (replaced if it exists).
        cfg: the run's :class:`~hpcfed.config.Config` (or a ``PeftConfig``).

    Raises:
        LayoutError: ``theta`` does not fit the flat buffer, or two tensors would get the same name.
    """
    import json
    import shutil

    out_dir = Path(out_dir)
    peft_cfg = getattr(cfg, "peft", cfg)
    family = getattr(getattr(cfg, "model", None), "family", None)
    wrapped = _is_peft_model(model.backbone)
    peft_segs, sd_segs = _split_segments(model, flat)
    src = flat.data if theta is None else theta
    tensors: dict[str, torch.Tensor] = {}
    for s in sd_segs:
        key = export_name(s.name, wrapped)
        if key in tensors:
            raise LayoutError(f"two trained tensors export as {key!r}")
        tensors[key] = src[s.offset:s.end].view(s.shape).detach().contiguous().cpu().clone()
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = [STATE_FILE]
    if wrapped:
        with _flat_values(flat, theta):
            model.backbone.save_pretrained(str(tmp))
        files += [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]  # + a folder per extra adapter
    save_file(tensors, str(tmp / STATE_FILE), metadata={"peft_method": str(peft_cfg.method)})
    checkpoint_cfg = getattr(cfg, "checkpoint", None)
    if checkpoint_cfg is not None and not checkpoint_cfg.export_model:
        whole, why_not = None, "checkpoint.export_model=false"
    else:
        try:
            with _flat_values(flat, theta):
                whole, why_not = _export_whole_model(model, cfg, tmp / MODEL_DIR)
        except Exception as e:  # noqa: BLE001 - the whole-model copy is a convenience: the tensors are written
            shutil.rmtree(tmp / MODEL_DIR, ignore_errors=True)
            whole, why_not = None, f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            log.warning("export %s: the whole-model copy %s; the trained tensors are exported", out_dir, why_not)
    if whole:
        files += [p.relative_to(tmp).as_posix() for p in (tmp / MODEL_DIR).rglob("*") if p.is_file()]
    meta = {
        "version": EXPORT_VERSION, "method": peft_cfg.method, "family": family, "peft_library": wrapped,
        "files": sorted(files + [EXPORT_META]), "state_dict_keys": sorted(tensors), "peft_tensors": len(peft_segs),
        "config_hash": cfg.hash() if hasattr(cfg, "hash") else None,
        "model": {"folder": MODEL_DIR, "format": whole} if whole else None, "model_not_exported": why_not,
    }
    (tmp / EXPORT_META).write_text(json.dumps(meta, indent=1) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def load_export(model: nn.Module, flat: FlatParams, export_dir: Path) -> torch.Tensor:
    """Read a folder written by :func:`export_peft` into an (n,) vector of ``flat``'s layout.

    ``model`` must have the same PEFT method applied (same sizes); its parameters are left unchanged.

    Raises:
        LayoutError: missing folder/files, or an export of another method/shape (names the first mismatch).
    """
    import json

    export_dir = Path(export_dir)
    meta_path = export_dir / EXPORT_META
    if not export_dir.is_dir():
        raise LayoutError(f"export {export_dir}: no such folder")
    if not meta_path.is_file():
        raise LayoutError(f"export {export_dir}: no {EXPORT_META} (not written by export_peft)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise LayoutError(f"{meta_path}: not valid JSON ({e})") from None
    wrapped = _is_peft_model(model.backbone)
    if bool(meta.get("peft_library")) != wrapped:
        raise LayoutError(f"export {export_dir}: method {meta.get('method')!r} "
                          f"({'peft' if meta.get('peft_library') else 'state dict'} format) does not fit this model "
                          f"({'peft' if wrapped else 'state dict'} format)")
    try:
        sd = load_file(str(export_dir / STATE_FILE))
    except (SafetensorError, OSError) as e:
        raise LayoutError(f"{export_dir / STATE_FILE}: not a readable safetensors file ({e})") from None
    peft_segs, sd_segs = _split_segments(model, flat)
    out = flat.data.detach().clone()
    want = {export_name(s.name, wrapped): s for s in sd_segs}
    extra = sorted(set(sd) - set(want))
    if extra:
        raise LayoutError(f"{export_dir / STATE_FILE}: tensor {extra[0]!r} is not trained by this model "
                          f"(method {meta.get('method')!r} exported, is the model's method the same?)")
    for key, s in want.items():
        t = sd.get(key)
        if t is None:
            raise LayoutError(f"{export_dir / STATE_FILE}: tensor {key!r} missing")
        if tuple(t.shape) != s.shape:
            raise LayoutError(f"{export_dir / STATE_FILE}: tensor {key!r} has shape {tuple(t.shape)}, the model has "
                              f"{s.shape}")
        out[s.offset:s.end] = t.reshape(-1).to(out.dtype)
    if wrapped:
        _load_peft_part(model, flat, export_dir, peft_segs, out)
    return out


def _load_peft_part(model: nn.Module, flat: FlatParams, export_dir: Path, segs: list, out: torch.Tensor) -> None:
    """Load peft's adapter files into the peft segments of ``out`` (through the model, then restored).

    Every adapter of the backbone is read: ``default`` from ``export_dir``, any other (e.g. FedYolo's per-task
    LoRA) from the sub-folder of its name, where peft's ``save_pretrained`` writes it.

    Raises:
        LayoutError: an adapter's file is missing, or its tensors do not fit the model (names the folder).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    names = list(getattr(model.backbone, "peft_config", None) or ["default"])
    adapters = []
    for name in names:
        folder = export_dir if name == "default" else export_dir / name
        if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise LayoutError(f"export {folder}: no adapter_model.safetensors (peft save_pretrained output)")
        loaded = load_peft_weights(str(folder), device="cpu")
        expected = get_peft_model_state_dict(model.backbone, adapter_name=name)
        for k in sorted(set(loaded) | set(expected)):
            if k not in expected:
                raise LayoutError(f"{folder}: peft tensor {k!r} is not in this model (another method or targets?)")
            if k not in loaded:
                raise LayoutError(f"{folder}: peft tensor {k!r} missing")
            if loaded[k].shape != expected[k].shape:
                raise LayoutError(f"{folder}: peft tensor {k!r} has shape {tuple(loaded[k].shape)}, the model has "
                                  f"{tuple(expected[k].shape)}")
        adapters.append((name, loaded))
    saved = flat.data.detach().clone()
    try:
        with torch.no_grad():
            for name, loaded in adapters:  # copies into the parameters = views of flat.data
                set_peft_model_state_dict(model.backbone, loaded, adapter_name=name)
            for s in segs:
                out[s.offset:s.end] = flat.data[s.offset:s.end]
    finally:
        with torch.no_grad():
            flat.data.copy_(saved)


# ---------------------------------------------------------------------------------------------------------
# The whole model, in the backbone library's own format
# ---------------------------------------------------------------------------------------------------------

def _export_whole_model(model: nn.Module, cfg, out: Path) -> tuple[Optional[str], Optional[str]]:
    """Write the whole classifier (backbone with the trained values, LoRA merged, and the head) to ``out``.

    * ``timm_vit``: timm's hub layout (``config.json``: architecture, model_args, ``num_classes`` = K,
      ``pretrained_cfg`` with the input size / mean / std hpcfed normalises with;
      ``model.safetensors``: the backbone's state dict + our head as timm's ``head``), so
      ``timm.create_model("local-dir:out", pretrained=True)`` is the classifier on normalised pixels;
    * ``hf_text``: a sentence-transformers folder: the transformers encoder (``AutoModel`` loads it alone) and its
      tokenizer, hpcfed's pooling (``model.pooling``: mean or cls) and the head as a ``Dense`` layer with identity
      activation, so ``SentenceTransformer(out).encode(texts)`` gives hpcfed's logits. Not
      ``AutoModelForSequenceClassification``: its heads (BERT's tanh pooler on the first token, RoBERTa's
      dense-tanh-dense) cannot express hpcfed's mean pooling nor a linear layer on the first token;
    * ``open_clip`` and the other methods: nothing (the CLIP classifier keeps only the vision tower, which no
      open_clip model loads alone; use :func:`load_export`).

    Returns:
        (format written or None, why nothing was written or None).
    """
    method = getattr(getattr(cfg, "peft", cfg), "method", None)
    family = getattr(getattr(cfg, "model", None), "family", None)
    if method not in MERGEABLE:
        return None, f"peft.method={method!r} adds modules the plain architecture has no place for"
    if family not in ("timm_vit", "hf_text"):
        return None, f"model.family={family!r}: no library model holds the classifier (use hpcfed's load_export)"
    if not isinstance(getattr(model, "head", None), nn.Linear):
        return None, "the method's head is not one linear layer (e.g. FedYolo's per-task heads)"
    if family == "hf_text":
        import importlib.util

        if importlib.util.find_spec("sentence_transformers") is None:
            return None, "sentence-transformers is not installed (pip install sentence-transformers)"
        if not _tokenizer_name(cfg):
            return None, "no tokenizer to ship (data.tokenizer, model.path and model.name are null)"
    import copy

    backbone = copy.deepcopy(model.backbone)
    if _is_peft_model(backbone):
        backbone = backbone.merge_and_unload()
    out.mkdir(parents=True)
    if family == "timm_vit":
        _write_timm(backbone, model, cfg, out)
        return "timm", None
    _write_sentence_transformer(backbone, model, cfg, out)
    return "sentence-transformers", None


def _write_timm(backbone: nn.Module, model: nn.Module, cfg, out: Path) -> None:
    import json

    mc = cfg.model
    pc = dict(getattr(backbone, "pretrained_cfg", None) or {})
    arch = pc.get("architecture")
    args = {}
    if mc.name:  # the source repo's own model_args (sizes as built below)
        from hpcfed.models.hub import snapshot_folder

        args = json.loads((snapshot_folder(mc) / "config.json").read_text()).get("model_args", {})
    if not arch:  # model.arch=tiny: a VisionTransformer built from the size keys
        arch = "vit_base_patch16_224"
        args = {"embed_dim": mc.hidden_size, "depth": mc.num_layers, "num_heads": mc.num_heads,
                "mlp_ratio": mc.intermediate_size / mc.hidden_size}
    pe = getattr(backbone, "patch_embed", None)
    if pe is not None:
        args.update(img_size=int(pe.img_size[0]), patch_size=int(pe.patch_size[0]))
    size = int(getattr(model, "img_size", None) or args.get("img_size") or 224)
    k = model.head.out_features
    pc.update(architecture=arch, num_classes=k, input_size=[3, size, size], classifier="head",
              mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
    pc = {key: v for key, v in pc.items() if key not in ("file", "hf_hub_id", "source", "url")}
    conf = {"architecture": arch, "num_classes": k, "num_features": int(backbone.num_features),
            "model_args": args, "pretrained_cfg": pc}
    sd = {key: v.detach().contiguous().cpu() for key, v in backbone.state_dict().items()}
    sd.update({f"head.{n}": t.detach().contiguous().cpu() for n, t in model.head.state_dict().items()})
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(conf, indent=1) + "\n")


def _write_sentence_transformer(backbone: nn.Module, model: nn.Module, cfg, out: Path) -> None:
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import AutoTokenizer

    tok_name = _tokenizer_name(cfg)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        backbone.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tok_name).save_pretrained(tmp)
        dim = backbone.config.hidden_size
        head = model.head
        st = SentenceTransformer(modules=[
            Transformer(tmp, max_seq_length=cfg.data.max_length),
            Pooling(dim, pooling_mode=cfg.model.pooling),
            Dense(dim, head.out_features, activation_function=nn.Identity(),
                  init_weight=head.weight.detach().cpu().clone(), init_bias=head.bias.detach().cpu().clone()),
        ], device="cpu")
        st.save(str(out))


def _tokenizer_name(cfg) -> Optional[str]:
    data, mc = getattr(cfg, "data", None), getattr(cfg, "model", None)
    return getattr(data, "tokenizer", None) or getattr(mc, "path", None) or getattr(mc, "name", None)
