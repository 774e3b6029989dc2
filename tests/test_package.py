"""The package's shape: no import cycle between medtune's modules, and every task provides what the core reads."""
from __future__ import annotations

import ast

from tests.conftest import REPO


def _module_imports() -> dict[str, set[str]]:
    """module -> the medtune / data_prep modules it imports when it is imported (its top-level imports)."""
    files = {}
    for path in [*(REPO / "medtune").rglob("*.py"), *(REPO / "data_prep").rglob("*.py")]:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in files}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in files}
        graph[name] = found - {name}
    return graph


def test_no_module_imports_itself_through_others():
    graph = _module_imports()
    assert {"medtune.config", "medtune.recipe_checks", "medtune.medsiglip", "medtune.trainer"} <= set(graph)
    done, path = set(), []

    def visit(name):
        assert name not in path, " -> ".join([*path[path.index(name):], name])
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_every_task_provides_what_the_core_reads():
    from medtune.tasks import Task, get_task, is_configurable, is_multiple_choice, task_names

    for name in task_names():
        # a configurable task that takes its options from the data gets two for the check
        options = {"a": "a", "b": "b"} if name in ("classification", "cxr_findings", "findings") else None
        task = get_task(name, None, options) if is_configurable(name) else get_task(name)
        assert isinstance(task, Task), name
        assert task.name == name and task.table_metrics and task.kind in ("classification", "generation")
        if is_multiple_choice(task):
            assert len(task.class_names) == len(task.options) and task.option_line(0)
