"""Backbones (transformers, timm, open_clip) with a classification head. Knows nothing of FL."""

from hpcfed.models.build import ImageClassifier, ModelError, TextClassifier, build_model

__all__ = ["ImageClassifier", "ModelError", "TextClassifier", "build_model"]
