"""Packaging hazard: the repository's top-level kernels/ folder must ship only as hpcfed.kernels.

Hugging Face ``transformers`` probes for the Hub ``kernels`` package by name
(``transformers.utils.is_kernels_available``); a top-level ``kernels`` module installed by hpcfed would be
picked up (or break the probe) and flip transformers onto hub-kernel code paths.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _installed() -> bool:
    try:
        importlib.metadata.distribution("hpcfed")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _installed(), reason="hpcfed is not installed (pip install -e .)")


def _run_in_fresh_python(code: str, cwd: pathlib.Path) -> dict:
    """Run ``code`` in a fresh interpreter with the given cwd and without PYTHONPATH; return its JSON line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_top_level_kernels_module_outside_the_repo(tmp_path):
    assert not (tmp_path / "kernels").exists()
    res = _run_in_fresh_python(
        """
        import importlib.util, importlib.metadata, json, sys
        spec_before = importlib.util.find_spec("kernels")
        import hpcfed.kernels
        from transformers.utils import is_kernels_available
        available = is_kernels_available()
        print(json.dumps(dict(
            spec=None if spec_before is None else str(spec_before.origin or spec_before.submodule_search_locations),
            spec_after=importlib.util.find_spec("kernels") is not None,
            kernels_imported="kernels" in sys.modules,
            file=hpcfed.kernels.__file__,
            name=hpcfed.kernels.__name__,
            available=available,
            dists=importlib.metadata.packages_distributions().get("kernels", []),
            api=all(callable(getattr(hpcfed.kernels, f)) for f in (
                "masked_accumulate", "server_update", "masked_adamw_step", "masked_sgd_step",
                "resolve_backend", "init_server_state")),
        )))
        """,
        tmp_path,
    )
    assert res["spec"] is None, f"a top-level 'kernels' is importable outside the repo: {res['spec']}"
    assert not res["spec_after"] and not res["kernels_imported"]
    assert res["available"] is False
    assert "hpcfed" not in res["dists"], "the hpcfed distribution claims the top-level name 'kernels'"
    assert res["name"] == "hpcfed.kernels" and res["api"]
    file = pathlib.Path(res["file"]).resolve()
    # editable install -> the source tree's kernels/; regular install -> .../site-packages/hpcfed/kernels/
    assert file == REPO_ROOT / "kernels" / "__init__.py" or file.parent.parts[-2:] == ("hpcfed", "kernels"), file


def test_is_kernels_available_false_in_this_process():
    """Also from the test process, whose sys.path may contain the repository root."""
    import hpcfed.kernels  # noqa: F401
    from transformers.utils import import_utils

    import_utils.is_kernels_available.cache_clear()
    try:
        assert import_utils.is_kernels_available() is False
    finally:
        import_utils.is_kernels_available.cache_clear()


def test_repository_root_on_sys_path_is_harmless():
    """From the repository root the folder is importable as `kernels`; transformers' probe imports it (it
    finds a spec but no distribution metadata). It must answer False and get an empty module, not the kernels."""
    res = _run_in_fresh_python(
        """
        import json, sys
        import hpcfed.kernels
        from transformers.utils import is_kernels_available
        available = is_kernels_available()
        mod = sys.modules.get("kernels")
        print(json.dumps(dict(available=available, public=[n for n in dir(mod) if not n.startswith("_")]
                              if mod is not None else None, has_version=hasattr(mod, "__version__"))))
        """,
        REPO_ROOT,
    )
    assert res["available"] is False
    assert res["public"] in (None, []), f"top-level 'kernels' exposes {res['public']}"
    assert not res["has_version"]
