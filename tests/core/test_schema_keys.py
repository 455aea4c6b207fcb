"""No config key is accepted and ignored: every leaf key of the schema is read somewhere in
the code (a stage, a shared library or a workflow rule); keys that are text for readers only
are marked ``x-annotation`` in the schema."""

from __future__ import annotations

import re

from conftest import REPO

from opd.core.config import load_schema


def leaf_keys(node: dict, defs: dict, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    if node.get("x-annotation"):
        return []
    out: list[tuple[str, ...]] = []
    for key, sub in node.get("properties", {}).items():
        out += leaf_keys(sub, defs, path + (key,))
    if isinstance(node.get("additionalProperties"), dict):
        out += leaf_keys(node["additionalProperties"], defs, path + ("<name>",))
    items = node.get("items")
    if isinstance(items, dict) and ("properties" in items or "$ref" in items):
        out += leaf_keys(items, defs, path + ("[]",))
    if not out and not node.get("properties") and path:
        out.append(path)
    return out


def code_text() -> str:
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "workflow").rglob("*.smk"),
             REPO / "Snakefile"]
    return "\n".join(p.read_text() for p in files)


def test_every_leaf_key_is_read_by_code():
    schema = load_schema()
    code = code_text()
    unread = []
    for path in leaf_keys(schema, schema["$defs"]):
        key = [k for k in path if k not in ("<name>", "[]")][-1]
        # a subscript or .get("key"), an attribute (typed parameters), or a dataclass field
        pattern = rf"""["']{re.escape(key)}["']|\.{re.escape(key)}\b|^\s+{re.escape(key)}:\s"""
        if not re.search(pattern, code, re.M):
            unread.append(".".join(path))
    assert not unread, f"schema keys no code reads: {unread}"


def test_the_walk_finds_nested_and_registry_keys():
    schema = load_schema()
    keys = {".".join(p) for p in leaf_keys(schema, schema["$defs"])}
    assert {"opd.validation.top_p", "experiments.<name>.steps", "tiny_models.checks.[].tol",
            "models.<name>.revision", "opd.lr_schedule"} <= keys
    assert "models.<name>.note" not in keys  # an annotation
