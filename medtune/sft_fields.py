"""The fields of `trl.SFTConfig`, read from TRL's and transformers' source without importing them.

Importing TRL takes about ten seconds (it imports torch and transformers); a recipe must be refused within
a few seconds of a typo. So we read the dataclass fields (name, annotation, default) with `ast`, following
SFTConfig's base classes. tests/test_recipe.py checks the result against `dataclasses.fields(SFTConfig)`.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
from dataclasses import dataclass

# Where SFTConfig and its bases are defined: class name -> module. The chain itself is read from the source.
_MODULES = {"SFTConfig": "trl.trainer.sft_config", "_BaseConfig": "trl.trainer.base_config",
            "BaseConfig": "trl.trainer.base_config", "TrainingArguments": "transformers.training_args"}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    annotation: str  # source text, e.g. "int | None"
    kinds: frozenset[str] | None  # python type names the value may have; None = anything


def _module_source(module: str) -> str | None:
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    root = spec.submodule_search_locations[0]
    path = os.path.join(str(root), *module.split(".")[1:]) + ".py"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


_SIMPLE = {"int": "int", "float": "float", "bool": "bool", "str": "str", "dict": "dict", "list": "list", "None": "None"}


def _kinds(node: ast.AST) -> frozenset[str] | None:
    """Python types an annotation admits; None when it names anything we cannot check (enums, classes)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return frozenset({"None"})
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # string annotation
        return _kinds(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        return frozenset({_SIMPLE[node.id]}) if node.id in _SIMPLE else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _kinds(node.left), _kinds(node.right)
        return None if left is None or right is None else left | right
    if isinstance(node, ast.Subscript):
        outer = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer in ("Optional", "Union"):
            parts = [_kinds(n) for n in inner] + ([frozenset({"None"})] if outer == "Optional" else [])
            return None if any(p is None for p in parts) else frozenset().union(*parts)
        if outer in ("list", "List"):
            return frozenset({"list"})
        if outer in ("dict", "Dict"):
            return frozenset({"dict"})
        if outer == "Literal":
            return None
    return None


def _class_fields(source: str, class_name: str) -> tuple[list[FieldSpec], list[str]]:
    """The fields a class defines itself, and the names of its bases."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            fields = [FieldSpec(s.target.id, ast.unparse(s.annotation), _kinds(s.annotation))
                      for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                      and not ast.unparse(s.annotation).startswith("ClassVar")]
            return fields, [ast.unparse(b) for b in node.bases]
    raise RuntimeError(f"class {class_name} not found")


@functools.cache
def sft_config_fields() -> dict[str, FieldSpec]:
    """name -> FieldSpec for every SFTConfig field (subclass definitions win over base ones)."""
    chain: list[list[FieldSpec]] = []
    class_name: str | None = "SFTConfig"
    while class_name in _MODULES:
        module = _MODULES[class_name]
        source = _module_source(module)
        if source is None:
            raise RuntimeError(f"cannot read {module}: is {module.split('.')[0]} installed?")
        own, bases = _class_fields(source, class_name)
        chain.append(own)
        class_name = bases[0] if bases else None
    fields: dict[str, FieldSpec] = {}
    for own in reversed(chain):  # base first, so that a subclass's definition wins
        fields.update({spec.name: spec for spec in own})
    return fields
