"""The error type of model building (kept apart so that every backbone module can raise it)."""


class ModelError(ValueError):
    """A model that cannot be built from the config (missing path, unknown architecture)."""
