"""Study files: reading a study YAML (plus command-line words), expanding its grid and cells into
:class:`Cell` objects with readable ids, and validating every cell's config with
:func:`hpcfed.config.load_config`.

Nothing here runs anything; :mod:`hpcfed.study.runner` does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from hpcfed.compose import load_run_config
from hpcfed.config import Config, ConfigError

STUDY_KEYS = ("name", "base_config", "base", "grid", "cells", "target_acc", "ranks", "out_dir", "timeout_s")
"""Top-level keys of a study YAML."""
CLI_STUDY_KEYS = ("name", "base_config", "target_acc", "ranks", "out_dir", "timeout_s")
"""Study keys that a command-line ``key=value`` sets (every other word is a config override)."""
RESERVED_CONFIG_KEYS = ("name", "out_dir", "config")
"""Config words the study sets itself; not allowed in base/grid/cells."""
MAX_ID_CHARS = 80
"""Longest cell id before it is cut and given a digest of its overrides."""


class StudyError(ValueError):
    """A bad study file, command line or cell config (one line)."""


@dataclass
class Cell:
    """One run of the study."""

    id: str
    """Readable, filesystem-safe slug of the cell's own overrides; its run folder's name."""
    words: list[str]
    """The cell's own overrides (grid values or an explicit cell), ``key=value``."""
    labels: dict[str, Any]
    """Axis name -> the value or label shown in the table (and used for the id)."""
    cfg: Optional[Config] = None
    """The validated effective config (set by :func:`load_study`)."""


@dataclass
class Study:
    name: str
    path: Path
    """The study YAML."""
    base_config: Optional[str]
    base_words: list[str]
    axes: list[str]
    """Axis columns of the table, in order: the grid's axes, then keys first seen in ``cells``."""
    cells: list[Cell]
    target_acc: Optional[float]
    ranks: int
    out_dir: Path
    timeout_s: Optional[float]
    cli_words: list[str] = field(default_factory=list)
    """Config overrides from the command line, applied to every cell after its own."""
    command: str = ""
    """The command line that started the study (recorded in results.md)."""


# ----------------------------------------------------------------------------------------------------------
# Parsing and expansion
# ----------------------------------------------------------------------------------------------------------

def _fmt_value(v: Any) -> str:
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


def _flatten(m: dict, where: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{dotted.key: value}`` (a mapping value is a section, never a value)."""
    out: dict[str, Any] = {}
    for k, v in m.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, where, key + "."))
        else:
            out[key] = v
    for key in out:
        if key in RESERVED_CONFIG_KEYS:
            raise StudyError(f"{where}: '{key}' is set by the study (per cell); remove it")
    return out


def _words(m: dict[str, Any]) -> list[str]:
    return [f"{k}={_fmt_value(v)}" for k, v in m.items()]


def _base_words(base: Any, where: str) -> list[str]:
    if base is None:
        return []
    if isinstance(base, dict):
        return _words(_flatten(base, where))
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


def _axes(grid: Any, where: str) -> list[tuple[str, list[tuple[Any, dict[str, Any]]], bool]]:
    """The grid as ``[(axis, [(label, overrides), ...], named), ...]``; ``named``: a label -> overrides axis."""
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise StudyError(f"{where}: must be a mapping of axis -> list of values (or label -> overrides)")
    axes = []
    for axis, values in grid.items():
        axis = str(axis)
        if axis in RESERVED_CONFIG_KEYS:
            raise StudyError(f"{where}.{axis}: '{axis}' is set by the study (per cell)")
        if isinstance(values, list):
            if not values:
                raise StudyError(f"{where}.{axis}: empty list of values")
            axes.append((axis, [(v, {axis: v}) for v in values], False))
        elif isinstance(values, dict):
            if not values:
                raise StudyError(f"{where}.{axis}: empty mapping of labels")
            opts = []
            for label, ov in values.items():
                if ov is not None and not isinstance(ov, dict):
                    raise StudyError(f"{where}.{axis}.{label}: must be a mapping of config overrides")
                opts.append((label, _flatten(ov or {}, f"{where}.{axis}.{label}")))
            axes.append((axis, opts, True))
        else:
            raise StudyError(f"{where}.{axis}: must be a list of values or a mapping label -> overrides "
                             f"(got {type(values).__name__})")
    return axes


def _expand(axes, cells: Any, where: str) -> tuple[list[str], list[tuple[dict, dict]]]:
    """All cells as ``(labels, overrides)``: the grid's product, then the explicit cells."""
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
                flat = _flatten(v, here, key + ".")
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


def _slug_value(v: Any) -> str:
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif v is None:
        s = "null"
    elif isinstance(v, (list, tuple)):
        s = "+".join(_slug_value(x) for x in v)
    else:
        s = str(v)
        if "/" in s:  # a path: its last part
            s = s.rstrip("/").rsplit("/", 1)[-1]
    s = re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-.")
    return s or "x"


def _short_names(columns: Sequence[str]) -> dict[str, str]:
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


def _digest(words: Sequence[str], n: int = 6) -> str:
    return hashlib.sha256("\n".join(words).encode()).hexdigest()[:n]


def _cell_ids(columns: Sequence[str], cells: list[tuple[dict, dict]], words: list[list[str]]) -> list[str]:
    short = _short_names(columns)
    ids = []
    for (labels, _), w in zip(cells, words):
        cid = "_".join(f"{short[k]}-{_slug_value(v)}" for k, v in labels.items()) or "base"
        if len(cid) > MAX_ID_CHARS:
            cid = cid[:MAX_ID_CHARS - 7].rstrip("-_.") + "-" + _digest(w)
        ids.append(cid)
    seen: dict[str, list[int]] = {}
    for i, cid in enumerate(ids):
        seen.setdefault(cid, []).append(i)
    for cid, idx in seen.items():
        if len(idx) > 1:
            if len({tuple(sorted(words[i])) for i in idx}) < len(idx):
                raise StudyError(f"two cells have the same overrides ({cid}); remove one")
            for i in idx:
                ids[i] = f"{cid}-{_digest(words[i])}"
    return ids


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise StudyError(f"study file {path}: not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise StudyError(f"study file {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise StudyError(f"study file {path}: top level must be a mapping")
    return data


def _parse_cli_words(words: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    study, config = {}, []
    for w in words:
        if "=" not in w:
            raise StudyError(f"command-line argument {w!r} is not key=value")
        key, value = w.split("=", 1)
        if key in CLI_STUDY_KEYS:
            try:
                study[key] = yaml.safe_load(value) if value else None
            except yaml.YAMLError:
                raise StudyError(f"command line: cannot parse {w!r}") from None
        elif key == "config":
            raise StudyError("command line: use base_config=FILE to change the study's run YAML")
        else:
            config.append(w)
    return study, config


def load_study(path: str | Path, argv: Sequence[str] = ()) -> Study:
    """Read a study YAML (plus command-line words), expand its cells and validate every cell's config.

    Raises:
        StudyError: one line naming the file and key (or the cell and config key) that is wrong.
    """
    path = Path(path)
    data = _read_yaml(path)
    unknown = [k for k in data if k not in STUDY_KEYS]
    if unknown:
        raise StudyError(f"study file {path}: unknown key '{unknown[0]}'; valid keys: {', '.join(STUDY_KEYS)}")
    cli_study, cli_config = _parse_cli_words(argv)
    data.update(cli_study)
    where = f"study file {path}"

    name = data.get("name") or path.stem
    if not isinstance(name, str) or "/" in name or name in (".", ".."):
        raise StudyError(f"{where}: name={name!r} must be a folder name without '/'")
    ranks = data.get("ranks", 1)
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise StudyError(f"{where}: ranks={ranks!r} must be an integer >= 1")
    target = data.get("target_acc")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))
                               or not 0.0 <= target <= 1.0):
        raise StudyError(f"{where}: target_acc={target!r} must be a number in [0, 1] or null")
    timeout = data.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise StudyError(f"{where}: timeout_s={timeout!r} must be a number > 0 or null")
    base_config = data.get("base_config")
    if base_config is not None and not isinstance(base_config, str):
        raise StudyError(f"{where}: base_config must be a path")
    out_dir = Path(str(data.get("out_dir") or Path("runs") / "study" / name))

    base = _base_words(data.get("base"), f"{where}: base")
    columns, expanded = _expand(_axes(data.get("grid"), f"{where}: grid"), data.get("cells"),
                                f"{where}: cells")
    if not expanded:
        raise StudyError(f"{where}: no cells (give a grid and/or cells)")
    cell_words = [_words(ov) for _, ov in expanded]
    ids = _cell_ids(columns, expanded, cell_words)
    study = Study(name=name, path=path, base_config=base_config, base_words=base, axes=columns,
                  cells=[Cell(cid, w, labels) for cid, w, (labels, _) in zip(ids, cell_words, expanded)],
                  target_acc=None if target is None else float(target), ranks=ranks, out_dir=out_dir,
                  timeout_s=None if timeout is None else float(timeout), cli_words=cli_config)
    for cell in study.cells:
        try:
            cell.cfg = load_run_config(cell_argv(study, cell))  # the schema and the registries' names
        except ConfigError as e:
            raise StudyError(f"{where}: cell {cell.id}: {e}") from None
    return study


def cell_argv(study: Study, cell: Cell) -> list[str]:
    """The ``hpcfed.main`` words of a cell (also what validation loads)."""
    words = [f"config={study.base_config}"] if study.base_config else []
    return [*words, "progress=false", *study.base_words, *cell.words, *study.cli_words, f"name={cell.id}",
            f"out_dir={study.out_dir}"]
