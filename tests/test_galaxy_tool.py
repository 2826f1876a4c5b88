"""Fast checks of the Galaxy tool wrapper (galaxy_tool.xml + macros.xml), without a Galaxy server.

The real-server check is ``.ci/galaxy/run_tool_tests.sh`` (planemo lint + planemo test against a
throw-away Galaxy). This layer runs in seconds and catches most wrapper bugs earlier:

* the XML parses (macros expanded), has the required metadata and lints clean with Galaxy's own
  linters (the network ones left out);
* the Cheetah command renders for every ``<test>`` of the XML exactly as Galaxy would render it
  (same parameter tree, defaults, sanitizers, boolean true/false values, ``#if`` guards), bash
  parses it, and every ``--flag`` it emits is an option of ``anndata-rnn <command> --help`` and
  click accepts the whole argument list (so renaming a CLI option breaks this test);
* every parameter of the tool is set by at least one ``<test>``;
* the tests' own assertions (``has_h5_keys``, ``has_text`` on stdout ...) hold on files produced
  by actually running the CLI with the rendered arguments;
* hostile text values (quotes, ``$(...)``, backticks, ``;``) go through the tool's sanitizers and
  quoting and cannot run a shell command, and the regex validators reject them up front.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
import textwrap
from functools import cache
from pathlib import Path

import pytest

if os.environ.get("ANNDATA_RNN_REQUIRE_GALAXY", "") not in ("", "0"):
    # CI (.ci/run) sets ANNDATA_RNN_REQUIRE_GALAXY=1: a missing galaxy-tool-util is an error
    # there, not a skip, so this layer cannot silently drop out of the suite
    try:
        import galaxy.tool_util.parser  # noqa: F401
    except ImportError as exc:
        pytest.fail(
            f"ANNDATA_RNN_REQUIRE_GALAXY is set but galaxy-tool-util is not importable ({exc}): "
            "pip install -e '.[test]'",
            pytrace=False,
        )
pytest.importorskip(
    "galaxy.tool_util.parser", reason="needs galaxy-tool-util (pip install galaxy-tool-util)"
)

from galaxy.tool_util.lint import LintContext, lint_tool_source_with  # noqa: E402
from galaxy.tool_util.parser import get_tool_source  # noqa: E402
from galaxy.tool_util.verify.asserts import verify_assertions  # noqa: E402
from galaxy.util import mapped_chars as GALAXY_DEFAULT_MAPPING  # noqa: E402
from galaxy.util.template import fill_template  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOOL_XML = ROOT / "galaxy_tool.xml"
TEST_DATA = ROOT / "test-data"

# Galaxy's default valid characters for a text parameter without <sanitizer>
GALAXY_DEFAULT_VALID = string.ascii_letters + string.digits + " -=_.()/+*^,:?!"
HOSTILE_VALUES = [
    "'; touch pwned #",
    "x' && touch pwned && echo '",
    "$(touch pwned)",
    "`touch pwned`",
    '"; touch pwned; "',
    "a\ntouch pwned",
    "a|touch pwned",
    "${IFS}touch${IFS}pwned",
    # values that look like the class names explain --target accepts ('+', '/', spaces kept)
    "CD14+ Monocyte'; touch pwned #",
    "CD4+/CD25 T Reg' $(touch pwned) '",
    "CD14+ Monocyte,`touch pwned`,CD19+ B",
]
#: the modes that train a model (the model file and the metrics table are collected for them)
TRAINING_MODES = {"classify", "forecast", "embed"}


# ------------------------------------------------------------------------------ tool model --
@cache
def tool_source():
    return get_tool_source(str(TOOL_XML))


def inputs_elem():
    return tool_source().root.find("inputs")


def param_name(elem) -> str:
    name = elem.get("name")
    if name:
        return name
    return elem.get("argument").lstrip("-").replace("-", "_")


def iter_params(container=None, prefix=""):
    """Every <param> of the tool as (path, element), path like 'mode|layout|series_key'.

    A parameter that appears in several <when>s with the same path is yielded once per <when>.
    """
    container = inputs_elem() if container is None else container
    for child in container:
        if child.tag == "param":
            yield prefix + param_name(child), child
        elif child.tag == "section":
            yield from iter_params(child, f"{prefix}{child.get('name')}|")
        elif child.tag == "conditional":
            cprefix = f"{prefix}{child.get('name')}|"
            test_param = child.find("param")
            yield cprefix + param_name(test_param), test_param
            for when in child.findall("when"):
                yield from iter_params(when, cprefix)
        elif child.tag == "repeat":  # pragma: no cover - the tool has none
            raise NotImplementedError("repeats are not modelled by this test")


def select_default(elem) -> str:
    options = elem.findall("option")
    for option in options:
        if option.get("selected", "").lower() == "true":
            return option.get("value")
    return options[0].get("value")


class Sanitizer:
    """Port of galaxy.tools.parameters.sanitize.ToolParameterSanitizer (galaxy-app, not installed
    with galaxy-tool-util) for the features the tool uses."""

    def __init__(self, elem):
        if elem is None:  # Galaxy's default for text parameters
            self.valid = set(GALAXY_DEFAULT_VALID)
            self.mapping = dict(GALAXY_DEFAULT_MAPPING)
            self.invalid = "X"
            return
        self.invalid = elem.get("invalid_char", "X")
        self.valid = set()
        self.mapping = {}
        for valid in elem.findall("valid"):
            self.valid = set(self._preset(valid.get("initial", "default")))
            for action in valid:
                chars = set(self._preset(action.get("preset", "none"))) | set(
                    action.get("value", "")
                )
                if action.tag == "add":
                    self.valid |= chars
                elif action.tag == "remove":
                    self.valid -= chars
        for mapping in elem.findall("mapping"):
            self.mapping = (
                dict(GALAXY_DEFAULT_MAPPING)
                if mapping.get("initial", "default") == "default"
                else {}
            )
            for action in mapping:
                if action.tag == "add":
                    self.mapping[action.get("source")] = action.get("target")
                elif action.tag == "remove":
                    self.mapping.pop(action.get("source"), None)

    @staticmethod
    def _preset(name: str) -> str:
        chars = ""
        for part in name.split(","):
            part = part.strip()
            if part.startswith("string."):
                chars += getattr(string, part[len("string.") :])
            elif part == "default":
                chars += GALAXY_DEFAULT_VALID
            elif part != "none":
                raise ValueError(f"unknown sanitizer preset {part!r}")
        return chars

    def __call__(self, text: str) -> str:
        out = []
        for char in text:
            if char in self.valid:
                out.append(char)
            elif char in self.mapping:
                out.append(self.mapping[char])
            else:
                out.append(self.invalid)
        return "".join(out)


def param_value(elem, raw, data_paths):
    """The value Cheetah sees for a parameter, as Galaxy (profile >= 23.0) renders it."""
    kind = elem.get("type")
    optional = elem.get("optional", "false").lower() == "true"
    if kind == "data":
        return str(data_paths.get(raw, f"/galaxy/files/{raw or 'dataset_1'}.dat"))
    if kind == "boolean":
        checked = elem.get("checked", "false") if raw is None else raw
        checked = str(checked).lower() in ("true", "yes", "on", "1")
        return elem.get("truevalue", "true") if checked else elem.get("falsevalue", "false")
    if kind == "select":
        return select_default(elem) if raw is None else raw
    if raw is None:
        raw = elem.get("value", "")
    if raw in ("", None):
        return None if optional or kind != "text" else ""
    if kind == "integer":
        return str(int(raw))
    if kind == "float":
        return str(float(raw))
    if kind == "text":
        return Sanitizer(elem.find("sanitizer"))(str(raw))
    raise NotImplementedError(kind)


def build_context(values: dict, data_paths: dict | None = None, container=None, prefix="") -> dict:
    """Nested parameter dict as Cheetah sees it: values maps 'a|b|c' paths to test values."""
    data_paths = data_paths or {}
    container = inputs_elem() if container is None else container
    ctx = {}
    for child in container:
        if child.tag == "param":
            ctx[param_name(child)] = param_value(
                child, values.get(prefix + param_name(child)), data_paths
            )
        elif child.tag == "section":
            name = child.get("name")
            ctx[name] = build_context(values, data_paths, child, f"{prefix}{name}|")
        elif child.tag == "conditional":
            cprefix = f"{prefix}{child.get('name')}|"
            test_param = child.find("param")
            selected = values.get(cprefix + param_name(test_param), select_default(test_param))
            when = next(w for w in child.findall("when") if w.get("value") == selected)
            ctx[child.get("name")] = {
                param_name(test_param): selected,
                **build_context(values, data_paths, when, cprefix),
            }
    return ctx


def render_command(values: dict, data_paths: dict | None = None) -> str:
    """The command line Galaxy builds (galaxy.tools.evaluation.ToolEvaluator._build_command_line):
    fill the Cheetah template, strip every line and join the lines with spaces."""
    filled = str(
        fill_template(tool_source().parse_command(), context=build_context(values, data_paths))
    )
    return (
        "\n".join(line.strip() for line in filled.split("\n"))
        .replace("\n", " ")
        .replace("\r", " ")
        .strip()
    )


def xml_tests() -> list[dict]:
    return tool_source().parse_tests_to_dict()["tests"]


def values_of(test: dict) -> tuple[dict, dict]:
    """(parameter values, data file paths) of one <test>."""
    values, data = {}, {}
    for inp in test["inputs"]:
        value = inp["value"]
        values[inp["name"]] = value
        if "ftype" in inp["attributes"]:
            data[value] = TEST_DATA / value
    return values, data


def xml_test_ids():
    return [f"test{i + 1}-{values_of(t)[0]['mode|mode']}" for i, t in enumerate(xml_tests())]


# ---------------------------------------------------------------------- CLI introspection --
@cache
def cli_main():
    cli = pytest.importorskip("anndata_rnn.cli", reason="the anndata-rnn CLI is not importable")
    return cli.main


@cache
def cli_help(command: str) -> str:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli_main(), [command, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def help_options(command: str) -> set[str]:
    """Every option of a command's --help, both halves of an on/off pair included."""
    pairs = re.findall(
        r"(?m)^\s+(--[a-z0-9][a-z0-9-]*)(?: / (--[a-z0-9][a-z0-9-]*))?", cli_help(command)
    )
    return {option for pair in pairs for option in pair if option}


FAKE_CLI = """#!/usr/bin/env bash
# stands in for anndata-rnn: records its arguments, NUL separated, one invocation per file
n=$(ls "$FAKE_ARGS_DIR" | wc -l)
printf '%s\\0' "$@" > "$FAKE_ARGS_DIR/call$n"
"""


def run_rendered(command: str, workdir: Path, slots: str | None = "2") -> list[list[str]]:
    """Run a rendered command with bash, anndata-rnn replaced by a recorder; return its calls."""
    fake_bin = workdir / "fake_bin"
    args_dir = workdir / "fake_args"
    fake_bin.mkdir(exist_ok=True)
    args_dir.mkdir(exist_ok=True)
    fake = fake_bin / "anndata-rnn"
    fake.write_text(FAKE_CLI)
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "FAKE_ARGS_DIR": str(args_dir),
    }
    env.pop("GALAXY_SLOTS", None)
    if slots is not None:
        env["GALAXY_SLOTS"] = slots
    # Galaxy writes the command to tool_script.sh and runs it with bash under set -e
    script = workdir / "tool_script.sh"
    script.write_text("set -e\n" + command + "\n")
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, f"bash -n rejects the command:\n{syntax.stderr}\n{command}"
    done = subprocess.run(
        ["bash", str(script)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    calls = []
    for path in sorted(args_dir.iterdir(), key=lambda p: int(p.name[4:])):
        calls.append(path.read_bytes().decode().split("\0")[:-1])
    return calls


# -------------------------------------------------------------------------------- tests --
def test_tool_metadata():
    ts = tool_source()
    assert ts.parse_id() == "anndata_rnn"
    tool_version = ts.parse_version().split("+galaxy")[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+\+galaxy\d+", ts.parse_version())
    assert float(ts.parse_profile()) >= 23.0
    requirements, *_ = ts.parse_requirements()
    pins = {r.name: r.version for r in requirements}
    assert pins["anndata-rnn"] == tool_version
    assert pins["anndata"] == "0.12.19"
    assert pins["pytorch"] == "2.13.0"
    assert {"topic_3170", "topic_3308", "topic_3474"} <= set(ts.parse_edam_topics())
    assert {"operation_2990", "operation_3659", "operation_3935"} <= set(ts.parse_edam_operations())
    command_elem = ts.root.find("command")
    assert command_elem.get("detect_errors") == "exit_code"
    assert "\\${GALAXY_SLOTS:-1}" in ts.parse_command()
    dois = {c.text for c in ts.root.findall("citations/citation") if c.get("type") == "doi"}
    assert {"10.1162/neco.1997.9.8.1735", "10.1186/s13059-017-1382-0"} <= dois


def test_tool_version_matches_package():
    """The wrapper's @TOOL_VERSION@ follows the package version (pyproject.toml)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert tool_source().parse_version().split("+galaxy")[0] == project["version"]


def test_lint_clean():
    skip = ["BioToolsValid"]  # needs the network
    try:
        import edam_ontology  # noqa: F401
    except ImportError:
        skip.append("EDAMTermsValid")  # needs the optional edam-ontology package
    ctx = LintContext(level="all", skip_types=skip)
    lint_tool_source_with(ctx, tool_source())
    problems = [
        f"{m.level}: {m.message}" for m in ctx.message_list if m.level in ("error", "warning")
    ]
    assert not problems, "\n".join(problems)
    assert any(m.level == "check" for m in ctx.message_list)  # the linters did run


def test_every_text_param_is_sanitized_and_validated():
    for path, elem in iter_params():
        if elem.get("type") != "text":
            continue
        sanitizer = elem.find("sanitizer")
        assert sanitizer is not None, f"{path} has no <sanitizer>"
        assert "'" not in Sanitizer(sanitizer).valid, f"{path}: its sanitizer lets a quote through"
        validators = [v for v in elem.findall("validator") if v.get("type") == "regex"]
        assert validators, f"{path} has no regex validator"


def test_every_parameter_is_tested():
    params = {path for path, _ in iter_params()}
    tested = {inp["name"] for t in xml_tests() for inp in t["inputs"]}
    assert not params - tested, f"parameters no <test> sets: {sorted(params - tested)}"
    assert not tested - params, f"<test> sets unknown parameters: {sorted(tested - params)}"


def test_every_mode_is_tested():
    mode_param = inputs_elem().find("conditional[@name='mode']/param")
    modes = {o.get("value") for o in mode_param.findall("option")}
    tested = {
        inp["value"] for t in xml_tests() for inp in t["inputs"] if inp["name"] == "mode|mode"
    }
    assert modes == tested


def test_every_param_argument_is_a_cli_option():
    """Each <param argument="--x"> is an option of the subcommand(s) of the <when>s it is in."""
    mode_cond = inputs_elem().find("conditional[@name='mode']")
    for when in mode_cond.findall("when"):
        command = when.get("value")
        options = help_options(command)
        for path, elem in iter_params(when, "mode|"):
            argument = elem.get("argument")
            if argument:
                assert argument in options, (
                    f"{path}: {argument} is not an option of anndata-rnn {command}"
                )
    device = inputs_elem().find("param[@argument='--device']")
    for command in (w.get("value") for w in mode_cond.findall("when")):
        assert "--device" in help_options(command)
        choices = re.search(r"--device \[([a-z|]+)\]", cli_help(command)).group(1).split("|")
        assert sorted(choices) == sorted(o.get("value") for o in device.findall("option"))


@pytest.mark.parametrize("index", range(len(xml_tests())), ids=xml_test_ids())
def test_rendered_command_matches_cli(index, tmp_path, monkeypatch):
    """Render the command of each <test> and parse it with bash and with the real click CLI."""
    import click

    test = xml_tests()[index]
    values, data = values_of(test)
    command = render_command(values, data)
    calls = run_rendered(command, tmp_path)
    assert len(calls) == 1, command
    args = calls[0]
    subcommand = args[0]
    assert subcommand == values["mode|mode"]
    assert args[args.index("--threads") + 1] == "2"  # ${GALAXY_SLOTS:-1}
    options = help_options(subcommand)
    for arg in args:
        if arg.startswith("--"):
            assert arg in options, f"{arg} is not in `anndata-rnn {subcommand} --help`"
    # click itself accepts the argument list (types, choices, required options, files exist)
    monkeypatch.chdir(tmp_path)
    group = cli_main()
    with group.make_context("anndata-rnn", [subcommand, "--help"], resilient_parsing=True) as ctx:
        cmd = group.get_command(ctx, subcommand)
    try:
        cmd.make_context(subcommand, list(args[1:]))
    except click.ClickException as error:  # pragma: no cover - a failure message
        pytest.fail(
            f"anndata-rnn {subcommand} rejects the rendered arguments: {error.format_message()}\n{args}"
        )


def test_galaxy_slots_default_is_one(tmp_path):
    values, data = values_of(xml_tests()[0])
    (args,) = run_rendered(render_command(values, data), tmp_path, slots=None)
    assert args[args.index("--threads") + 1] == "1"


def output_filter_active(output_name: str, values: dict) -> bool:
    """Evaluate the <filter> of an output as Galaxy does (against the parameter dict)."""
    data = tool_source().root.find(f"outputs/data[@name='{output_name}']")
    ctx = build_context(values)
    return all(eval(f.text.strip(), {}, dict(ctx)) for f in data.findall("filter"))  # noqa: S307


def tool_modes() -> list[str]:
    mode_param = inputs_elem().find("conditional[@name='mode']/param")
    return [o.get("value") for o in mode_param.findall("option")]


def test_output_filters():
    assert {"classify", "forecast", "embed", "predict", "explain"} <= set(tool_modes())
    for mode in tool_modes():
        values = {"mode|mode": mode}
        assert output_filter_active("anndata_out", values)
        for name in ("model_out", "metrics"):
            assert output_filter_active(name, values) == (mode in TRAINING_MODES), (name, mode)
        # the top-gene table: explain only, written by default, and not when it is turned off
        assert output_filter_active("top_genes", values) == (mode == "explain"), mode
        # the HTML report: every mode, by default
        assert output_filter_active("html_report", values), mode
        assert not output_filter_active("html_report", {"mode|mode": mode, "report": False}), mode
    assert not output_filter_active(
        "top_genes", {"mode|mode": "explain", "mode|table|write_table": "no"}
    )
    for test in xml_tests():
        if test["expect_num_outputs"]:
            values, _ = values_of(test)
            active = [
                o.get("name")
                for o in tool_source().root.findall("outputs/data")
                if output_filter_active(o.get("name"), values)
            ]
            assert len(active) == int(test["expect_num_outputs"])


# ------------------------------------------------------------ run the CLI for the XML tests --
@pytest.fixture
def restore_torch_threads():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("index", range(len(xml_tests())), ids=xml_test_ids())
def test_xml_test_assertions_hold_on_real_cli_output(
    index, tmp_path, monkeypatch, restore_torch_threads
):
    """Run the CLI with the rendered arguments of each <test> and check the test's assertions.

    The CLI runs in-process (one import of torch/scanpy for the whole module) with the argument
    list bash produced from the rendered command, in a job-like working directory.
    """
    from click.testing import CliRunner

    test = xml_tests()[index]
    values, data = values_of(test)
    command = render_command(values, data)
    calls = run_rendered(command, tmp_path, slots="1")  # also creates the input symlinks
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_main(), calls[0])
    stdout, stderr = result.stdout, result.stderr
    if test["expect_failure"]:
        assert result.exit_code != 0, stdout
    else:
        assert result.exit_code == 0, f"{stderr}\n{result.exception!r}"
    for stream, asserts in (("stdout", test["stdout"]), ("stderr", test["stderr"])):
        if asserts:
            verify_assertions((stdout if stream == "stdout" else stderr).encode(), asserts)
    from_work_dir = {
        o.get("name"): o.get("from_work_dir") for o in tool_source().root.findall("outputs/data")
    }
    for output in test["outputs"]:
        path = tmp_path / from_work_dir[output["name"]]
        assert path.exists(), f"{output['name']}: the CLI wrote no {path.name}"
        verify_assertions(path.read_bytes(), output["attributes"]["assert_list"])
    if not test["expect_failure"]:
        written = {name for name, file in from_work_dir.items() if (tmp_path / file).exists()}
        active = {name for name in from_work_dir if output_filter_active(name, values)}
        assert written == active, (
            "outputs written by the CLI differ from the outputs Galaxy collects"
        )


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("galaxy_krumsiek11_model.h5", "galaxy_krumsiek11_series.h5ad"),
        ("galaxy_krumsiek11_forecaster.h5", "galaxy_krumsiek11_series.h5ad"),
        ("galaxy_pbmc_model.h5", "galaxy_pbmc_small.h5ad"),
    ],
)
def test_committed_model_still_loads(model, data, tmp_path, monkeypatch, restore_torch_threads):
    """The test-data model files are inputs of the predict and explain tests."""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli_main(),
        [
            "predict",
            str(TEST_DATA / data),
            "--model",
            str(TEST_DATA / model),
            "--output",
            "out.h5ad",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, textwrap.dedent(f"""
        The committed model no longer loads (model format changed?). Regenerate the Galaxy test
        files with `python .ci/galaxy/make_test_data.py` and commit them.
        {result.stderr}""")


def test_predict_without_overwrite_refuses_existing_keys(
    tmp_path, monkeypatch, restore_torch_threads
):
    """Why predict test 6 sets overwrite: its input already holds the rnn_* keys."""
    from click.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        cli_main(),
        [
            "predict",
            str(TEST_DATA / "galaxy_krumsiek11_classified.h5ad"),
            "--model",
            str(TEST_DATA / "galaxy_krumsiek11_model.h5"),
            "--output",
            "out.h5ad",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code != 0


# ------------------------------------------------------------------------- shell injection --
def text_params():
    return [(path, elem) for path, elem in iter_params() if elem.get("type") == "text"]


@pytest.mark.parametrize("hostile", HOSTILE_VALUES)
def test_validators_reject_hostile_values(hostile):
    for path, elem in text_params():
        for validator in elem.findall("validator"):
            if validator.get("type") == "regex":
                # Galaxy's RegexValidator: re.match(expression, value), negate="false"
                assert not re.match(validator.text, hostile), f"{path} accepts {hostile!r}"


@pytest.mark.parametrize("hostile", HOSTILE_VALUES)
def test_hostile_values_cannot_run_commands(hostile, tmp_path):
    """Even past the validators (e.g. an API call that skips them), sanitizer + quoting hold."""
    cases = all_selections()
    assert len({case["mode|mode"] for case in cases}) >= 2
    n_checked = 0
    for case in cases:
        values = dict(case)
        targets = []
        active = active_paths(values)
        for path, _elem in text_params():
            if path in active:
                values[path] = hostile
                targets.append(path)
        command = render_command(values)
        workdir = tmp_path / f"case{n_checked}"
        workdir.mkdir()
        calls = run_rendered(command, workdir)
        assert not list(workdir.rglob("pwned")), f"a shell command ran:\n{command}"
        assert len(calls) == 1
        args = calls[0]
        # every hostile value arrived as exactly one argument, stripped of shell syntax
        for path in targets:
            elem = dict(text_params())[path]
            expected = Sanitizer(elem.find("sanitizer"))(hostile)
            flag = elem.get("argument")
            assert flag in args, f"{flag} missing from {args}"
            assert args[args.index(flag) + 1] == expected
            assert not set(expected) & set("'\"`$;|&\n()")
        n_checked += 1
    assert n_checked == len(cases)


def all_selections(container=None, prefix="") -> list[dict]:
    """Every combination of the conditionals' choices (each mode x layout x matrix source ...)."""
    container = inputs_elem() if container is None else container
    combos = [{}]
    for child in container:
        if child.tag == "section":
            nested = all_selections(child, f"{prefix}{child.get('name')}|")
        elif child.tag == "conditional":
            cprefix = f"{prefix}{child.get('name')}|"
            test_path = cprefix + param_name(child.find("param"))
            nested = [
                {test_path: when.get("value"), **sub}
                for when in child.findall("when")
                for sub in all_selections(when, cprefix)
            ]
        else:
            continue
        combos = [{**a, **b} for a in combos for b in nested]
    return combos


def active_paths(values: dict, container=None, prefix="") -> set[str]:
    """Paths of the parameters in the selected <when>s (the ones the command can use)."""
    container = inputs_elem() if container is None else container
    paths = set()
    for child in container:
        if child.tag == "param":
            paths.add(prefix + param_name(child))
        elif child.tag == "section":
            paths |= active_paths(values, child, f"{prefix}{child.get('name')}|")
        elif child.tag == "conditional":
            cprefix = f"{prefix}{child.get('name')}|"
            test_param = child.find("param")
            selected = values.get(cprefix + param_name(test_param), select_default(test_param))
            paths.add(cprefix + param_name(test_param))
            when = next(w for w in child.findall("when") if w.get("value") == selected)
            paths |= active_paths(values, when, cprefix)
    return paths


def explain_target_param():
    (elem,) = [e for path, e in text_params() if path == "mode|target"]
    return elem


@pytest.mark.parametrize(
    "names",
    ["CD14+ Monocyte", "CD14+ Monocyte,CD4+/CD25 T Reg", "CD8+/CD45RA+ Naive Cytotoxic", "Gata2"],
)
def test_explain_target_keeps_class_names(names, tmp_path):
    """Class names with '+', '/' and spaces pass the validator and the sanitizer unchanged and
    reach the CLI as one single-quoted argument."""
    elem = explain_target_param()
    (validator,) = elem.findall("validator")
    assert re.match(validator.text, names)
    assert Sanitizer(elem.find("sanitizer"))(names) == names
    values = {"mode|mode": "explain", "mode|target": names}
    command = render_command(values)
    assert f"--target '{names}'" in command
    (args,) = run_rendered(command, tmp_path)
    assert args[args.index("--target") + 1] == names


def test_explain_target_sanitizer_is_the_only_one_keeping_spaces():
    """Spaces are safe only inside the single quotes of --target: no other text parameter keeps
    them, and the target's sanitizer keeps no shell character."""
    for path, elem in text_params():
        valid = Sanitizer(elem.find("sanitizer")).valid
        assert not valid & set("'\"`$;|&<>(){}[]*?!~#\\\n\t"), path
        if path != "mode|target":
            assert " " not in valid, path
    assert "mode|target" in dict(text_params())


def test_quoting_alone_would_not_be_enough(tmp_path):
    """Sanity check of the harness: an unsanitized quote does break out, so the sanitizer matters."""
    hostile = "'; touch pwned #"
    command = f"anndata-rnn classify --label '{hostile}'"
    run_rendered(command, tmp_path)
    assert (tmp_path / "pwned").exists()


# ------------------------------------------------------- the hostile-key check on the server --
def _ci_helpers():
    import importlib.util

    path = TOOL_XML.parent / ".ci" / "galaxy" / "ci_helpers.py"
    spec = importlib.util.spec_from_file_location("ci_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hostile_key_check_for_the_real_server(tmp_path):
    """run_tool_tests.sh serves a copy of the tool without its key validators whose one test
    sends a hostile key; the test expects the key Galaxy's sanitizer makes of it, a listing of
    the job directory, and no PWNED file in it. The copy is a valid tool (it lints clean) and the
    command it renders runs nothing but anndata-rnn."""
    helpers = _ci_helpers()
    (tmp_path / "tool").mkdir()
    helpers.hostile_xml(str(TOOL_XML.parent), str(tmp_path / "tool"))
    copy = tmp_path / "tool" / "galaxy_tool.xml"
    source = get_tool_source(str(copy))
    assert source.parse_id() == "anndata_rnn_hostile"
    ctx = LintContext(level="all", skip_types=["BioToolsValid", "EDAMTermsValid"])
    lint_tool_source_with(ctx, source)
    problems = [m.message for m in ctx.message_list if m.level in ("error", "warning")]
    assert problems == []
    (test,) = source.parse_tests_to_dict()["tests"]
    values = {inp["name"]: inp["value"] for inp in test["inputs"]}
    hostile = values["mode|key_added"]
    for fragment in ("'", '"', "$(", "`", ";"):
        assert fragment in hostile, fragment
    # the key the test expects is the one Galaxy's sanitizer (ported above) keeps
    elem = dict(text_params())["mode|key_added"]  # every mode's key uses the same sanitizer
    key = Sanitizer(elem.find("sanitizer"))(hostile)
    assert key == helpers.sanitized_key(hostile) == "xtouchPWNEDtouchPWNEDtouchPWNEDtouchPWNEDecho"
    asserted = [a["attributes"] for a in test["outputs"][0]["attributes"]["assert_list"]]
    assert asserted[0]["keys"].split(",")[0] == f"obs/{key}_pred"
    stdout = {(a["tag"], a["attributes"].get("line"), a["attributes"].get("negate"))
              for a in test["stdout"]}  # fmt: skip
    assert ("has_line", "PWNED", "true") in stdout
    assert source.parse_command().rstrip().endswith("&& ls -a")
    # the main tool rendered with this value (validators bypassed) touches nothing
    command = render_command({"mode|mode": "predict", "mode|key_added": hostile})
    (args,) = run_rendered(command, tmp_path)
    assert not list(tmp_path.rglob("PWNED"))
    assert args[args.index("--key-added") + 1] == key


# ------------------------------------------------------------------ the options table --
def _galaxy_default(param):
    """A Galaxy parameter's default in command-line form (None: the option is left out)."""
    kind = param.get("type")
    if kind == "boolean":
        return param.get("checked", "false") == "true"
    if kind == "select":
        options = param.findall("option")
        chosen = [o.get("value") for o in options if o.get("selected") == "true"]
        return chosen[0] if chosen else options[0].get("value")
    value = param.get("value")
    if value in (None, "") and param.get("optional") == "true":
        return None
    if kind == "integer":
        return int(value)
    if kind == "float":
        return float(value)
    return value


#: Galaxy parameters whose default is the table's in another form, with the reason
GALAXY_DEFAULT_FORMS = {
    # the table's None means "1, or the number of --future-times"; Galaxy asks for steps or
    # times, and its steps branch starts at 1
    ("forecast", "--horizon"): (1, None),
    # Galaxy leaves --n-top-genes out when empty: the command line's auto
    ("classify", "--n-top-genes"): (None, "auto"),
    ("forecast", "--n-top-genes"): (None, "auto"),
    ("embed", "--n-top-genes"): (None, "auto"),
}


def test_galaxy_parameters_match_the_options_table():
    """Every Galaxy parameter that sets a training option has the default of
    :mod:`anndata_rnn.options` for its mode and bounds within the table's; every other integer
    parameter carries the bounds of the click option it sets (the command line would refuse
    anything else after the job was queued)."""
    import click
    from galaxy.util import xml_macros

    from anndata_rnn.cli import main
    from anndata_rnn.options import TASKS, options_of

    mode = xml_macros.load(str(TOOL_XML)).getroot().find("inputs/conditional[@name='mode']")
    parents = {child: parent for parent in mode.iter() for child in parent}

    def chosen_by_default(param) -> bool:
        """Whether Galaxy sets the parameter when the user changes nothing (it is not in a
        branch of an inner conditional that must be picked first)."""
        node = parents[param]
        while parents.get(node) is not None and parents[node] is not mode:
            if node.tag == "when":
                conditional = parents[node]
                if node.get("value") != _galaxy_default(conditional.find("param")):
                    return False
            node = parents[node]
        return True

    checked, wrong = 0, []
    for when in mode.findall("when"):
        task = when.get("value")
        table = {}
        if task in TASKS:
            table = {
                o.cli_flag.split("/")[0]: o for o in options_of(task) if o.on_command_line(task)
            }
        click_params = {opt: p for p in main.commands[task].params for opt in p.opts}
        for param in when.iter("param"):
            argument, kind = param.get("argument"), param.get("type")
            if argument is None:
                continue
            bounds = (param.get("min"), param.get("max"))
            option = table.get(argument)
            if option is None:
                click_param = click_params[argument]
                if kind == "integer" and isinstance(click_param.type, click.IntRange):
                    ranged = click_param.type
                    if bounds != (str(ranged.min), str(ranged.max)):
                        wrong.append((task, argument, bounds, (ranged.min, ranged.max)))
                    checked += 1
                continue
            default = option.cli_default_for(task)
            galaxy = _galaxy_default(param)
            if (task, argument) in GALAXY_DEFAULT_FORMS:
                assert (galaxy, default) == GALAXY_DEFAULT_FORMS[task, argument]
            elif galaxy != default and chosen_by_default(param):
                wrong.append((task, argument, "default", galaxy, default))
            if kind == "select" and option.choices_for(task) is not None:
                values = {o.get("value") for o in param.findall("option")}
                if not values <= set(option.choices_for(task)):
                    wrong.append((task, argument, "choices", values))
            if kind == "integer" and option.click_range:
                # an integer's range is exactly the command line's
                if bounds != (str(option.low), str(option.high)):
                    wrong.append((task, argument, "bounds", bounds, (option.low, option.high)))
            elif kind in ("integer", "float"):
                # Galaxy may narrow a range (its min and max are inclusive)
                low, high = (None if b is None else float(b) for b in bounds)
                if option.low is not None and (low is None or low < option.low):
                    wrong.append((task, argument, "min", low, option.low))
                if option.high is not None and (high is None or high > option.high):
                    wrong.append((task, argument, "max", high, option.high))
            checked += 1
    assert not wrong, wrong
    assert checked >= 80, checked
