"""Study files: reading a study YAML (plus command-line words), expanding its grid, cells and seeds into
:class:`Cell` objects with readable ids, grouping them into arms, adding the cells of its learning-rate
sweeps, and validating every cell's config as :func:`hpcfed.compose.load_run_config` does (the words the cells
share merged once, :class:`hpcfed.config.SharedPrefixLoader`).

Nothing here runs anything; :mod:`hpcfed.study.runner` does. The grid and id helpers live in
:mod:`hpcfed.study.expand`, the statistical keys (``seeds``, ``claims``, ``lr_sweep``, ``metrics``) in
:mod:`hpcfed.study.design`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from hpcfed.compose import finish_config
from hpcfed.config import Config, ConfigError, SharedPrefixLoader
from hpcfed.study import design
from hpcfed.study.design import SEED_AXIS, Claim, LrSweep
from hpcfed.study.errors import StudyError
from hpcfed.study.expand import (
    MAX_ID_CHARS,
    RESERVED_CONFIG_KEYS,
    base_words,
    cell_ids,
    digest,
    expand_cells,
    format_value,
    parse_axes,
    slug_value,
    to_words,
)

STUDY_KEYS = ("name", "base_config", "base", "grid", "cells", "seeds", "seed_keys", "lr_sweep", "claims",
              "metrics", "target_acc", "ranks", "out_dir", "timeout_s", "basin", "reuse_from")
"""Top-level keys of a study YAML."""
CLI_STUDY_KEYS = ("name", "base_config", "target_acc", "ranks", "out_dir", "timeout_s", "seeds", "reuse_from")
"""Study keys that a command-line ``key=value`` sets (every other word is a config override)."""
SWEEP_PREFIX = "sweep-"
"""Cell ids of learning-rate sweep cells start with this."""

__all__ = ["CLI_STUDY_KEYS", "MAX_ID_CHARS", "RESERVED_CONFIG_KEYS", "STUDY_KEYS", "SWEEP_PREFIX", "Cell", "Study",
           "StudyError", "cell_argv", "cell_ranks", "load_study", "validate_cell"]


@dataclass
class Cell:
    """One run of the study."""

    id: str
    """Readable, filesystem-safe slug of the cell's own overrides; its run folder's name."""
    words: list[str]
    """The cell's own overrides (grid values or an explicit cell, and its seed), ``key=value``."""
    labels: dict[str, Any]
    """Axis name -> the value or label shown in the table (and used for the id)."""
    cfg: Optional[Config] = None
    """The validated effective config (set by :func:`load_study`, again when a sweep picks the cell's lr)."""
    arm: str = ""
    """Id of the cell's arm (the cell without its seed); a sweep cell: the arm it sweeps for."""
    seed: Optional[int] = None
    """The ``seed`` label, else the config's ``seed``."""
    kind: str = "main"
    """``main`` (summarised per arm) or ``sweep`` (a learning-rate sweep cell)."""
    chosen: dict[str, Any] = field(default_factory=dict)
    """Main cell of a swept arm: ``{key: value}`` picked by the sweep, applied after :attr:`words`."""
    blocked: str = ""
    """Why the cell cannot run yet (its arm's sweep is not resolved); empty when it can."""
    _hash: Optional[tuple] = field(default=None, repr=False, compare=False)

    def config_hash(self) -> str:
        """``cfg.hash()`` (what a run's ``run_info.json`` records), computed once per config object."""
        if self._hash is None or self._hash[0] is not self.cfg:
            self._hash = (self.cfg, self.cfg.hash())
        return self._hash[1]


@dataclass
class Study:
    """A loaded study: its settings, cells, arms, claims and sweeps (from :func:`load_study`)."""

    name: str
    path: Path
    """The study YAML."""
    base_config: Optional[str]
    base_words: list[str]
    axes: list[str]
    """Axis columns of the table: the grid's axes, keys first seen in ``cells``, ``seed``, swept keys."""
    cells: list[Cell]
    """Sweep cells first, then the main cells (the order of ``--cells`` indices)."""
    target_acc: Optional[float]
    ranks: int
    out_dir: Path
    timeout_s: Optional[float]
    reuse_from: tuple[Path, ...] = ()
    """Folders of other studies (their ``out_dir``) whose finished cells with this cell's config hash are copied
    in instead of run (:func:`hpcfed.study.runner.adopt_reusable`)."""
    cli_words: list[str] = field(default_factory=list)
    """Config overrides from the command line, applied to every cell after its own."""
    command: str = ""
    """The command line that started the study (recorded in results.md)."""
    seeds: Optional[list[int]] = None
    """The ``seeds`` axis (None: no such axis)."""
    arms: dict[str, dict] = field(default_factory=dict)
    """Arm id -> its labels (a cell's labels without the seed), in order of first appearance."""
    metrics: tuple[str, ...] = design.DEFAULT_METRICS
    claims: list[Claim] = field(default_factory=list)
    sweeps: list[LrSweep] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    """Arm id -> the swept value picked for it (filled by :func:`hpcfed.study.sweep.resolve_sweeps`)."""
    sweep_entries: dict[str, dict] = field(default_factory=dict)
    """Arm id -> its ``lr_sweep.json`` entry (scores per value, the pick), once known."""
    basin: Any = None
    """The ``basin`` mapping as written (parsed by :func:`hpcfed.study.basin.parse_basin` when used)."""
    loader: Optional[SharedPrefixLoader] = field(default=None, repr=False, compare=False)
    """Loads the cells' configs, merging their shared words once (built by :func:`validate_cell`)."""

    @property
    def main_cells(self) -> list[Cell]:
        """The cells summarised per arm (all but the sweep cells), in order."""
        return [c for c in self.cells if c.kind == "main"]


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


def _scalars(data: dict, path: Path, where: str) -> dict[str, Any]:
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
    reuse = data.get("reuse_from") or []
    if isinstance(reuse, str):
        reuse = [reuse]
    if not isinstance(reuse, list) or not all(isinstance(r, str) and r for r in reuse):
        raise StudyError(f"{where}: reuse_from={data.get('reuse_from')!r} must be a list of study folders")
    return dict(name=name, ranks=ranks, base_config=base_config, reuse_from=tuple(Path(r) for r in reuse),
                target_acc=None if target is None else float(target),
                timeout_s=None if timeout is None else float(timeout),
                out_dir=Path(str(data.get("out_dir") or Path("runs") / "study" / name)))


def _add_seeds(expanded: list[tuple[dict, dict]], base: list[str], seeds: list[int], seed_keys: tuple[str, ...],
               where: str) -> list[tuple[dict, dict]]:
    """Every cell once per seed: label ``seed``, overrides ``<seed key>=<seed>`` for each seed key."""
    for key in seed_keys:
        if any(w.split("=", 1)[0] == key for w in base) or any(key in ov for _, ov in expanded):
            raise StudyError(f"{where}: seeds: '{key}' is also set in base, grid or cells; set it in one place")
    if any(SEED_AXIS in labels for labels, _ in expanded):
        raise StudyError(f"{where}: seeds: an axis or cell key is already called '{SEED_AXIS}'")
    return [({**labels, SEED_AXIS: s}, {**ov, **{k: s for k in seed_keys}})
            for labels, ov in expanded for s in seeds]


def _arms(columns: list[str], expanded: list[tuple[dict, dict]], drop: set[str]) -> tuple[list[str], dict, dict]:
    """Each cell's arm id, and arm id -> labels / overrides (both without the seed)."""
    keyed: dict[tuple, tuple[dict, dict]] = {}
    per_cell = []
    for labels, ov in expanded:
        a_labels = {k: v for k, v in labels.items() if k not in drop}
        a_ov = {k: v for k, v in ov.items() if k not in drop}
        key = tuple(sorted((k, repr(v)) for k, v in a_labels.items()))  # the order of a cell's keys is free
        keyed.setdefault(key, (a_labels, a_ov))
        per_cell.append(key)
    arm_list = list(keyed.values())
    ids = cell_ids([c for c in columns if c not in drop], arm_list, [to_words(ov) for _, ov in arm_list])
    by_key = dict(zip(keyed, ids))
    return ([by_key[k] for k in per_cell], {i: lab for i, (lab, _) in zip(ids, arm_list)},
            {i: ov for i, (_, ov) in zip(ids, arm_list)})


def _sweep_cells(sweeps: list[LrSweep], arm_ov: dict[str, dict], arms: dict[str, dict],
                 seed_keys: tuple[str, ...]) -> list[Cell]:
    out = []
    for sw in sweeps:
        short = sw.key.rsplit(".", 1)[-1]
        for arm in sw.arms:
            for v in sw.values:
                for s in (sw.seeds if sw.seeds is not None else (None,)):
                    ov = {**arm_ov[arm], **({} if s is None else {k: s for k in seed_keys})}
                    if sw.rounds is not None:
                        ov["fl.rounds"] = sw.rounds
                    ov[sw.key] = v
                    words = to_words(ov)
                    cid = f"{SWEEP_PREFIX}{arm}_{short}-{slug_value(v)}" + ("" if s is None else f"_seed-{s}")
                    if len(cid) > MAX_ID_CHARS:
                        cid = cid[:MAX_ID_CHARS - 7].rstrip("-_.") + "-" + digest(words)
                    labels = {**arms[arm], sw.key: v, **({} if s is None else {SEED_AXIS: s})}
                    out.append(Cell(cid, words, labels, arm=arm, seed=s, kind="sweep"))
    return out


def load_study(path: str | Path, argv: Sequence[str] = ()) -> Study:
    """Read a study YAML (plus command-line words), expand its cells (grid × seeds, extra cells, sweep cells),
    group them into arms, parse its claims and sweeps, and validate every cell's config.

    Main cells of a swept arm are validated with the sweep's first value until
    :func:`hpcfed.study.sweep.resolve_sweeps` sets the picked one (they are :attr:`Cell.blocked` till then).

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
    scalars = _scalars(data, path, where)
    seeds = design.parse_seeds(data.get("seeds"), where)
    seed_keys = design.parse_seed_keys(data.get("seed_keys"), where)

    base = base_words(data.get("base"), f"{where}: base")
    columns, expanded = expand_cells(parse_axes(data.get("grid"), f"{where}: grid"), data.get("cells"),
                                     f"{where}: cells")
    if not expanded:
        raise StudyError(f"{where}: no cells (give a grid and/or cells)")
    if seeds is not None:
        expanded = _add_seeds(expanded, base, seeds, seed_keys, where)
        columns.append(SEED_AXIS)
    cell_words = [to_words(ov) for _, ov in expanded]
    ids = cell_ids(columns, expanded, cell_words)
    arm_of, arms, arm_ov = _arms(columns, expanded, {SEED_AXIS, *seed_keys})
    cells = [Cell(cid, w, labels, arm=arm, seed=labels.get(SEED_AXIS))
             for cid, w, (labels, _), arm in zip(ids, cell_words, expanded, arm_of)]
    sweeps = design.parse_sweeps(data.get("lr_sweep"), arms, seeds, where)
    sweep_cells = _sweep_cells(sweeps, arm_ov, arms, seed_keys)
    taken = {c.id for c in cells}
    for c in sweep_cells:
        if c.id in taken:
            raise StudyError(f"{where}: lr_sweep: two cells have the id {c.id}")
        taken.add(c.id)
    for sw in sweeps:
        if sw.key not in columns:
            columns.append(sw.key)
        for c in cells:
            if c.arm in sw.arms:
                c.chosen = {sw.key: sw.values[0]}
                c.blocked = f"the lr sweep of arm {c.arm} is not resolved yet"
    claims = design.parse_claims(data.get("claims"), arms, where)
    metrics = design.parse_metrics(data.get("metrics"), where)
    metrics += tuple(m for m in dict.fromkeys(c.metric for c in claims) if m not in metrics)
    study = Study(name=scalars["name"], path=path, base_config=scalars["base_config"], base_words=base,
                  axes=columns, cells=sweep_cells + cells, target_acc=scalars["target_acc"],
                  ranks=scalars["ranks"], out_dir=scalars["out_dir"], timeout_s=scalars["timeout_s"],
                  reuse_from=scalars["reuse_from"], cli_words=cli_config, seeds=seeds, arms=arms, metrics=metrics,
                  claims=claims, sweeps=sweeps,
                  basin=data.get("basin"))
    for cell in study.cells:
        validate_cell(study, cell)
        if cell.seed is None:
            cell.seed = cell.cfg.seed
    return study


def validate_cell(study: Study, cell: Cell) -> None:
    """Load the cell's effective config (the schema and the registries' names) into :attr:`Cell.cfg`.

    Raises:
        StudyError: the config is invalid (one line naming the study file, the cell and the key).
    """
    shared = _shared_words(study)
    if study.loader is None or study.loader.prefix != shared:
        study.loader = SharedPrefixLoader(shared)  # the cells' shared words are merged once per study
    try:
        cell.cfg = finish_config(study.loader.load(_own_words(study, cell)))
    except ConfigError as e:
        raise StudyError(f"study file {study.path}: cell {cell.id}: {e}") from None


def cell_ranks(study: Study, cell: Cell) -> int:
    """The number of ranks a cell runs on: the study's ``ranks``, except 1 for a centralized cell.

    A centralized cell trains one pooled client (a cohort of one, :mod:`hpcfed.fl.baselines`), so only one rank
    ever works; the others would wait in the round's all-reduce. On one rank the same global model comes out (the
    result does not depend on the number of ranks, DESIGN.md; up to the float rounding of a different number of
    threads) and that rank gets the node's cores (``dist.num_threads`` unset divides them among the ranks on the
    node): on a 2-core node a round of a centralized MiniLM cell took 35.7 s on 2 ranks x 1 thread and 21.1 s on
    1 rank x 2 threads (``docs/results/benchmarks/centralized_ranks/``).
    """
    return 1 if cell.cfg.fl.mode == "centralized" else study.ranks


def cell_argv(study: Study, cell: Cell) -> list[str]:
    """The ``hpcfed.main`` words of a cell (also what validation loads): ``config=<base_config>``,
    ``progress=false``, base, the cell's own words, its swept value, the command line's overrides, then
    ``name=<cell id> out_dir=<study out_dir>``."""
    return [*_shared_words(study), *_own_words(study, cell)]


def _shared_words(study: Study) -> list[str]:
    words = [f"config={study.base_config}"] if study.base_config else []
    return [*words, "progress=false", *study.base_words]


def _own_words(study: Study, cell: Cell) -> list[str]:
    chosen = [f"{k}={format_value(v)}" for k, v in cell.chosen.items()]
    return [*cell.words, *chosen, *study.cli_words, f"name={cell.id}", f"out_dir={study.out_dir}"]
