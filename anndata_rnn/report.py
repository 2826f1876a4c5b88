"""A self-contained HTML report of one run, built from the output AnnData alone.

The report is one file: plots are embedded as PNG ``data:`` URIs, the styles are inline, there
is no script and no external resource, so it opens offline in any browser (and in Galaxy, whose
HTML sanitizer keeps the text and tables even where it drops the images). Every string that
comes from the data (column, class and gene names, parameters, warnings) is HTML-escaped.

Use it from Python::

    import anndata_rnn as ar

    ar.tl.classify(adata, label_key="cell_cycle_800", layout="var-series", ...)
    ar.report.write_report(adata, "report.html")

or with ``--report report.html`` on the command line (classify, forecast, embed, explain,
predict).
"""

from __future__ import annotations

import base64
import html
import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from .errors import InputError, listed
from .metrics import MIN_TEST_PER_CLASS, MIN_TEST_UNITS
from .sequences import Layout

#: the order of the sections: what a reader looks at first comes first
ORDER = (
    "title", "summary", "metrics", "plots", "data", "parameters", "warnings", "timings", "versions",
)  # fmt: skip


def _unit_name(layout) -> str:
    """What one unit of the run is called ("unit" when the record does not say its layout)."""
    known = Layout.get(layout)
    return known.unit_name if known is not None else "unit"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 70em; padding: 0 1em; color: #222; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f77b4; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.warning { background: #fff4e5; border-left: 5px solid #e67e00; padding: .5em .8em;
           margin: .6em 0; }
.note { color: #555; font-size: .92em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
code, pre { background: #f6f6f6; padding: .1em .3em; }
pre { white-space: pre-wrap; word-break: break-all; padding: .5em; }
"""


# ------------------------------------------------------------------------------- utilities --
def _e(value) -> str:
    """HTML-escaped text of any value."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    if isinstance(value, bytes | str):
        return _e(value)
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return _e(", ".join(f"{k}={_plain(v)}" for k, v in value.items()))
    if np.ndim(value) > 0:
        items = list(np.asarray(value).ravel())
        text = ", ".join(_plain(v) for v in items[:20]) + (" …" if len(items) > 20 else "")
        return _e(text)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "n/a" if not np.isfinite(value) else f"{float(value):.4g}"
    return _e(value)


def _plain(value) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)


def _table(header: list[str], rows: Iterable[list], numeric_from: int = 1) -> str:
    out = ["<table>", "<tr>" + "".join(f'<th scope="col">{_e(h)}</th>' for h in header) + "</tr>"]
    for row in rows:
        cells = []
        for i, value in enumerate(row):
            if i == 0:
                cells.append(f'<th scope="row">{_fmt(value)}</th>')
            else:
                cls = ' class="num"' if i >= numeric_from and not isinstance(value, str) else ""
                cells.append(f"<td{cls}>{_fmt(value)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _warning(text: str) -> str:
    return f'<p class="warning" role="alert"><strong>Warning:</strong> {_e(text)}</p>'


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _figure_png(fig) -> str:
    """A figure as a base64 PNG data URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------- what the run wrote --
def split_sizes(adata: AnnData, key: str = "rnn") -> pd.DataFrame:
    """Units per split (train / val / test / unused) from the ``{key}_split`` column.

    Units are what the run split: series (obs-series, counted once however many observations
    they have), genes (var-series) or observations (profile). With the run's label column
    (``label_key`` or ``eval_label``) beside it, one more column per class counts its units.

    Parameters
    ----------
    adata
        The output AnnData.
    key
        The ``key_added`` of the run.

    Returns
    -------
    pandas.DataFrame
        Index: the splits; columns ``units`` and one per class. Empty without a split column.
    """
    record = adata.uns.get(key, {})
    column = f"{key}_split"
    frame = adata.var if column in adata.var else adata.obs if column in adata.obs else None
    if frame is None:
        return pd.DataFrame()
    params = record.get("params", {})
    layout = _text(params.get("layout", record.get("layout", "")))
    label = record.get("label_key", record.get("eval_label"))
    label = _text(label) if label is not None and _text(label) in frame else None
    data = pd.DataFrame({"split": frame[column].astype(str).to_numpy()}, index=frame.index)
    if label is not None:
        data["label"] = frame[label].astype(str).where(frame[label].notna(), None).to_numpy()
    series_key = params.get("series_key")
    level = _text(record.get("level", "unit"))
    if (
        frame is adata.obs
        and Layout.of(layout).steps_are_observations
        and series_key
        and level != "step"
    ):
        data["unit"] = adata.obs[_text(series_key)].astype(str).to_numpy()
        data = data.drop_duplicates("unit")
    order = [s for s in ("train", "val", "test", "unused") if s in set(data["split"])]
    order += sorted(set(data["split"]) - set(order))
    out = data["split"].value_counts().reindex(order).rename("units").to_frame()
    if label is not None:
        counts = pd.crosstab(data["split"], data["label"]).reindex(order).fillna(0).astype(int)
        out = out.join(counts)
    return out


def small_split_warnings(adata: AnnData, key: str = "rnn") -> list[str]:
    """Warnings when the metrics rest on few units: fewer than 10 test units, or a class with
    fewer than 2 in the scored data.

    Parameters
    ----------
    adata
        The output AnnData.
    key
        The ``key_added`` of the run.

    Returns
    -------
    list of str
        One sentence per problem (empty when none).
    """
    record = adata.uns.get(key, {})
    out = []
    task = _text(record.get("task", ""))
    layout = _text(record.get("params", {}).get("layout", record.get("layout", "")))
    unit = _unit_name(layout)
    sizes = split_sizes(adata, key)
    if task in ("classify", "forecast", "embed") and "test" in sizes.index:
        n_test = int(sizes.loc["test", "units"])
        if n_test < MIN_TEST_UNITS:
            out.append(
                f"the test split has only {n_test} {unit}(s) (fewer than {MIN_TEST_UNITS}): the "
                "test metrics are very uncertain; use more data or a larger test fraction"
            )
    rnn = record.get("metrics", {}).get("rnn", {})
    support = rnn.get("per_class_support") if isinstance(rnn, dict) else None
    if support is not None:
        classes = [_text(c) for c in record.get("classes", [])]
        support = np.asarray(support)
        if len(classes) != len(support):
            classes = [str(i) for i in range(len(support))]
        low = [f"{c} ({int(s)})" for c, s in zip(classes, support, strict=True) if s < 2]
        if low:
            scored = "test split" if _text(record.get("mode", "")) != "predict" else "scored data"
            out.append(
                f"classes with fewer than {MIN_TEST_PER_CLASS} entries in the {scored}: "
                f"{listed(low)}; their per-class metrics and the AUROC are unreliable"
            )
    return out


def start_lines(record: dict) -> list[str]:
    """Which weights a classifier kept: its start (the logistic regression) or the trained ones,
    and the held-out loss that decided (``uns[key]["start"]``); one line per trained model."""
    if record.get("task") != "classify":
        return []
    lines = []
    for name, what in (("rnn", "recurrence kept"), ("linear_path", "linear path alone trained")):
        entry = record.get("start", {}).get(name)
        if not isinstance(entry, dict) or "kept" not in entry:
            continue
        kept = "yes" if _text(entry["kept"]) == "trained" else "no"
        lines.append(
            f"{what}: {kept} ({_text(entry['decided_by'])}: start {_fmt(entry['start_loss'])} "
            f"→ best {_fmt(entry['best_loss'])}, paired t {_fmt(entry.get('improvement_t'))}; "
            "started at the logistic regression)"
        )
    return lines


def metrics_table(metrics: dict) -> pd.DataFrame:
    """Scalar metrics, one row per metric, one column per model entry (RNN first).

    Parameters
    ----------
    metrics
        ``uns[key]["metrics"]`` (or ``"training_metrics"``).

    Returns
    -------
    pandas.DataFrame
        Index ``metric``; columns the model entries (``rnn``, ``baseline``, ``linear``, ...).
    """
    from .pl._plots import metric_order, model_entries

    models = model_entries(metrics)
    names: list[str] = []
    for m in models:
        for k, v in metrics[m].items():
            if v is not None and np.ndim(v) == 0 and not isinstance(v, str | bytes):
                if k not in names:
                    names.append(k)
    names = metric_order(names)
    frame = pd.DataFrame(index=pd.Index(names, name="metric"), columns=models, dtype=float)
    for m in models:
        for k in names:
            value = metrics[m].get(k)
            if value is not None and np.ndim(value) == 0 and not isinstance(value, str | bytes):
                frame.loc[k, m] = float(value)
    return frame


# ----------------------------------------------------------------------------------- report --
def render_report(
    adata: AnnData,
    *,
    key: str = "rnn",
    title: str | None = None,
    run_warnings: Iterable[str] = (),
    command: str | None = None,
) -> str:
    """The HTML text of the report of one run (see :func:`write_report`)."""
    from . import pl
    from .pl._plots import model_label

    if key not in adata.uns:
        raise InputError(f"uns has no {key!r}: nothing to report (key_added={key!r}?)")
    record = adata.uns[key]
    task = _text(record.get("task", "run"))
    if "mode" in record:
        mode = _text(record["mode"])
    elif "explain" in record and "history" not in record:
        mode = "explain"
    else:
        mode = "train"
    if "explain" in record and mode != "explain":
        mode += " + explain"
    layout = _text(record.get("params", {}).get("layout", record.get("layout", "")))
    title = title or f"anndata-rnn {task} ({mode}) report"
    sections: dict[str, list[str]] = {}
    body = sections["title"] = [f"<h1>{_e(title)}</h1>"]
    if command:
        body.append(f"<p>Command:</p><pre>{_e(command)}</pre>")

    # ---- summary and warnings first, so the reader sees them
    problems = small_split_warnings(adata, key)
    notes = [_text(n) for n in np.atleast_1d(record.get("notes", []))]
    collected = list(dict.fromkeys(str(w) for w in run_warnings))
    summary = [
        ["task", task],
        ["mode", mode],
        ["layout", layout or "n/a"],
        ["output key", key],
    ]
    for name in ("label_key", "eval_label", "level"):
        if name in record:
            summary.append([name.replace("_", " "), record[name]])
    if "classes" in record and len(record["classes"]):
        summary.append(["classes", [_text(c) for c in record["classes"]]])
    body = sections["summary"] = ["<h2>Summary</h2>"]
    body.append(_table(["field", "value"], summary, numeric_from=99))
    for problem in problems:
        body.append(_warning(problem))
    for caution in np.atleast_1d(record.get("cautions", [])):
        body.append(_warning(f"Caution: {_text(caution)}"))
    if collected:
        body.append(
            f'<p class="note">{len(collected)} warning(s) were raised during the run: see '
            "<em>Warnings</em> below.</p>"
        )

    # ---- data
    body = sections["data"] = ["<h2>Data</h2>"]
    rows = [["shape", f"{adata.n_obs} observations × {adata.n_vars} variables"]]
    for attr in ("obs", "var"):
        rows.append([f"{attr} columns", list(getattr(adata, attr).columns)])
    for attr in ("obsm", "varm", "layers", "uns"):
        rows.append([attr, list(getattr(adata, attr).keys())])
    written = list(np.atleast_1d(record.get("written", [])))
    written += list(np.atleast_1d(record.get("explain", {}).get("written", [])))
    if written:
        rows.append(["written by this run", [*map(_text, written), f"uns/{key}"]])
    prep = record.get("preprocessing", {})
    if prep:
        rows.append(["preprocessing", {k: v for k, v in prep.items() if np.ndim(v) == 0}])
    if "gene_overlap" in record:
        rows.append(["gene overlap with the model", dict(record["gene_overlap"])])
    body.append(_table(["field", "value"], rows, numeric_from=99))
    sizes = split_sizes(adata, key)
    if not sizes.empty:
        unit = _unit_name(layout)
        body.append(f"<p>Split sizes (units: {_e(unit)}; column <code>{_e(key)}_split</code>):</p>")
        body.append(
            _table(
                ["split", "units", *map(str, sizes.columns[1:])],
                [
                    [split, *map(int, row)]
                    for split, row in zip(sizes.index, sizes.values, strict=True)
                ],
            )
        )
    for note in notes:
        body.append(f'<p class="note">Note: {_e(note)}</p>')

    # ---- parameters
    body = sections["parameters"] = ["<h2>Parameters</h2>"]
    params = [[k, v] for k, v in record.get("params", {}).items()]
    for extra in ("seed", "device"):
        if extra in record:
            params.append([extra, record[extra]])
    body.append(_table(["parameter", "value"], params, numeric_from=99))
    for name, caption in (("predict_params", "Prediction"), ("explain", "Explanation")):
        sub = record.get(name, {})
        if name == "explain":
            sub = sub.get("params", {})
        if sub:
            body.append(f"<p>{caption} parameters:</p>")
            body.append(_table(["parameter", "value"], [[k, v] for k, v in sub.items()], 99))

    # ---- metrics
    metrics = record.get("metrics", {})
    frame = metrics_table(metrics) if metrics else pd.DataFrame()
    body = sections["metrics"] = ["<h2>Metrics</h2>"]
    evaluation = record.get("evaluation", {})
    if "kind" in evaluation:
        body.append(
            f"<p>Scored: {_e(evaluation.get('kind'))} of {_fmt(evaluation.get('n_sequences'))} "
            f"{_e(evaluation.get('units', ''))} sequences.</p>"
        )
    if frame.empty:
        body.append("<p>No metrics were stored (no test split or no labels).</p>")
    else:
        body.append(
            _table(
                ["metric", *(model_label(m) for m in frame.columns)],
                [[m, *row] for m, row in zip(frame.index, frame.values, strict=True)],
            )
        )
        for problem in problems:
            body.append(_warning(problem))
        described = [
            (model_label(m), v["model"])
            for m, v in metrics.items()
            if isinstance(v, dict) and "model" in v
        ]
        if described:
            body.append(
                "<ul>" + "".join(f"<li>{_e(m)}: {_e(d)}</li>" for m, d in described) + "</ul>"
            )
        body.extend(f"<p>{_e(line)}</p>" for line in start_lines(record))
        body.append(_per_class(record, metrics))
        body.append(_confusion_tables(record, metrics))
        body.append(_cross_validation(record))
    training = record.get("training_metrics", {})
    if training:
        table = metrics_table(training)
        if not table.empty:
            body.append("<p>Metrics of the model at training (its own test split):</p>")
            body.append(
                _table(
                    ["metric", *(model_label(m) for m in table.columns)],
                    [[m, *row] for m, row in zip(table.index, table.values, strict=True)],
                )
            )
    explained = record.get("explain", {})
    completeness = explained.get("completeness", {})
    if completeness:
        body.append("<p>Completeness of the attributions:</p>")
        body.append(_table(["", "value"], [[k, v] for k, v in completeness.items()]))
        if float(completeness.get("relative_delta", 0)) > 0.05:
            body.append(_warning("attributions are more than 5 % from complete: raise --n-steps"))

    # ---- plots
    body = sections["plots"] = ["<h2>Plots</h2>"]
    plots = _plots(adata, key, record, pl)
    if not plots:
        body.append("<p>No plot applies to this run.</p>")
    for caption, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                uri = _figure_png(make())
        except Exception as exc:  # a plot that cannot be drawn must not lose the report
            body.append(_warning(f"could not draw {caption}: {type(exc).__name__}: {exc}"))
            continue
        body.append(
            f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}'
            "</figcaption></figure>"
        )

    # ---- warnings and versions
    body = sections["warnings"] = ["<h2>Warnings</h2>"]
    if collected:
        body.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in collected) + "</ul>")
    else:
        body.append("<p>No warning was raised during the run.</p>")
    if isinstance(record.get("timings"), dict) and record["timings"]:
        sections["timings"] = _timings(record)
    versions = dict(record.get("versions", {}))
    versions.update(record.get("explain", {}).get("versions", {}))
    if versions:
        body = sections["versions"] = ["<h2>Package versions</h2>"]
        body.append(
            _table(["package", "version"], [[k, _text(v)] for k, v in versions.items()], 99)
        )
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n"
        # the comment hides the CSS text where a sanitizer (Galaxy's) removes <style>
        f"<style><!--{_CSS}--></style>\n</head>\n<body>\n"
        + "\n".join(line for name in ORDER for line in sections.get(name, []))
        + "\n</body>\n</html>\n"
    )


def _timings(record: dict) -> list[str]:
    """Where the run's wall time went (``uns[key]["timings"]``) and the threads it used."""
    timings = {k: float(v) for k, v in record["timings"].items() if np.ndim(v) == 0}
    total = timings.pop("total", sum(timings.values()))
    rows = [
        [name, round(seconds, 2), f"{100 * seconds / total:.0f} %" if total > 0 else "n/a"]
        for name, seconds in timings.items()
    ]
    rows.append(["total", round(total, 2), "100 %"])
    body = ["<h2>Time per phase</h2>", _table(["phase", "seconds", "share"], rows)]
    note = (
        "Wall time of this run (writing: the outputs; this report is written after). "
        "Phases nest: time is counted in the innermost one (reading rows during an "
        "encoding is reading)."
    )
    threads = record.get("threads")
    if isinstance(threads, dict) and "intra_op" in threads:
        note += f" Torch threads: {_text(threads['intra_op'])} ({_text(threads.get('chosen_by'))})."
    body.append(f"<p>{_e(note)}</p>")
    return body


def _per_class(record: dict, metrics: dict) -> str:
    classes = [_text(c) for c in record.get("classes", [])]
    from .pl._plots import model_entries, model_label

    rows = []
    for m in model_entries(metrics):
        entry = metrics[m]
        if "per_class_support" not in entry:
            continue
        support = np.asarray(entry["per_class_support"])
        names = classes if len(classes) == len(support) else [str(i) for i in range(len(support))]
        for i, name in enumerate(names):
            rows.append(
                [
                    name,
                    model_label(m),
                    *(
                        float(np.asarray(entry.get(f"per_class_{k}", [np.nan] * len(support)))[i])
                        for k in ("precision", "recall", "f1")
                    ),
                    int(support[i]),
                ]
            )
    if not rows:
        return ""
    return "<p>Per class:</p>" + _table(
        ["class", "model", "precision", "recall", "F1", "support"], rows, numeric_from=2
    )


#: the per-fold columns of the cross-validation table
CV_COLUMNS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc")


def _cross_validation(record: dict) -> str:
    """Cross-validation (``--cv``): every fold's scores per model, the paired differences with
    their 95 % intervals, and the confusion matrices of the out-of-fold predictions."""
    from .pl._plots import model_entries, model_label

    cv = record.get("cv") or {}
    folds = cv.get("folds", {})
    if not folds:
        return ""
    out = [
        f"<p>Cross-validation over {_fmt(cv.get('n_folds', len(folds)))} folds of the units: the "
        "table above is the mean over folds; every fold trained and tested each model on the "
        "same units.</p>"
    ]
    rows = []
    for fold, metrics in sorted(folds.items(), key=lambda item: int(item[0])):
        for m in model_entries(metrics):
            rows.append([int(fold) + 1, model_label(m), *(metrics[m].get(c) for c in CV_COLUMNS)])
    out.append(_table(["fold", "model", *CV_COLUMNS], rows, numeric_from=2))
    differences = [
        [pair, name, d["mean"], d["ci95_low"], d["ci95_high"]]
        for pair, by_metric in cv.get("difference", {}).items()
        for name, d in by_metric.items()
        if name in CV_COLUMNS
    ]
    if differences:
        out.append("<p>Paired differences over folds, with the corrected resampled t interval "
                   "(Nadeau &amp; Bengio 2003: the folds share most of their training units, so "
                   "the plain t interval is too narrow; an interval that holds 0: no difference "
                   "shown):</p>")  # fmt: skip
        out.append(_table(["models", "metric", "mean", "95% low", "95% high"], differences, 2))
    summed: dict = {}
    for metrics in folds.values():
        for m in model_entries(metrics):
            if "confusion_matrix" in metrics[m]:
                counts = np.asarray(metrics[m]["confusion_matrix"])
                summed.setdefault(m, {"confusion_matrix": 0})["confusion_matrix"] += counts
    if summed:
        out.append(_confusion_tables(record, summed, "out-of-fold predictions"))
    return "\n".join(out)


def _confusion_tables(record: dict, metrics: dict, of: str = "") -> str:
    """Each model's confusion matrix as a table (counts; rows true, columns predicted)."""
    from .pl._plots import model_entries, model_label

    classes = [_text(c) for c in record.get("classes", [])]
    out = []
    for m in model_entries(metrics):
        if "confusion_matrix" not in metrics[m]:
            continue
        counts = np.asarray(metrics[m]["confusion_matrix"]).astype(int)
        names = classes if len(classes) == len(counts) else [str(i) for i in range(len(counts))]
        what = f"{model_label(m)}, {of}" if of else model_label(m)
        out.append(f"<p>Confusion matrix ({_e(what)}), rows true, columns predicted:</p>")
        out.append(
            _table(
                ["true / predicted", *names],
                [[name, *map(int, row)] for name, row in zip(names, counts, strict=True)],
            )
        )
    return "\n".join(out)


def _plots(adata: AnnData, key: str, record: dict, pl) -> list:
    """(caption, function returning a figure) for every plot that applies to the run."""
    out = []

    def figure_of(draw):
        def make():
            result = draw()
            return result if hasattr(result, "savefig") else result.figure

        return make

    history = record.get("history", {})
    if "train_loss" in history:
        out.append(
            (
                "training history: loss and validation metric per epoch, best epoch marked",
                figure_of(lambda: pl.history(adata, key=key)),
            )
        )
    metrics = record.get("metrics", {})
    if any(isinstance(v, dict) for v in metrics.values()):
        out.append(
            (
                "test metrics of every model entry (RNN, baseline(s), other entries)",
                figure_of(lambda: pl.metrics(adata, key=key)),
            )
        )
    if any(isinstance(v, dict) and "confusion_matrix" in v for v in metrics.values()):
        out.append(
            (
                "confusion matrices (rows normalized), RNN and baseline side by side",
                figure_of(lambda: pl.confusion(adata, key=key)),
            )
        )
    if _text(record.get("task", "")) == "forecast" and (
        f"{key}_forecast" in adata.layers or f"{key}_forecast" in adata.varm
    ):
        out.append(
            (
                "forecasts: observed and predicted trajectories (held-out steps shaded)",
                figure_of(lambda: pl.forecast(adata, key=key)),
            )
        )
    if "explain" in record:
        out.append(
            (
                "what drives the predictions: top genes per class and step importance",
                figure_of(lambda: pl.importance(adata, key=key)),
            )
        )
    column = f"{key}_cluster"
    label = record.get("eval_label")
    if (column in adata.obs or column in adata.var) and label is not None:
        out.append(
            (
                f"cluster composition by {_text(label)}",
                figure_of(lambda: pl.clusters(adata, key=key)),
            )
        )
    if f"X_{key}" in adata.obsm or f"X_{key}" in adata.varm:
        out.append(
            (
                f"embedding X_{key}: first two principal components",
                figure_of(lambda: pl.latent_pca(adata, key=key)),
            )
        )
    return out


def write_report(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    key: str = "rnn",
    title: str | None = None,
    run_warnings: Iterable[str] = (),
    command: str | None = None,
) -> Path:
    """Write the self-contained HTML report of one run.

    Parameters
    ----------
    adata
        The output AnnData of ``tl.classify``, ``tl.forecast``, ``tl.embed``, ``tl.predict`` or
        ``tl.explain``.
    path
        The HTML file to write (overwritten).
    key
        The ``key_added`` of the run.
    title
        The page title (default: the task and mode).
    run_warnings
        Warnings raised during the run, listed in the report (the command line collects them).
    command
        The command line of the run, shown at the top.

    Returns
    -------
    pathlib.Path
        ``path``. The report holds: the run's parameters and a data summary with the split
        sizes; the metrics of every model entry (RNN, baselines, ablations) with a warning when
        the test split is small; the plots that apply (history, metrics, confusion matrices,
        forecasts, importance, clusters, embedding); the warnings; the package versions.
    """
    text = render_report(adata, key=key, title=title, run_warnings=run_warnings, command=command)
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path
