"""Regenerate requirements/lock.txt (``make lock``): the pins a fresh ``pip install -e '.[dev,mpi]'`` resolves.

The lock covers pyproject.toml's dependencies plus the ``dev`` and ``mpi`` extras, for Linux x86_64 (manylinux_2_28) and
CPython 3.11, and is resolved by uv (``uv pip compile``) from the same places and under the same caps that pip
uses on this machine: the index, extra indexes, find-links and constraint files of ``pip config list`` (e.g. a
global constraints file capping torch), with ``--index-strategy unsafe-best-match`` so that, as with pip, the
highest allowed version on any of those indexes wins. The exact command is written into the lock's header.

uv comes from ``$UV`` if set, else it is installed (version ``UV_VERSION``) into a throwaway virtual
environment under ``$TMPDIR`` (never into the project's .venv).

Usage: ``python3 requirements/lock.py [OUTPUT]`` (default requirements/lock.txt).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

UV_VERSION = "0.13.9"
ROOT = Path(__file__).resolve().parents[1]
PLATFORM = "x86_64-manylinux_2_28"
PYTHON_VERSION = "3.11"
# pip option (as named in pip's configuration) -> uv option
PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint"}
# Where pip looks last to first: environment variables override the [install] section, which overrides [global].
PRECEDENCE = {"global": 0, "install": 1, ":env:": 2}


def find_uv() -> str:
    if os.environ.get("UV"):
        return os.environ["UV"]
    venv = Path(tempfile.gettempdir()) / f"hpcfed-lock-uv-{UV_VERSION}"
    uv = venv / "bin" / "uv"
    if not uv.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"uv=={UV_VERSION}"],
                       check=True)
    return str(uv)


def pip_source_options() -> list[str]:
    """uv options for the indexes, find-links and constraints that ``pip config list`` reports."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], check=True, capture_output=True,
                         text=True).stdout
    chosen: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if not sep or name not in PIP_TO_UV or section not in PRECEDENCE:
            continue
        rank = PRECEDENCE[section]
        if name not in chosen or rank >= chosen[name][0]:
            chosen[name] = (rank, value.strip().strip("'\""))
    opts: list[str] = []
    for name, uv_opt in PIP_TO_UV.items():
        for value in chosen.get(name, (0, ""))[1].split():
            opts += [uv_opt, value]
    return opts


def _shell_lines(words: list[str]) -> str:
    """``words`` as a shell command for the header: the command, then one option (and its value) per line."""
    lines, cur = [], []
    for w in words:
        if w.startswith("--") and cur and (len(lines) > 0 or len(cur) >= 4):
            lines.append(cur)
            cur = []
        cur.append(shlex.quote(w))
    lines.append(cur)
    return " \\\n#     ".join(" ".join(x) for x in lines)


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else ROOT / "requirements" / "lock.txt"
    uv = find_uv()
    version = subprocess.run([uv, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    cmd = [uv, "pip", "compile", "pyproject.toml", "--extra", "dev", "--extra", "mpi", "--python-version", PYTHON_VERSION,
           "--python-platform", PLATFORM, "--index-strategy", "unsafe-best-match", *pip_source_options(),
           "--no-header", "--quiet"]
    shown = _shell_lines(["uv", *cmd[1:]])
    body = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    header = (
        "# Pinned versions of hpcfed's dependencies plus the dev and mpi extras (not hpcfed itself) for Linux x86_64 and\n"
        f"# CPython {PYTHON_VERSION}: what a fresh `pip install -e '.[dev,mpi]'` resolves with this machine's pip configuration\n"
        "# (its indexes and constraints, e.g. torch<=2.14.1). `make install` uses it as a constraints file:\n"
        "#   pip install -c requirements/lock.txt -e '.[dev,mpi]'\n"
        f"# Regenerate with `make lock` (requirements/lock.py), which ran, in the repository root, {version.split(' (')[0]}:\n"
        f"#   {shown}\n"
    )
    output.write_text(header + body)
    print(f"wrote {output}: {sum(1 for x in body.splitlines() if x and not x.startswith((' ', '#')))} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
