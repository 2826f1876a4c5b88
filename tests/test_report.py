"""Plots (``anndata_rnn.pl``) and the HTML report (``anndata_rnn.report``, CLI ``--report``).

Every plot is rendered on small outputs and checked to be a valid, non-blank image; the report
is checked for its content, for being self-contained (no external URL) and for escaping every
string that comes from the data. The browser check is in ``test_report_browser.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from fixtures_rich import rich_adata
from PIL import Image

import anndata_rnn as ar
from anndata_rnn.cli import main as cli

HOSTILE_CLASS = "<script>alert(1)</script>"
HOSTILE_GENE = '<img src=x onerror="alert(2)">'
SMALL = {"max_epochs": 2, "seed": 0, "quiet": True, "hidden": "8"}
SERIES = {"series_key": "series", "time_key": "time"}
YEAST = [
    "--layout", "var-series", "--series-key", "series", "--time-key", "time",
    "--series-subset", "cdc15", "--epochs", "2", "--hidden", "16", "--threads", "1",
]  # fmt: skip


# ------------------------------------------------------------------------------- fixtures --
def hostile_adata() -> ad.AnnData:
    """The rich fixture with a class named like a script and a gene named like an image tag."""
    adata = rich_adata(sparse=False, counts=False)
    adata.obs["label"] = adata.obs["label"].cat.rename_categories(
        {"up": HOSTILE_CLASS, "down": "CD14+ Monocyte"}
    )
    names = list(adata.var_names)
    names[0] = HOSTILE_GENE
    adata.var_names = names
    return adata


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Small outputs of every task (obs-series, hostile names), annotated in Python."""
    classified = hostile_adata()
    model = ar.tl.classify(classified, label_key="label", layout="obs-series", **SERIES, **SMALL)
    explained = classified.copy()
    ar.tl.explain(explained, model, n_steps=4, quiet=True)
    forecast = rich_adata(sparse=False, counts=False)
    ar.tl.forecast(forecast, layout="obs-series", holdout_steps=2, **SERIES, **SMALL)
    embedded = rich_adata(sparse=False, counts=False)
    ar.tl.embed(
        embedded, layout="obs-series", cluster="kmeans", n_clusters=2, eval_label="label",
        **SERIES, **SMALL,
    )  # fmt: skip
    predicted = hostile_adata()
    ar.tl.predict(predicted, model, quiet=True)
    return {
        "classify": classified,
        "explain": explained,
        "forecast": forecast,
        "embed": embedded,
        "predict": predicted,
    }


@pytest.fixture(scope="module")
def yeast_runs(tmp_path_factory):
    """The issue's acceptance runs through the CLI with --report: a var-series classification
    and a forecast of the last 4 time points, on the bundled Spellman cdc15 course."""
    folder = tmp_path_factory.mktemp("yeast")
    source = folder / "spellman.h5ad"
    ar.datasets.spellman1998().write_h5ad(source)
    out = {}
    for task, extra in (
        ("classify", ["--label", "cell_cycle_800"]),
        ("forecast", ["--holdout-steps", "4", "--test-fraction", "0.3"]),
    ):
        report = folder / f"{task}.html"
        result = CliRunner().invoke(
            cli,
            [task, str(source), *YEAST, *extra, "--output", str(folder / f"{task}.h5ad"),
             "--model-out", str(folder / f"{task}.h5"), "--report", str(report), "--quiet"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert f"wrote report {report}" in result.stdout
        out[task] = report.read_text(encoding="utf-8")
    return out


def assert_image(path: Path) -> None:
    """A readable PNG of a sensible size that is not one flat colour."""
    assert path.stat().st_size > 1000, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert width >= 200 and height >= 150, (path, image.size)
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 5, f"{path.name} looks blank"
    assert (pixels < 128).mean() > 0.002, f"{path.name} has almost no ink"


# ---------------------------------------------------------------------------------- plots --
PLOTS = [
    ("classify", "history", {}),
    ("classify", "training_history", {}),
    ("classify", "metrics", {}),
    ("classify", "baseline_comparison", {}),
    ("classify", "confusion", {}),
    ("classify", "latent_pca", {}),
    ("forecast", "history", {}),
    ("forecast", "metrics", {}),
    ("forecast", "forecast", {}),
    ("forecast", "forecast", {"genes": ["gene01"], "series": ["s00", "s03"]}),
    ("explain", "importance", {}),
    ("embed", "clusters", {}),
    ("embed", "metrics", {}),
    ("embed", "latent_pca", {"color": "label"}),
    ("predict", "confusion", {}),
    ("predict", "metrics", {"source": "training_metrics"}),
]


@pytest.mark.parametrize(("run", "name", "kwargs"), PLOTS, ids=[f"{r}-{n}" for r, n, _ in PLOTS])
def test_every_plot_renders_a_valid_image(runs, run, name, kwargs, tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / f"{run}_{name}.png"
    result = getattr(ar.pl, name)(runs[run], save=path, **kwargs)
    assert result is not None  # a figure or axes to go on with (show=None)
    assert_image(path)
    plt.close("all")


def test_plot_titles_labels_and_legend_outside(runs):
    import matplotlib.pyplot as plt

    ax = ar.pl.metrics(runs["classify"])
    assert ax.get_title() and ax.get_xlabel()
    legend = ax.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["RNN", "linear path alone", "baseline", "1-NN"]
    ax.figure.canvas.draw()
    # the legend lies right of the axes, so it covers no bar
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
    fig = ar.pl.confusion(runs["classify"])
    titles = [a.get_title() for a in fig.axes]
    assert "RNN" in titles and "baseline" in titles
    plt.close("all")


def test_metrics_draws_every_model_entry(runs):
    """A linear-path ablation (or any other entry) stored beside rnn/baseline is drawn too."""
    import matplotlib.pyplot as plt

    adata = runs["classify"].copy()
    adata.uns["rnn"]["metrics"]["linear"] = dict(adata.uns["rnn"]["metrics"]["baseline"])
    ax = ar.pl.metrics(adata)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["RNN", "linear path alone", "linear (ablation)", "baseline", "1-NN"]
    html = ar.report.render_report(adata)
    assert "linear (ablation)" in html
    plt.close("all")


def test_forecast_var_series_and_clusters_table(tmp_path):
    import matplotlib.pyplot as plt

    adata = ar.datasets.spellman1998()
    adata = adata[:, :300].copy()
    ar.tl.forecast(
        adata, layout="var-series", series_subset=["cdc15"], holdout_steps=4, **SERIES, **SMALL
    )
    fig = ar.pl.forecast(adata, n_genes=2, save=tmp_path / "f.png")
    assert len([a for a in fig.axes if a.get_title()]) == 2
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"observed", "RNN rollout (held out)", "persistence"} <= labels
    assert_image(tmp_path / "f.png")
    plt.close("all")


def test_cluster_table_counts_each_series_once(runs):
    table = ar.pl.cluster_table(runs["embed"])
    assert table.to_numpy().sum() == 12  # 12 series, not 72 observations
    assert list(table.columns) == ["down", "up"]


def test_pl_leaves_the_backend_alone():
    source = (Path(ar.pl.__file__).parent / "_plots.py").read_text()
    assert "matplotlib.use(" not in source


# --------------------------------------------------------------------------------- report --
def external_urls(html: str) -> list[str]:
    """Every src/href/url() target that is not an embedded data: URI, and any absolute or
    protocol-relative URL anywhere in the markup."""
    targets = re.findall(r"""(?:src|href|action|poster)\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    targets += re.findall(r"url\(\s*['\"]?([^'\")]+)", html, re.I)
    bad = [t for t in targets if not t.startswith("data:image/png;base64,")]
    without_data = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    bad += re.findall(r"(?:https?:)?//[\w.-]+", without_data)
    return bad


def test_report_of_every_task_is_self_contained(runs, tmp_path):
    for name, adata in runs.items():
        path = ar.report.write_report(adata, tmp_path / f"{name}.html", run_warnings=["a <b>"])
        html = path.read_text(encoding="utf-8")
        assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
        assert "<script" not in html.lower(), name
        assert "<link" not in html.lower() and "@import" not in html, name
        assert external_urls(html) == [], name
        assert "could not draw" not in html, name
        images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
        assert images, name
        assert "a &lt;b&gt;" in html  # the run's warnings, escaped
        assert "Package versions" in html and "torch" in html


def test_report_escapes_hostile_names(runs):
    for name in ("classify", "explain", "predict"):
        html = ar.report.render_report(runs[name])
        assert HOSTILE_CLASS not in html and "alert(1)</script>" not in html, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, name
        assert "CD14+ Monocyte" in html, name
        assert "<img src=x" not in html, name


def test_report_warns_about_a_small_test_split(runs):
    html = ar.report.render_report(runs["classify"])
    # 12 series: the test split holds 2 (one of each class)
    assert "the test split has only 2 series" in html
    assert "fewer than 2 entries" in html
    assert 'class="warning"' in html
    warnings = ar.report.small_split_warnings(runs["classify"])
    assert len(warnings) == 2


def test_split_sizes_count_units(runs):
    sizes = ar.report.split_sizes(runs["classify"])
    assert sizes["units"].sum() == 12
    assert set(sizes.index) <= {"train", "val", "test", "unused"}
    assert {"CD14+ Monocyte", HOSTILE_CLASS} <= set(sizes.columns)


def test_yeast_classification_report(yeast_runs):
    """The acceptance: model and baseline AUROC, both confusion matrices."""
    html = yeast_runs["classify"]
    row = re.search(
        r"<th scope=\"row\">auroc</th><td[^>]*>([\d.]+)</td><td[^>]*>([\d.]+)</td>", html
    )
    assert row, "no AUROC row with the RNN and baseline values"
    assert 0 <= float(row.group(1)) <= 1 and 0 <= float(row.group(2)) <= 1
    assert "Confusion matrix (RNN)" in html and "Confusion matrix (baseline)" in html
    assert "confusion matrices (rows normalized), RNN and baseline side by side" in html
    assert "Split sizes (units: gene" in html
    assert "anndata-rnn" in html and "cdc15" in html
    assert external_urls(html) == []


def test_yeast_forecast_report(yeast_runs):
    """The acceptance: observed and predicted trajectories of the 4 held-out steps."""
    html = yeast_runs["forecast"]
    assert "forecasts: observed and predicted trajectories" in html
    assert "rollout of the held-out last steps" in html
    assert "persistence" in html and "linear AR" in html
    assert "could not draw" not in html
    assert external_urls(html) == []


def test_cli_report_is_atomic_and_lists_warnings(runs, tmp_path, write):
    """predict with a gene missing: the warning reaches the report; a failing run writes no
    report and leaves no partial file."""
    model_path = tmp_path / "model.h5"
    adata = rich_adata(sparse=False, counts=False)
    model = ar.tl.classify(adata, label_key="label", layout="obs-series", **SERIES, **SMALL)
    model.save(model_path)
    source = write(rich_adata(sparse=False, counts=False)[:, 1:].copy(), "missing_gene.h5ad")
    report = tmp_path / "predict.html"
    args = ["predict", str(source), "--model", str(model_path), "--output"]
    result = CliRunner().invoke(
        cli, [*args, str(tmp_path / "p.h5ad"), "--report", str(report), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    html = report.read_text(encoding="utf-8")
    assert "missing from the data" in html  # the run's warning, in the Warnings section
    assert "predict" in html and "gene overlap" in html
    before = set(tmp_path.iterdir())
    failed = tmp_path / "failed.html"
    result = CliRunner().invoke(
        cli,
        [*args, str(tmp_path / "q.h5ad"), "--report", str(failed), "--min-gene-overlap", "0.99"],
    )
    assert result.exit_code == 2
    assert set(tmp_path.iterdir()) == before  # no report, no partial file


def test_report_option_on_every_command():
    for command in ("classify", "forecast", "embed", "explain", "predict"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert "--report" in result.output, command
    assert "--report" not in CliRunner().invoke(cli, ["demo", "--help"]).output


def test_metrics_table_orders_models_and_metrics(runs):
    table = ar.report.metrics_table(runs["forecast"].uns["rnn"]["metrics"])
    assert list(table.columns) == ["rnn", "linear_path", "persistence", "linear_ar"]
    assert list(table.index[:4]) == ["mse", "mae", "r2", "pearson_r"]
    assert isinstance(table, pd.DataFrame)
