"""Generate r/anndataRnn/R/tasks.R: one R function per anndata-rnn command, from the click
commands themselves (argument names, which options are flags, the help texts).

Every R argument defaults to NULL = "not passed": the command line's own default applies, so
R defaults cannot drift from the CLI. Run after a CLI option changes:

    PYTHONPATH=. python r/generate_rnn_functions.py

tests/test_r_interop.py::test_r_functions_mirror_the_cli_options fails while the installed
R package and the click commands disagree.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from anndata_rnn.cli import main  # noqa: E402

#: R function -> (CLI command, arguments placed first, in this order)
FUNCTIONS = {
    "rnnClassify": ("classify", ["label", "layout", "series_key", "time_key"]),
    "rnnForecast": ("forecast", ["layout", "series_key", "time_key"]),
    "rnnEmbed": ("embed", ["layout", "series_key", "time_key"]),
    "rnnExplain": ("explain", ["model"]),
    "rnnPredict": ("predict", ["model"]),
}
#: options R manages itself: the input and output files
MANAGED = {"input", "output"}

TITLES = {
    "rnnClassify": "Train an LSTM/GRU classifier on a SummarizedExperiment",
    "rnnForecast": "Train an LSTM/GRU forecaster of a time course",
    "rnnEmbed": "Train an LSTM/GRU autoencoder: an embedding (and clusters)",
    "rnnExplain": "Which genes and time steps drive a saved model's predictions",
    "rnnPredict": "Apply a saved anndata-rnn model to a SummarizedExperiment",
}

RESULTS = {
    "rnnClassify": r"""The same object with, for \code{layout = "obs-series"} or \code{"profile"},
#'   \code{colData(x)$<key>_pred} (a factor), \code{$<key>_conf}, \code{$<key>_split},
#'   \code{reducedDim(x, "<key>_proba")} (class probabilities) and
#'   \code{reducedDim(x, "<key>")} (the embedding; \code{obsm/X_<key>} in the file); for
#'   \code{layout = "var-series"} the same names in \code{rowData(x)} (matrices as matrix
#'   columns). \code{metadata(x)$<key>} holds the run record (parameters, classes,
#'   \code{metrics} of the RNN and its baselines, history) and \code{model_path}.""",
    "rnnForecast": r"""The same object with \code{assay(x, "<key>_forecast")} (every value
#'   predicted from the steps before it), \code{<key>_split} in \code{colData} or
#'   \code{rowData}, the embedding \code{reducedDim(x, "<key>")} (\code{rowData} for
#'   var-series, with the rollout \code{rowData(x)$<key>_forecast} when
#'   \code{holdout_steps} is set) and \code{metadata(x)$<key>}: metrics of the RNN,
#'   persistence and the linear autoregression, \code{future} forecasts, history and
#'   \code{model_path}.""",
    "rnnEmbed": r"""The same object with the embedding \code{reducedDim(x, "<key>")} (a
#'   \code{rowData} matrix column for var-series), \code{<key>_cluster} (a factor, with
#'   \code{cluster}) and \code{<key>_split} in \code{colData}/\code{rowData}, and
#'   \code{metadata(x)$<key>} with the reconstruction errors against PCA, history and
#'   \code{model_path}.""",
    "rnnExplain": r"""The same object with \code{rowData(x)$<key>_importance} (overall and
#'   per class), \code{reducedDim(x, "<key>_step_importance")} (time-series layouts) and
#'   \code{metadata(x)$<key>} (classes, step importance, method and completeness check;
#'   \code{model_path} is the model explained).""",
    "rnnPredict": r"""The same object with the model's outputs (for a classifier
#'   \code{<key>_pred}, \code{<key>_conf}, \code{reducedDim(x, "<key>_proba")}, the
#'   embedding; for a forecaster the forecast assay; for an embedding model the embedding)
#'   and \code{metadata(x)$<key>}, where \code{<key>} is the model's key unless
#'   \code{key_added} is set; \code{model_path} is the model applied.""",
}

EXAMPLES = {
    "rnnClassify": """\
file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
yeast <- readH5ad(file)   # 400 genes x 77 arrays (6 time courses)
# is a gene cell-cycle regulated? (genes as sequences over the cdc15 time course)
yeast <- rnnClassify(yeast, label = "cell_cycle_800", layout = "var-series",
    series_key = "series", time_key = "time", series_subset = "cdc15",
    hidden = 8, epochs = 2, min_steps = 0, quiet = TRUE)
table(rowData(yeast)$rnn_pred, rowData(yeast)$cell_cycle_800)
metadata(yeast)$rnn$metrics$rnn$accuracy
metadata(yeast)$rnn$model_path""",
    "rnnForecast": """\
file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
yeast <- readH5ad(file)
# a bulk time course as a SummarizedExperiment: genes x arrays
se <- SummarizedExperiment(assays(yeast), colData = colData(yeast))
se <- rnnForecast(se, series_key = "series", time_key = "time",
    series_subset = c("cdc15", "cdc28"), hidden = 8, epochs = 2, min_steps = 0,
    quiet = TRUE)
assayNames(se)
metadata(se)$rnn$metrics$rnn""",
    "rnnEmbed": """\
file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
yeast <- readH5ad(file)
yeast <- rnnEmbed(yeast, layout = "var-series", series_key = "series",
    time_key = "time", series_subset = "cdc15", n_latent = 4, cluster = "kmeans",
    n_clusters = 3, hidden = 8, epochs = 2, quiet = TRUE)
dim(rowData(yeast)$rnn)
table(rowData(yeast)$rnn_cluster)""",
    "rnnExplain": """\
file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
yeast <- readH5ad(file)
yeast <- rnnClassify(yeast, label = "cell_cycle_800", layout = "var-series",
    series_key = "series", time_key = "time", series_subset = "cdc15",
    hidden = 8, epochs = 2, min_steps = 0, quiet = TRUE)
yeast <- rnnExplain(yeast, model = metadata(yeast)$rnn$model_path,
    key_added = "why", method = "input_x_gradient", quiet = TRUE)
head(metadata(yeast)$why$step_importance)""",
    "rnnPredict": """\
file <- system.file("extdata", "yeast_spellman_small.h5ad", package = "anndataRnn")
yeast <- readH5ad(file)
yeast <- rnnClassify(yeast, label = "cell_cycle_800", layout = "var-series",
    series_key = "series", time_key = "time", series_subset = "cdc15",
    hidden = 8, epochs = 2, min_steps = 0, quiet = TRUE)
# the same genes over another time course (alpha factor synchronisation)
other <- readH5ad(file)
other <- rnnPredict(other, model = metadata(yeast)$rnn$model_path,
    series_subset = "alpha", quiet = TRUE)
table(rowData(other)$rnn_pred)""",
}


def r_name(param: click.Parameter) -> str:
    """The R argument of an option: its long name with underscores (--label -> label)."""
    longs = [o for o in param.opts if o.startswith("--")]
    return longs[0][2:].replace("-", "_")


#: R code files must be ASCII (R CMD check)
ASCII = {"±": "+/-", "−": "-", "²": "^2", "×": "x", "≥": ">=", "≤": "<=", "–": "-", "—": "-",
         "’": "'", "‘": "'", "“": '"', "”": '"', "…": "...", "→": "->"}  # fmt: skip


def rd_escape(text: str) -> str:
    for k, v in ASCII.items():
        text = text.replace(k, v)
    text = text.encode("ascii", "replace").decode()
    text = text.replace("\\", "\\\\").replace("%", "\\%")
    return text.replace("{", "\\{").replace("}", "\\}")


def param_doc(param: click.Option) -> str:
    opt = [o for o in param.opts if o.startswith("--")][0]
    help_text = " ".join((param.help or "").split())
    if param.is_flag and param.secondary_opts:
        kind = f"\\code{{TRUE}} passes \\code{{{opt}}}, \\code{{FALSE}} \\code{{{param.secondary_opts[0]}}}."
    elif param.is_flag:
        kind = f"\\code{{TRUE}} passes \\code{{{opt}}}."
    else:
        kind = f"Passed as \\code{{{opt}}}"
        if isinstance(param.type, click.Choice):
            kind += " (one of " + ", ".join(f'\\code{{"{c}"}}' for c in param.type.choices) + ")"
        kind += "."
    default = ""
    if param.show_default and param.default is not None and not param.is_flag:
        default = f" CLI default: \\code{{{rd_escape(str(param.default))}}}."
    elif param.is_flag and param.secondary_opts:
        default = f" CLI default: \\code{{{'TRUE' if param.default else 'FALSE'}}}."
    return f"{kind} {rd_escape(help_text)}{default}".strip()


def function_source(fun: str) -> tuple[str, dict[str, str]]:
    command, first = FUNCTIONS[fun]
    cmd = main.commands[command]
    options = {r_name(p): p for p in cmd.params if isinstance(p, click.Option)}
    options = {k: p for k, p in options.items() if k not in MANAGED and k != "help"}
    order = [n for n in first if n in options] + [n for n in options if n not in first]
    # assay goes after the data-layout arguments
    lead = len([n for n in first if n in options])
    formals = ["x", *order[:lead], "assay", *order[lead:]]
    kinds = {}
    for name, p in options.items():
        if p.is_flag and p.secondary_opts:
            kinds[name] = "pair"
        elif p.is_flag:
            kinds[name] = "flag"
        else:
            kinds[name] = "value"
    opt_strings = {n: [o for o in options[n].opts if o.startswith("--")][0] for n in order}

    doc = [f"#' {TITLES[fun]}", "#'"]
    first_line = (cmd.help or "").strip().splitlines()[0]
    doc += [
        f"#' Runs \\code{{anndata-rnn {command}}} ({rd_escape(first_line.rstrip('.'))}) on",
        "#' \\code{x}: writes \\code{x} to a temporary \\code{.h5ad} (\\code{\\link{writeH5ad}}),",
        "#' runs the command line (\\code{\\link{rnnExecutable}}) and reads the results back",
        "#' into \\code{x}; nothing already in \\code{x} is changed.",
        "#'",
        "#' Every argument but \\code{x} and \\code{assay} is the command line option of the",
        "#' same name (underscores for dashes); \\code{NULL} (the default) does not pass it, so",
        "#' the command line's own default applies. Vectors are passed comma separated",
        "#' (\\code{hidden = c(128, 64)}). An error of the tool is an R error carrying its",
        "#' one-line message.",
        "#'",
        "#' @param x A \\code{SummarizedExperiment} or \\code{SingleCellExperiment} (genes x",
        "#'   cells, or genes x time points).",
        "#' @param assay Name or index of the assay the model reads (\\code{X} of the",
        "#'   \\code{.h5ad}); default: the first assay.",
    ]
    for name in order:
        text = param_doc(options[name])
        if name == "model_out":
            text += (
                " Default here: a new file in \\code{tempdir()} (kept for the R session);"
                " its path is in \\code{metadata(x)$<key>$model_path}."
            )
        wrapped = textwrap.wrap(f"@param {name} {text}", 88, break_on_hyphens=False)
        doc += [f"#' {wrapped[0]}"] + [f"#'   {line}" for line in wrapped[1:]]
    doc += ["#' @return " + RESULTS[fun], "#' @seealso \\code{\\link{readH5ad}},"]
    doc += ['#\'   \\code{\\link{readRnnModel}}, the README section "From R".']
    doc += ["#' @examplesIf rnnAvailable()"]
    doc += [f"#' {line}" for line in EXAMPLES[fun].splitlines()]
    doc += ["#' @export"]
    args = ",\n    ".join([formals[0]] + [f"{n} = NULL" for n in formals[1:]])
    body = [
        f"{fun} <- function({args}) {{",
        f'    .run_tool("{command}", x, assay, as.list(environment()))',
        "}",
    ]
    return "\n".join(doc + body), {"options": opt_strings, "kinds": kinds}


def r_list(values: dict[str, str]) -> str:
    items = [f'{k} = "{v}"' for k, v in values.items()]
    return "c(\n            " + ",\n            ".join(items) + ")"


def main_() -> None:
    parts = [
        "# Generated by r/generate_rnn_functions.py from the click commands of anndata-rnn;",
        "# do not edit by hand (tests/test_r_interop.py checks it against the CLI).",
        "",
    ]
    tables = {}
    for fun in FUNCTIONS:
        src, table = function_source(fun)
        parts += [src, ""]
        tables[FUNCTIONS[fun][0]] = table
    parts.append("# command -> R argument -> command line option, and its kind")
    parts.append("# (value: --opt VALUE; flag: --opt when TRUE; pair: --opt / --no-opt)")
    parts.append(".rnn_options <- list(")
    entries = []
    for command, table in tables.items():
        entries.append(
            f"    {command} = list(\n        options = {r_list(table['options'])},\n"
            f"        kinds = {r_list(table['kinds'])})"
        )
    parts.append(",\n".join(entries) + ")")
    text = "\n".join(parts) + "\n"
    out = ROOT / "r" / "anndataRnn" / "R" / "tasks.R"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main_()
