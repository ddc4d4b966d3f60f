"""The architecture is enforced, not hoped for (docs/architecture.md): import-linter's contracts in
pyproject.toml (layers, no cycles, no MPI / hpcfed.dist below the engine), plus what import-linter cannot
express — ``torch.distributed`` is a submodule of an external package, and ``kernels/`` is mapped into
``hpcfed.kernels`` from outside the package folder, so its graph does not see it."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PKG = REPO / "hpcfed"


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names imported from it, line) for every import statement of a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports not found: install the dev extra (pip install -e '.[dev]')")
    r = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("package", ["algorithms", "models", "peft", "data"])
def test_no_process_group_below_the_engine(package):
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}"
           for p in sorted((PKG / package).rglob("*.py"))
           for mod, names, line in _imports(p)
           if mod.startswith(("torch.distributed", "mpi4py")) or (mod == "torch" and "distributed" in names)]
    assert not bad, bad


def test_kernels_import_nothing_from_hpcfed():
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in sorted((REPO / "kernels").glob("*.py"))
           for mod, _, line in _imports(p) if mod.split(".")[0] == "hpcfed"]
    assert not bad, bad


def test_no_private_names_imported_across_modules():
    """`from hpcfed.x import _name` only from within hpcfed.x itself (or its package)."""
    bad = []
    for p in sorted(PKG.rglob("*.py")):
        me = _module_name(p)
        for mod, names, line in _imports(p):
            if mod.split(".")[0] != "hpcfed":
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and not (me == mod or me.startswith(mod + ".") or mod.startswith(me + ".")):
                bad.append(f"{p.relative_to(REPO)}:{line} from {mod} import {', '.join(private)}")
    assert not bad, bad


def test_config_is_the_ground_floor():
    """hpcfed.config imports nothing from hpcfed outside itself (registries are checked at the composition
    root)."""
    files = sorted((PKG / "config").glob("*.py"))
    assert len(files) >= 4  # the package: __init__, checks, sections, load
    bad = [f"{f.relative_to(REPO)}:{line} imports {mod}" for f in files for mod, _, line in _imports(f)
           if mod.split(".")[0] == "hpcfed" and not mod.startswith("hpcfed.config")]
    assert not bad, bad


def test_every_subpackage_is_installed():
    """pyproject.toml lists the packages explicitly: a new subpackage missing there works in an editable
    install and vanishes from a regular one."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {_module_name(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    assert on_disk - listed == set(), f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
