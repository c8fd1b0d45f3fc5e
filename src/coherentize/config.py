"""Typed configuration: nested dataclasses filled from a YAML/TOML file and ``--set section.field=value`` overrides.

Every user mistake (unknown field, wrong type, unreadable file) raises one CoherentizeError naming the file and the
dotted field, and for an unknown field, the valid ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from coherentize.errors import CoherentizeError, read_text

T = TypeVar("T")


def read_structured_file(path: str | os.PathLike, what: str = "config"):
    """The content of a YAML, TOML (.toml) or JSON (.json) file; a missing, non-UTF-8 or malformed file is one
    CoherentizeError naming it (what: the kind of file, for the message)."""
    path = Path(path)
    if not path.is_file():
        raise CoherentizeError(f"{path}: {what} file not found.")
    text = read_text(path)
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")
    try:
        if kind == "TOML":
            return tomllib.loads(text)
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise CoherentizeError(f"{path}: not valid {kind}: {e}") from None


def read_config_file(path: str | os.PathLike) -> dict:
    data = read_structured_file(path, "config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CoherentizeError(f"{path}: the top level must be a mapping of sections.")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.learning_rate=1e-4' -> (['train', 'learning_rate'], 1e-4); the value is read as YAML."""
    if "=" not in item:
        raise CoherentizeError(f"--set {item!r}: expected section.field=value.")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = dict(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            node[k] = dict(child) if isinstance(child, dict) else {}
            node = node[k]
        node[keys[-1]] = value
    return data


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return tp, True
    return tp, False


def _coerce(value, tp, where: str):
    """Check value against a (simple) annotation; convert str/int to float and scalars to one-item lists."""
    if isinstance(tp, str):  # unresolved forward reference: leave it to the dataclass itself
        return value
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise CoherentizeError(f"{where}: may not be null.")
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise CoherentizeError(f"{where}: expected a mapping of fields for section {tp.__name__}.")
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise CoherentizeError(f"{where}: expected true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CoherentizeError(f"{where}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise CoherentizeError(f"{where}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise CoherentizeError(f"{where}: expected a string, got {value!r}.")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise CoherentizeError(f"{where}: expected a mapping.")
        args = typing.get_args(tp)
        if len(args) == 2:  # dict[str, X]: each value checked as an X (e.g. a section per name)
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise CoherentizeError(f"{where}: {value!r} is not one of {list(allowed)}.")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass cls from a mapping, checking field names and simple types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CoherentizeError(
            f"{where}: unknown field {unknown[0]!r}. Valid fields: {', '.join(sorted(fields))}."
        )
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise CoherentizeError(f"{where}: {e}") from None


def to_dict(obj) -> dict:
    """A plain dict of a (nested) config, for hashing and for writing next to results."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            v = getattr(obj, f.name)
            out[f.name] = to_dict(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if hasattr(obj, "value") and type(obj).__module__.startswith("transformers"):
        return obj.value  # transformers' enums
    return obj


def field_docs(cls) -> dict[str, str]:
    """The one-line docstring under each field of a dataclass (for --help and README tables)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = str(nxt.value.value).strip().splitlines()[0]
    return docs


def all_field_docs(cls) -> dict[str, str]:
    """One line of documentation for every init field of a dataclass: the docstring under the field in the class
    that defines it (walking the bases), else the field's metadata "help" (transformers' TrainingArguments)."""
    own: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            own.update(field_docs(base))
    docs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        doc = own.get(f.name)
        if not doc:  # transformers' help: its first sentence
            doc = " ".join(str(f.metadata.get("help", "")).split())
            doc = doc.split(". ")[0].rstrip(".") + "." if doc else ""
        docs[f.name] = doc
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return ""
    value = getattr(value, "value", value)  # transformers' enums
    return f"= {value!r}"


def describe_fields(cls) -> str:
    """Every field of a config of sections (a dataclass whose fields are dataclasses), grouped by section, one line
    each: 'section.field = default  doc' (for --help). A section's own fields come before those it inherits."""
    hints = typing.get_type_hints(cls)
    lines, top = [], []
    section_docs = all_field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints.get(f.name))
        if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
            if f.name in section_docs:
                top.append(f"{f'  {f.name} {_default(f)}':<48} {section_docs[f.name]}")
            continue
        summary = (tp.__doc__ or "").strip().splitlines()[0] if tp.__doc__ else ""
        lines.append("")
        lines.append(f"[{f.name}] {tp.__name__}: {section_docs.get(f.name) or summary}")
        docs, own = all_field_docs(tp), field_docs(tp)
        fields = sorted((g for g in dataclasses.fields(tp) if g.name in docs), key=lambda g: g.name not in own)
        for g in fields:
            head = f"  {f.name}.{g.name} {_default(g)}"
            lines.append(f"{head:<48} {docs[g.name]}")
    if top:
        lines += ["", f"[top level] {cls.__name__}"] + top
    return "\n".join(lines).strip("\n")


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: list[str] | None = None) -> T:
    data = read_config_file(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(cls, data, where=str(path) if path else "config")
