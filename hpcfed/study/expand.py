"""Expanding a study file's ``base``, ``grid`` and ``cells`` into per-cell overrides, and readable,
filesystem-safe cell ids (slugs of a cell's own values).

Pure functions of the YAML values; :mod:`hpcfed.study.spec` assembles them into a study.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from typing import Any, Sequence

from hpcfed.study.errors import StudyError

RESERVED_CONFIG_KEYS = ("name", "out_dir", "config")
"""Config words the study sets itself; not allowed in base/grid/cells."""
MAX_ID_CHARS = 80
"""Longest cell id before it is cut and given a digest of its overrides."""


def format_value(v: Any) -> str:
    """A value as the right-hand side of a dotlist word (YAML-parsable; strings pass through)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # lists / mappings: JSON is YAML flow style


def flatten(m: dict, where: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{dotted.key: value}`` (a mapping value is a section, never a value).

    Raises:
        StudyError: a key the study sets itself (``name``, ``out_dir``, ``config``).
    """
    out: dict[str, Any] = {}
    for k, v in m.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, where, key + "."))
        else:
            out[key] = v
    for key in out:
        if key in RESERVED_CONFIG_KEYS:
            raise StudyError(f"{where}: '{key}' is set by the study (per cell); remove it")
    return out


def to_words(m: dict[str, Any]) -> list[str]:
    """``{key: value}`` -> ``["key=value", ...]`` (values through :func:`format_value`)."""
    return [f"{k}={format_value(v)}" for k, v in m.items()]


def base_words(base: Any, where: str) -> list[str]:
    """The study's ``base`` (a mapping, nested or dotted, or a list of ``key=value``) as words.

    Raises:
        StudyError: not a mapping or list, a word without ``=``, or a key the study sets itself.
    """
    if base is None:
        return []
    if isinstance(base, dict):
        return to_words(flatten(base, where))
    if isinstance(base, list):
        out = []
        for w in base:
            if not isinstance(w, str) or "=" not in w:
                raise StudyError(f"{where}: {w!r} is not a 'key=value' string")
            if w.split("=", 1)[0] in RESERVED_CONFIG_KEYS:
                raise StudyError(f"{where}: '{w.split('=', 1)[0]}' is set by the study (per cell); remove it")
            out.append(w)
        return out
    raise StudyError(f"{where}: must be a mapping or a list of 'key=value' strings")


def parse_axes(grid: Any, where: str) -> list[tuple[str, list[tuple[Any, dict[str, Any]]], bool]]:
    """The grid as ``[(axis, [(label, overrides), ...], named), ...]``; ``named``: a label -> overrides axis.

    Raises:
        StudyError: the grid or an axis has the wrong shape, is empty, or names a key the study sets.
    """
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise StudyError(f"{where}: must be a mapping of axis -> list of values (or label -> overrides)")
    out = []
    for axis, values in grid.items():
        axis = str(axis)
        if axis in RESERVED_CONFIG_KEYS:
            raise StudyError(f"{where}.{axis}: '{axis}' is set by the study (per cell)")
        if isinstance(values, list):
            if not values:
                raise StudyError(f"{where}.{axis}: empty list of values")
            out.append((axis, [(v, {axis: v}) for v in values], False))
        elif isinstance(values, dict):
            if not values:
                raise StudyError(f"{where}.{axis}: empty mapping of labels")
            opts = []
            for label, ov in values.items():
                if ov is not None and not isinstance(ov, dict):
                    raise StudyError(f"{where}.{axis}.{label}: must be a mapping of config overrides")
                opts.append((label, flatten(ov or {}, f"{where}.{axis}.{label}")))
            out.append((axis, opts, True))
        else:
            raise StudyError(f"{where}.{axis}: must be a list of values or a mapping label -> overrides "
                             f"(got {type(values).__name__})")
    return out


def expand_cells(axes: list, cells: Any, where: str) -> tuple[list[str], list[tuple[dict, dict]]]:
    """All cells as ``(labels, overrides)``: the product of ``axes`` (from :func:`parse_axes`), then the explicit
    ``cells``; also the axis columns (the grid's axes, then keys first seen in ``cells``).

    Raises:
        StudyError: ``cells`` is not a list of mappings, or refers to a label a named axis lacks.
    """
    named = {a: dict(opts) for a, opts, is_named in axes if is_named}
    columns = [a for a, _, _ in axes]
    out: list[tuple[dict, dict]] = []
    if axes:
        for combo in itertools.product(*[opts for _, opts, _ in axes]):
            labels, ov = {}, {}
            for (axis, _, _), (label, o) in zip(axes, combo):
                labels[axis] = label
                ov.update(o)
            out.append((labels, ov))
    if cells is None:
        cells = []
    if not isinstance(cells, list):
        raise StudyError(f"{where}: must be a list of mappings of overrides")
    for i, c in enumerate(cells):
        here = f"{where}[{i}]"
        if not isinstance(c, dict):
            raise StudyError(f"{here}: must be a mapping of overrides")
        labels, ov = {}, {}
        for key, v in c.items():
            key = str(key)
            if key in named:
                if v not in named[key]:
                    raise StudyError(f"{here}: {key}={v!r} is not a label of that axis; choose one of: "
                                     f"{', '.join(map(str, named[key]))}")
                labels[key] = v
                ov.update(named[key][v])
            elif isinstance(v, dict):
                flat = flatten(v, here, key + ".")
                labels.update(flat)
                ov.update(flat)
            else:
                if key in RESERVED_CONFIG_KEYS:
                    raise StudyError(f"{here}: '{key}' is set by the study (per cell)")
                labels[key] = v
                ov[key] = v
        for key in labels:
            if key not in columns:
                columns.append(key)
        out.append((labels, ov))
    return columns, out


def slug_value(v: Any) -> str:
    """A value as part of a cell id: a path's last part; anything outside ``[A-Za-z0-9._+-]`` becomes ``-``."""
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif v is None:
        s = "null"
    elif isinstance(v, (list, tuple)):
        s = "+".join(slug_value(x) for x in v)
    else:
        s = str(v)
        if "/" in s:  # a path: its last part
            s = s.rstrip("/").rsplit("/", 1)[-1]
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-.")
    return s or "x"


def short_names(columns: Sequence[str]) -> dict[str, str]:
    """Shortest dotted suffix of each column that no other column ends with (``peft.method`` -> ``method``)."""
    out = {}
    for c in columns:
        parts = c.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != c and (o == suffix or o.endswith("." + suffix)) for o in columns):
                break
        out[c] = suffix.replace(".", "-")
    return out


def digest(items: Sequence[str], n: int = 6) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``items`` (one per line)."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:n]


def cell_ids(columns: Sequence[str], cells: list[tuple[dict, dict]], words: list[list[str]]) -> list[str]:
    """Readable ids of ``cells`` (``(labels, overrides)``; ``words``: each one's overrides as words): the
    labels as ``<short key>-<slug>`` joined by ``_`` (``base`` when none), cut at :data:`MAX_ID_CHARS`; ids that
    still collide get a digest of their words.

    Raises:
        StudyError: two cells have the same overrides.
    """
    short = short_names(columns)
    ids = []
    for (labels, _), w in zip(cells, words):
        cid = "_".join(f"{short[k]}-{slug_value(v)}" for k, v in labels.items()) or "base"
        if len(cid) > MAX_ID_CHARS:
            cid = cid[:MAX_ID_CHARS - 7].rstrip("-_.") + "-" + digest(w)
        ids.append(cid)
    seen: dict[str, list[int]] = {}
    for i, cid in enumerate(ids):
        seen.setdefault(cid, []).append(i)
    for cid, idx in seen.items():
        if len(idx) > 1:
            if len({tuple(sorted(words[i])) for i in idx}) < len(idx):
                raise StudyError(f"two cells have the same overrides ({cid}); remove one")
            for i in idx:
                ids[i] = f"{cid}-{digest(words[i])}"
    return ids
