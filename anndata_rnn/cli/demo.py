"""``anndata-rnn demo``: the main job on the bundled yeast cell-cycle data."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..io import write_h5ad
from ..sequences import VAR_SERIES
from ._common import Outputs, common_options, device_options, print_metrics, write_metrics_table


@click.command(
    epilog="""Example:

\b
  anndata-rnn demo --out rnn_demo
"""
)
@click.option(
    "--out",
    "out_dir",
    default="rnn_demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the outputs (created).",
)
@click.option("--epochs", type=click.IntRange(1, 1_000_000), default=30, show_default=True)
@device_options
@common_options
def demo(out_dir, epochs, seed, device, overwrite, quiet):
    """Classify cell-cycle regulated yeast genes from their expression time course.

    Data (bundled, no download): Spellman et al. 1998, the cdc15 synchronisation time course
    (24 arrays × 6178 genes). Each gene's profile over time is a sequence (layout var-series);
    the label is membership in Spellman's 800 cell-cycle regulated genes. A 2-layer LSTM is
    trained on 70 % of the genes and tested on 15 % held-out genes beside a logistic-regression
    baseline on the same inputs. The demo's schedule (at most --epochs passes, early stopping
    after 5 without improvement) is shorter than classify's default, so that it ends in about a
    minute. Spellman's labels were called from these same profiles: the task is partly circular
    (README, "caveats").
    """
    import matplotlib

    matplotlib.use("Agg")

    from .. import pl, tl
    from ..datasets import path as dataset_path
    from ..io import read_h5ad

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output folder {out_dir!r} ({exc.strerror}): give a writable --out"
        ) from None
    source = dataset_path("spellman1998")
    click.echo(f"input: {source} (Spellman 1998, yeastCC, Artistic-2.0)")
    adata = read_h5ad(source)
    click.echo(
        f"task: classify genes (layout var-series) by 'cell_cycle_800' from their cdc15 time "
        f"course; LSTM (128, 64), up to {epochs} epochs, seed {seed}"
    )
    with Outputs() as outputs:
        paths = {
            name: outputs.add(out / name)
            for name in (
                "spellman_cdc15_classified.h5ad",
                "model.h5",
                "metrics.tsv",
                "training_history.png",
                "baseline_comparison.png",
            )
        }
        result = tl.classify.run(
            adata,
            label_key="cell_cycle_800",
            layout=VAR_SERIES.name,
            series_key="series",
            time_key="time",
            series_subset=["cdc15"],
            max_epochs=epochs,
            patience=5,
            seed=seed,
            device=device,
            overwrite=overwrite,
            quiet=quiet,
        )
        result.model.save(paths["model.h5"], atomic=False)
        write_h5ad(adata, paths["spellman_cdc15_classified.h5ad"], atomic=False)
        write_metrics_table(result.metrics, paths["metrics.tsv"], atomic=False)
        pl.training_history(adata, save=paths["training_history.png"])
        pl.baseline_comparison(adata, save=paths["baseline_comparison.png"])
        outputs.commit()
    click.echo(f"wrote to {out}/:")
    click.echo(
        "  spellman_cdc15_classified.h5ad  var: rnn_pred, rnn_conf, rnn_split; "
        "varm: rnn_proba, X_rnn; uns: rnn"
    )
    click.echo("  model.h5                        the trained model (apply: anndata-rnn predict)")
    click.echo("  metrics.tsv                     test metrics, RNN vs baseline")
    click.echo("  training_history.png, baseline_comparison.png")
    print_metrics(result.metrics, title="held-out genes")
