"""The options table (anndata_rnn.options) drives the API and the command line: neither can
drift from it (the Galaxy tool's check: tests/test_galaxy_tool.py)."""

from __future__ import annotations

import contextlib
import inspect
import sys

import click
import pytest
from click.testing import CliRunner

from anndata_rnn import tl
from anndata_rnn.cli import main
from anndata_rnn.networks import parse_hidden
from anndata_rnn.options import (
    APPLYING_TASKS,
    BY_NAME,
    OPTIONS,
    TASKS,
    TRAINING_TASKS,
    doc_params,
    options_of,
)

#: keyword parameters of the tl functions that are not options of the table: the required
#: labels, and predict's scratch (an open HDF5 group the command line makes, not a setting)
NOT_OPTIONS = {
    "classify": {"label_key"},
    "forecast": set(),
    "embed": set(),
    "predict": {"scratch"},
    "explain": set(),
}
#: the required arguments of each command, for a command line that sets nothing else
MINIMAL = {
    "classify": ["--label", "y"],
    "forecast": [],
    "embed": [],
    "predict": [],
    "explain": [],
}


def _keyword_defaults(task: str) -> dict:
    parameters = inspect.signature(getattr(tl, task)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("task", TASKS)
def test_tl_signatures_have_the_tables_options_and_defaults(task):
    defaults = _keyword_defaults(task)
    table = {o.name: o.default_for(task) for o in options_of(task)}
    assert set(defaults) - NOT_OPTIONS[task] == set(table)
    assert {name: defaults[name] for name in table} == table


@pytest.mark.parametrize("task", TASKS)
def test_click_options_are_the_tables(task):
    """Every option the table puts on a command line is there, with the table's default,
    choices and bounds; the command has no other option with a default of its own."""
    params = {p.name: p for p in main.commands[task].params}
    for option in options_of(task):
        if not option.on_command_line(task):
            assert option.name not in params
            continue
        param = params[option.name]
        assert option.cli_flag.split("/")[0] in param.opts
        # a flag's parameter holds the API value (--no-residual sets residual=False)
        expected = option.default_for(task) if option.type is bool else option.cli_default_for(task)
        assert param.default == expected, option.name
        if option.choices_for(task) is not None:
            assert tuple(param.type.choices) == option.choices_for(task)
        if isinstance(param.type, click.IntRange | click.FloatRange):
            assert (param.type.min, param.type.max) == (option.low, option.high)
        elif option.type in (int, float) and option.name != "n_top_genes":
            assert not option.click_range or (option.low, option.high) == (None, None)
    # what a command declares beside the table: files, the labels, and the CLI's own switches
    own = {"input", "output", "model_out", "metrics_table", "label_key", "report", "debug"}
    # the file of a saved model; explain's table of top genes and its length (the command
    # line's output, made by tl.importance_table, not a setting of tl.explain)
    own |= {"model_path", "table", "top"}
    untabled = set(params) - {o.name for o in OPTIONS} - own - {"threads"}
    assert not untabled, untabled


@pytest.mark.parametrize("task", TASKS)
def test_a_bare_command_line_calls_the_tool_with_its_defaults(task, monkeypatch, tmp_path):
    """End to end: the keyword arguments the command passes to ``tl.<task>`` when the user sets
    nothing are the tool's own defaults (the embed --n-top-genes drift was such a difference)."""
    from anndata_rnn import heap
    from anndata_rnn import model as model_module

    # the module, not the command of the same name that anndata_rnn.cli exports
    command_module = sys.modules[f"anndata_rnn.cli.{task}"]
    passed = {}

    def capture(adata, *model, **kwargs):
        passed.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(getattr(tl, task), "run", capture)
    monkeypatch.setattr(heap, "set_for_command_line", lambda: None)
    source, model = tmp_path / "in.h5ad", tmp_path / "m.h5"
    source.touch()
    argv = [task, str(source), *MINIMAL[task], "--output", str(tmp_path / "o.h5ad")]
    if task in APPLYING_TASKS:  # nothing is read: the tool gets stand-ins
        model.touch()
        monkeypatch.setattr(model_module, "load_model", lambda path: "model")
        monkeypatch.setattr(command_module, "open_lazy", lambda path: contextlib.nullcontext())
        if task == "predict":
            monkeypatch.setattr(command_module, "scratch_file", lambda d: contextlib.nullcontext())
        argv += ["--model", str(model)]
    else:
        monkeypatch.setattr(command_module, "train_and_write", lambda *a, **k: a[4]("adata"))
        argv += ["--model-out", str(model)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    defaults = _keyword_defaults(task)
    for name, value in passed.items():
        if name in NOT_OPTIONS[task]:
            continue
        if name == "hidden":
            value, defaults[name] = parse_hidden(value), parse_hidden(defaults[name])
        assert value == defaults[name], (name, value, defaults[name])
    # every option of the command line reached the tool
    assert set(passed) - NOT_OPTIONS[task] == {
        o.name for o in options_of(task) if o.on_command_line(task)
    }


def test_embed_selects_genes_as_classify_does():
    """The fixed drift (issue 22): tl.embed and tl.forecast default to n_top_genes="auto",
    as classify and every command line do."""
    assert {_keyword_defaults(task)["n_top_genes"] for task in TRAINING_TASKS} == {"auto"}


def test_table_rejects_an_override_for_a_task_without_the_option():
    with pytest.raises(ValueError, match="not in tasks"):
        type(BY_NAME["n_latent"])(
            "n_latent", "architecture", int, 16, "", tasks=frozenset({"embed"}),
            task_defaults={"classify": 8},
        )  # fmt: skip


def test_doc_params_fills_fragments_and_refuses_unknown_ones():
    @doc_params(doc_x="filled")
    def good():
        """{doc_x} and {key}_pred."""

    assert good.__doc__ == "filled and {key}_pred."
    with pytest.raises(ValueError, match="doc_"):

        @doc_params(doc_x="filled")
        def bad():
            """{doc_y}"""
