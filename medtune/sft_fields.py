"""The fields of `trl.SFTConfig` and `trl.GRPOConfig`, read from TRL's and transformers' source without importing them.

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
_MODULES = {"SFTConfig": "trl.trainer.sft_config", "GRPOConfig": "trl.trainer.grpo_config",
            "_BaseConfig": "trl.trainer.base_config",
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
def _chain(class_name: str) -> tuple[tuple[str, tuple[FieldSpec, ...]], ...]:
    """(class, the fields it defines itself) from `class_name` down its first bases, as far as _MODULES knows them."""
    chain: list[tuple[str, tuple[FieldSpec, ...]]] = []
    name: str | None = class_name
    while name in _MODULES:
        module = _MODULES[name]
        source = _module_source(module)
        if source is None:
            raise RuntimeError(f"cannot read {module}: is {module.split('.')[0]} installed?")
        own, bases = _class_fields(source, name)
        chain.append((name, tuple(own)))
        name = bases[0] if bases else None
    return tuple(chain)


@functools.cache
def config_fields(class_name: str = "SFTConfig") -> dict[str, FieldSpec]:
    """name -> FieldSpec for every field of a TRL config (subclass definitions win over base ones)."""
    fields: dict[str, FieldSpec] = {}
    for _, own in reversed(_chain(class_name)):  # base first, so that a subclass's definition wins
        fields.update({spec.name: spec for spec in own})
    return fields


def sft_config_fields() -> dict[str, FieldSpec]:
    """name -> FieldSpec for every SFTConfig field."""
    return config_fields("SFTConfig")


@functools.cache
def own_fields(class_name: str) -> dict[str, FieldSpec]:
    """The fields a TRL config adds to the training arguments every trainer shares (TRL's base config and
    transformers' TrainingArguments): SFT's `max_length` and `packing`, GRPO's `num_generations` and `beta`."""
    chain = _chain(class_name)
    shared = {spec.name for _, own in chain[1:] for spec in own}
    return {spec.name: spec for spec in chain[0][1] if spec.name not in shared}
