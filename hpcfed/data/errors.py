"""The data error type (kept apart so that every module of ``hpcfed.data`` can raise it without cycles)."""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input or a bad shard, with a one-line message naming the file and the problem."""
