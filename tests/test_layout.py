"""The package's shape: no import circles (lazy imports included), a short top level, short functions,
and the choice lists the config checks against kept equal to the code's own tables."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from hydra.utils import get_object

from dlrun.config.schema import AUGMENT_CHOICES, TASK_KINDS
from dlrun.data.augment import AUGMENTS
from dlrun.engine.schedulers import warmup_cosine
from dlrun.tasks import TASKS

PACKAGE = Path(__file__).parents[1] / "dlrun"


def import_cycles(graph: grimp.ImportGraph, modules: list[str]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in modules:
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others():
    graph = grimp.build_graph("dlrun")  # every import statement, inside functions too
    modules = sorted(module for module in graph.modules if module.startswith("dlrun"))
    assert len(modules) > 50
    assert import_cycles(graph, modules) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="a")
    graph.add_import(importer="b", imported="c")
    assert import_cycles(graph, ["a", "b", "c"]) == [["a", "b"]]


def test_the_top_level_holds_at_most_twelve_modules():
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(modules) <= 12, modules


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []


def test_the_config_knows_every_augmentation_and_task_by_name():
    assert list(AUGMENT_CHOICES) == list(AUGMENTS)
    assert list(TASK_KINDS) == list(TASKS)


def test_saved_configs_still_find_the_scheduler_at_its_old_path():
    assert get_object("dlrun.schedulers.warmup_cosine") is warmup_cosine
