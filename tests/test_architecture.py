"""The import rules of ARCHITECTURE.md and the size of the tasks, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "anndata_rnn"

#: layer of each top-level part (ARCHITECTURE.md, "Who may import whom")
LAYERS = {
    "errors": 1,
    "threads": 1,
    "heap": 1,
    "timing": 1,
    "h5check": 2,
    "distributed": 1,
    "io": 3,
    "sequences": 2,
    "training": 2,
    "metrics": 2,
    "datasets": 2,
    "networks": 2,
    "preprocessing": 3,
    "features": 2,
    "forecast_inputs": 4,
    "splits": 3,
    "clustering": 3,
    "options": 3,
    "baselines": 5,
    "model": 5,
    "streaming": 5,
    "forecasting": 6,
    "classification": 6,
    "embedding": 6,
    "attribution": 6,
    "runs": 7,
    "tl": 8,
    "pl": 8,
    "report": 9,
    "cli": 10,
    "__init__": 11,
    "__main__": 11,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imported_parts(path: Path, parts: tuple[str, ...]):
    """Top-level parts of the package that a module imports (relative or absolute)."""
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = target or [alias.name for alias in node.names]
                if not target:  # "from . import x" at the top level
                    yield from ([alias.name] for alias in node.names)
                    continue
                yield names
            elif node.module and node.module.split(".")[0] == "anndata_rnn":
                yield node.module.split(".")[1:] or ["__init__"]


def test_no_import_runs_up_a_layer():
    wrong = []
    for path, parts in _modules():
        own = LAYERS[parts[0]]
        for target in _imported_parts(path, parts):
            if target[0] == parts[0]:
                continue  # inside one part (a package's own modules)
            if LAYERS[target[0]] >= own:
                wrong.append(f"{'.'.join(parts)} imports {'.'.join(target)}")
    assert not wrong, wrong


def test_no_task_imports_another_and_nothing_imports_by_name():
    for path, parts in _modules():
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, path
        if parts[0] == "tl" and parts[-1] not in ("__init__", "_predict"):
            tasks = {
                target[1]
                for target in _imported_parts(path, parts)
                if target[0] == "tl" and len(target) > 1
            }
            assert not tasks, f"{path.name} imports task modules {tasks}"


def test_tasks_are_thin():
    lengths = {p.name: len(p.read_text().splitlines()) for p in (PACKAGE / "tl").glob("*.py")}
    assert sum(lengths.values()) <= 2000, lengths
    assert max(lengths.values()) <= 400, lengths


def test_layout_names_appear_only_in_sequences():
    """Code asks a ``sequences.Layout`` what a layout means instead of comparing its name: no
    layout name is a literal outside sequences.py (docstrings mention them in prose only)."""
    from anndata_rnn.sequences import LAYOUTS

    found = []
    for path, parts in _modules():
        if parts == ("sequences",):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value in LAYOUTS:
                    found.append(f"{'/'.join(parts)}.py:{node.lineno} {node.value!r}")
    assert not found, found


def test_one_training_loop():
    """One function runs optimizer steps (training._fit_steps, whatever the schedule)."""
    stepping = [
        f"{path.name}:{node.name}"
        for path, _ in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        and any(
            isinstance(call, ast.Call) and getattr(call.func, "id", None) == "_train_step"
            for call in ast.walk(node)
        )
    ]
    assert stepping == ["training.py:_fit_steps"], stepping


def test_small_test_split_thresholds_are_declared_once():
    declared = [
        f"{path.name}:{target.id}"
        for path, _ in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name) and target.id in ("MIN_TEST_UNITS", "MIN_TEST_PER_CLASS")
    ]
    assert sorted(declared) == ["metrics.py:MIN_TEST_PER_CLASS", "metrics.py:MIN_TEST_UNITS"]


#: a tl function validates, composes the parts and returns its TaskResult in about this many
#: lines of code (no docstring, blank or comment lines)
MAX_TASK_CODE_LINES = 120
#: tasks allowed to be longer (none since issue 22)
STILL_LONGER: dict[str, int] = {}


def _code_lines(lines: list[str], node: ast.FunctionDef) -> int:
    first = node.body[0]
    docstring = set()
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        docstring = set(range(first.lineno, first.end_lineno + 1))
    return sum(
        1
        for number in range(first.lineno, node.end_lineno + 1)
        if number not in docstring
        and lines[number - 1].strip()
        and not lines[number - 1].strip().startswith("#")
    )


def test_no_tl_function_is_long():
    too_long = {}
    for path in (PACKAGE / "tl").glob("*.py"):
        text = path.read_text()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef):
                n = _code_lines(text.splitlines(), node)
                if n > STILL_LONGER.get(node.name, MAX_TASK_CODE_LINES):
                    too_long[f"{path.name}:{node.name}"] = n
    assert not too_long, too_long


def test_the_cli_never_reads_uns():
    """The commands print what a tool returns (``TaskResult``), never an AnnData's ``uns``
    (``inspect``, which describes a file, lists its keys)."""
    readers = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.name == "inspect_cmd.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "uns":
                readers.append(f"{path.name}:{node.lineno}")
    assert not readers, readers


def test_the_cli_writes_the_elements_a_tool_returns():
    """What a command writes into its copy of the input is ``TaskResult.elements`` (exactly what
    the tool wrote: ``tests/test_elements.py``), never a record's ``"written"`` list."""
    readers = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "written":
                readers.append(f"{path.name}:{node.lineno}")
    assert not readers, readers
    writes = {}  # each call of write_new_elements in cli/ -> what it is given to write
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "write_new_elements"
            ):
                writes[f"{path.name}:{node.lineno}"] = ast.get_source_segment(text, node.args[3])
    assert len(writes) >= 3, writes  # predict, explain and the training commands' profile path
    assert all(given == "result.elements" for given in writes.values()), writes


def test_one_way_to_load_a_model():
    """A path becomes a ``Model`` in one place, ``model.load_model`` (the tools and the
    commands call it; ``Model.load`` is called nowhere else in the package)."""
    callers = [
        f"{'/'.join(parts)}.py:{function.name}"
        for path, parts in _modules()
        for function in ast.walk(ast.parse(path.read_text()))
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute)
        and node.attr == "load"
        and getattr(node.value, "id", None) in ("Model", "cls")
    ]
    assert callers == ["model.py:load_model"], callers
