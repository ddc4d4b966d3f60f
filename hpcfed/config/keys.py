"""Every config key with its default and its docstring, for ``hpcfed --help``.

The docstrings are the attribute docstrings under each dataclass field (a string literal right after the field,
as in torchtitan's configs); Python keeps no record of them at run time, so they are read from the source with
:mod:`ast`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any, Iterator


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` of the dataclass ``cls`` (whitespace collapsed); fields without one are left
    out, and so is everything when the source cannot be read (e.g. a zipped install)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def iter_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any, str, str]]:
    """``(section, dotted key, default, type name, docstring)`` for every leaf key of the dataclass ``cls``,
    sections depth first (a nested dataclass field is a section of its own, e.g. ``fl.local``)."""
    docs = field_docs(cls)
    nested = []
    for f in dataclasses.fields(cls):
        default = _default(f)
        if dataclasses.is_dataclass(default):
            nested.append((f.name, type(default)))
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        yield prefix.rstrip("."), prefix + f.name, default, type_name, docs.get(f.name, "")
    for name, sub in nested:
        yield from iter_keys(sub, f"{prefix}{name}.")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, str) else (value if value else "''")


def describe_keys(cls: type, width: int = 100) -> str:
    """Help text: the keys of ``cls`` grouped by section (each with the section's class docstring), one line
    ``key = default  (type)`` per key followed by its docstring, wrapped to ``width`` columns."""
    lines: list[str] = []
    section = None
    for sec, key, default, type_name, doc in iter_keys(cls):
        if sec != section:
            section = sec
            owner = cls
            for part in sec.split(".") if sec else []:
                owner = type(_default({f.name: f for f in dataclasses.fields(owner)}[part]))
            title = sec or "top level"
            about = " ".join((owner.__doc__ or "").split()) if sec else ""
            if about.startswith(owner.__name__ + "("):  # the signature dataclasses writes when there is none
                about = ""
            lines += ["", f"[{title}]" + (f"  {about}" if about else "")]
        lines.append(f"  {key} = {_show(default)}  ({type_name})")
        if doc:
            lines += textwrap.wrap(doc, width=width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines).lstrip("\n")
