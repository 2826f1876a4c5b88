"""Every figure in README.md is proved or labelled (`tests/readme_figures.toml`).

A *figure* is a decimal number, or a whole number with a unit (s, ms, MB, GB, GiB, MiB, %), in
README.md's prose and tables (code is not prose: fenced blocks and inline code are skipped).
Each README line holding figures must be listed in the registry under one of four sources:

- ``test``: a test function that recomputes the figure; the function (its docstring or its
  asserts) states the figure, and the entry states the tolerance the test holds it to;
- ``benchmark``: stored result files under ``benchmarks/`` (or ``accuracy_results/``) with
  a value that rounds to the figure at the README's precision, and the command that wrote it;
- ``setting``: a default, threshold or constant that appears as a literal in the package, the
  Galaxy tool or CI;
- ``cited``: a number from elsewhere (a version, a publication), with the reason.

A README line that changes (a new figure, an edited one) no longer matches its entry, so the
figure must be mapped again; an entry whose line left the README fails too.
"""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REGISTRY = Path(__file__).resolve().parent / "readme_figures.toml"
UNITS = r"(?:s|ms|MB|GB|GiB|MiB|%)"
DECIMAL = re.compile(r"(?<![\w.\-/])(\d[\d,]*\.\d+)(?!\w|\.\d)")
WITH_UNIT = re.compile(r"(?<![\w.\-/,])(\d[\d,]*)\s?" + UNITS + r"(?!\w)")
SOURCES = {"test", "benchmark", "setting", "cited"}


def prose_lines() -> list[str]:
    """README lines with fenced code blanked and inline code removed, stripped."""
    text = re.sub(
        r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), README.read_text(), flags=re.S
    )
    return text.split("\n")


def without_code(line: str) -> str:
    return re.sub(r"`[^`]*`", " ", line)


def figures(line: str) -> list[str]:
    """The figures of one README line, as printed (thousands separators removed)."""
    prose = without_code(line)
    found = DECIMAL.findall(prose) + WITH_UNIT.findall(prose)
    return [f.replace(",", "") for f in found]


def _registry() -> list[dict]:
    return tomllib.loads(REGISTRY.read_text())["figure"]


def _vouched(entry: dict) -> list[tuple[str, str]]:
    """(line, figure) pairs an entry vouches for: every figure of its lines, or ``only``."""
    only = set(entry.get("only", []))
    return [(line, f) for line in entry["lines"] for f in figures(line) if not only or f in only]


def test_every_readme_figure_is_mapped():
    vouched: dict[str, set[str]] = {}
    for entry in _registry():
        for line, figure in _vouched(entry):
            vouched.setdefault(line, set()).add(figure)
    missing = []
    for number, raw in enumerate(prose_lines(), start=1):
        line = raw.strip()
        for figure in figures(line):
            if figure not in vouched.get(line, set()):
                missing.append(f"README.md:{number}: {figure} in {line[:80]!r}")
    assert not missing, (
        "README figures with no test, stored benchmark, setting or citation:\n" + "\n".join(missing)
    )


def test_every_registry_line_is_in_the_readme():
    lines = {raw.strip() for raw in prose_lines()}
    stale = [line[:80] for entry in _registry() for line in entry["lines"] if line not in lines]
    assert not stale, f"registry lines no longer in README.md: {stale}"


def test_entries_are_complete():
    for entry in _registry():
        assert entry["source"] in SOURCES, entry
        assert entry["lines"], entry
        if entry["source"] in ("test", "benchmark"):
            assert entry.get("tolerance"), f"no tolerance stated: {entry['ref']}"
            assert entry.get("ref"), entry
        if entry["source"] == "benchmark":
            assert entry.get("command"), f"no command for {entry['ref']}"
        if entry["source"] == "cited":
            assert entry.get("reason"), entry
        only = set(entry.get("only", []))
        every = {f for line in entry["lines"] for f in figures(line)}
        assert only <= every, f"'only' names figures its lines do not hold: {only - every}"


def _function_source(ref: str) -> str:
    """The source of ``file::function`` (of the whole file when no function is named)."""
    if "::" not in ref:
        return (ROOT / ref).read_text()
    path, name = ref.split("::")
    module = ROOT / path
    tree = ast.parse(module.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment(module.read_text(), node)
    raise AssertionError(f"{ref}: no such test function")


def _refs(entry: dict) -> list[str]:
    ref = entry["ref"]
    return [ref] if isinstance(ref, str) else list(ref)


@pytest.mark.parametrize(
    "entry",
    [e for e in _registry() if e["source"] == "test"],
    ids=lambda e: e["ref"] if isinstance(e["ref"], str) else e["ref"][0],
)
def test_tests_state_their_figures(entry):
    """The test behind a figure exists and states it (docstring, comment or assert)."""
    sources = "\n".join(_function_source(ref) for ref in _refs(entry))
    absent = sorted({f for _, f in _vouched(entry) if not _states(sources, f)})
    assert not absent, f"{_refs(entry)} never states {absent}"


def _states(text: str, figure: str) -> bool:
    """Whether ``text`` states ``figure`` (a percentage also as a fraction: 15 as 0.15)."""
    forms = [figure] + ([f"{int(figure) / 100:g}"] if figure.isdigit() else [])
    text = text.replace(",", "")
    return any(re.search(r"(?<![\d.])" + re.escape(f) + r"(?![\d])", text) for f in forms)


def _numbers_in(path: Path):
    """Every number stored in a JSON (or JSON-lines) result file."""
    assert path.suffix in (".json", ".jsonl"), f"{path}: a stored result is JSON"
    text = path.read_text()
    rows = (
        [json.loads(text)]
        if path.suffix == ".json"
        else [json.loads(x) for x in text.splitlines() if x.strip()]
    )
    stack = list(rows)
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            yield float(item)


def _matches(value: float, figure: str) -> bool:
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    target = float(figure)
    # MB → GB or GiB; parameters → millions (M); a share → %
    candidates = (value, value / 1000, value / 1024, value / 1e6, value * 100)
    return any(abs(round(c, decimals) - target) < 10 ** -(decimals + 3) for c in candidates)


@pytest.mark.parametrize(
    "entry", [e for e in _registry() if e["source"] == "benchmark"], ids=lambda e: _refs(e)[0]
)
def test_stored_benchmarks_hold_their_figures(entry):
    """Each benchmark figure is a value of its stored result files at the README's precision."""
    values = []
    for ref in _refs(entry):
        paths = sorted(ROOT.glob(ref))
        assert paths, f"no stored result {ref}"
        for path in paths:
            values.extend(_numbers_in(path))
    absent = sorted({f for _, f in _vouched(entry) if not any(_matches(v, f) for v in values)})
    assert not absent, f"{_refs(entry)} hold no value for {absent}"


def _literals() -> set[float]:
    found: set[float] = set()
    places = [*(ROOT / "anndata_rnn").rglob("*.py"), ROOT / "galaxy_tool.xml", ROOT / "macros.xml"]
    places += [
        *(ROOT / ".ci").rglob("*"),
        *(ROOT / "benchmarks").glob("*.py"),
        ROOT / "pyproject.toml",
    ]
    for path in places:
        if path.is_file():
            for token in re.findall(
                r"(?<![\w.])\d[\d_]*\.?\d*(?:e-?\d+)?", path.read_text(errors="replace")
            ):
                try:
                    found.add(float(token.replace("_", "")))
                except ValueError:
                    continue
    return found


def test_settings_are_literals_of_the_code():
    literals = _literals()
    absent = []
    for entry in (e for e in _registry() if e["source"] == "setting"):
        for line, figure in _vouched(entry):
            value = float(figure)
            if not ({value, value / 100} & literals):
                absent.append(f"{figure} ({line[:60]!r})")
    assert not absent, f"settings that appear nowhere in the code: {absent}"
