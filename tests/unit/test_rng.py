"""The RNG-stream table: tags unique per namespace, no stray stream literals in hpcfed, streams independent."""

import ast
import enum
from pathlib import Path

import numpy as np

from hpcfed import rng
from hpcfed.fl.sampling import client_seed, cohort_for_round

ROOT = Path(rng.__file__).parent


def _tables() -> list[type[enum.IntEnum]]:
    return [v for v in vars(rng).values() if isinstance(v, type) and issubclass(v, enum.IntEnum)
            and v is not enum.IntEnum]


def test_tags_are_unique_within_each_namespace():
    tables = _tables()
    assert {t.__name__ for t in tables} == {"TrainStream", "DataStream", "MethodStream", "FractalStream"}
    for t in tables:
        values = [m.value for m in t]
        # an IntEnum silently makes a duplicate value an alias: count the declared names instead
        assert len(t.__members__) == len(set(values)), f"{t.__name__} reuses a tag"


def test_no_seeded_generator_outside_the_table():
    """Every default_rng / SeedSequence keyed on a list goes through hpcfed.rng (no bare tags like 7)."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if path.name == "rng.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("default_rng", "SeedSequence") and node.args
                    and isinstance(node.args[0], ast.List)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_generator_matches_the_documented_formula_and_streams_differ():
    a = rng.generator(5, rng.TrainStream.COHORT, 3).random(4)
    np.testing.assert_array_equal(a, np.random.default_rng([5, 1, 3]).random(4))
    b = rng.generator(5, rng.TrainStream.FAULT, 3).random(4)
    assert not np.array_equal(a, b)


def test_seed63_is_63_bit_and_keyed_on_every_entry():
    seeds = {rng.seed63([0, rng.TrainStream.CLIENT, r, c]) for r in range(3) for c in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**63 for s in seeds)
    assert client_seed(0, 2, 7) == rng.seed63([0, 2, 2, 7])
    assert cohort_for_round(0, 1, 100, 5) == sorted(
        int(c) for c in np.random.default_rng([0, 1, 1]).choice(100, size=5, replace=False))
