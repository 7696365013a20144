"""The house's rules, checked on the code: the layers that serve every model name none of them,
and the loop's and server's functions stay small enough to read."""

import ast
from pathlib import Path

import pytest

from recforge import registry

SRC = Path(__file__).resolve().parents[1] / "src" / "recforge"
# What must stay open to any model and kind of task: it uses them through the task contract.
GENERIC = [SRC / "inference.py", SRC / "tune.py", *sorted((SRC / "train").glob("*.py"))]
GENERIC += [*sorted((SRC / "serving").glob("*.py")), *sorted((SRC / "optim").glob("*.py"))]
MODEL_MODULES = {"recforge.models." + e.build.__module__.rsplit(".", 1)[1] for e in registry.MODELS.values()}
TASK_MODULES = {e.task.__module__ for e in registry.MODELS.values()}


def _names(entry) -> set[str]:
    return {entry.task.name, entry.task.__name__, entry.config.__name__, entry.build.__name__}


NAMED = set(registry.MODELS) | {n for e in registry.MODELS.values() for n in _names(e)}


def _mentions(path: Path) -> list[str]:
    """Every model, task or model module `path` names in its code: string constants, identifiers,
    attributes and imports (not prose: a docstring or message is never exactly a name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMED:
            found.append(f"line {node.lineno}: the string {node.value!r}")
        elif isinstance(node, ast.Name) and node.id in NAMED:
            found.append(f"line {node.lineno}: the name {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in NAMED:
            found.append(f"line {node.lineno}: the attribute .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            if imported & (MODEL_MODULES | TASK_MODULES):
                found.append(f"line {node.lineno}: imports {sorted(imported & (MODEL_MODULES | TASK_MODULES))[0]}")
    return found


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(SRC)))
def test_the_generic_layers_name_no_model_and_no_kind_of_task(path):
    assert _mentions(path) == []


def test_the_check_finds_a_kind_of_task_branched_on(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "from recforge.tasks.ranking import RankingTask\n"
        "def f(assets, model):\n"
        "    if assets.kind == 'ctr':\n"
        "        return model.wide\n"
    )
    assert _mentions(planted) == ["line 1: imports recforge.tasks.ranking", "line 3: the string 'ctr'"]


@pytest.mark.parametrize("folder", ["train", "serving"])
def test_no_function_of_the_loop_or_the_server_is_over_80_lines(folder):
    long = [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted((SRC / folder).glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert long == []
