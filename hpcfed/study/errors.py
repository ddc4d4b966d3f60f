"""The study's one error type (imported by every module of the package that checks input)."""

from __future__ import annotations


class StudyError(ValueError):
    """A bad study file, command line or cell config: one line naming the file and the key that is wrong."""
