"""One declaration of every option of the tasks: the training tasks (``classify``, ``forecast``,
``embed``) and those that apply a saved model (``predict``, ``explain``).

Each :class:`Option` holds the keyword of the ``tl`` function, its type, default (per task where
the tasks differ), bounds or choices and the command-line help. From this table come:

* the defaults of the ``tl`` signatures (``hidden: ... = DEFAULTS["embed"].hidden``) and the
  docstring fragments they share (:func:`doc_params`, scanpy's ``_docs.py`` pattern);
* the click options of ``anndata-rnn classify / forecast / embed / predict / explain``
  (:mod:`anndata_rnn.cli._training_options`);
* the check of the Galaxy tool's parameters, defaults and bounds
  (``tests/test_galaxy_tool.py``; the API and click checks: ``tests/test_options.py``).

The command line differs from the API only in form, never in value: ``--epochs`` sets
``max_epochs``, ``--hidden 128,64`` is ``hidden=(128, 64)``, ``--stream always`` is
``stream=True``, ``--cluster none`` is ``cluster=None``, ``--no-residual`` is
``residual=False``, ``--label`` is ``label_key``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, SimpleNamespace
from typing import Any

from .networks.encoder import CELLS
from .sequences import LAYOUTS, OBS_SERIES

#: the tasks that train a model
TRAINING_TASKS = ("classify", "forecast", "embed")
#: the tasks that apply a saved model
APPLYING_TASKS = ("predict", "explain")
#: the tasks whose options this table declares
TASKS = TRAINING_TASKS + APPLYING_TASKS
CLASSIFY, FORECAST, EMBED, PREDICT, EXPLAIN = (frozenset({task}) for task in TASKS)
TRAINING = frozenset(TRAINING_TASKS)
APPLYING = frozenset(APPLYING_TASKS)
ALL = frozenset(TASKS)

#: the groups of the table, in the order the command-line help lists them
#: ("apply": matching a saved model's genes and explaining its predictions; "run": seed,
#: device, precision and the switches every command has; the command line declares them once
#: for all its commands, :mod:`anndata_rnn.cli._common`)
GROUPS = ("sequences", "preprocessing", "architecture", "training", "apply", "output", "run")

#: streamed training and streamed apply: cells read and densified per chunk (8192 rows × 2,000
#: genes is 64 MB of float32)
DEFAULT_CHUNK_ROWS = 8192
#: upper bound of ``n_top_genes`` (more genes than any genome has)
MAX_TOP_GENES = 1_000_000
#: upper bound of ``seed`` (numpy's seeds are 32-bit)
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Option:
    """One option: the ``tl`` keyword, its value and its command-line form.

    ``low`` / ``high`` bound numbers (``low_open`` / ``high_open``: the bound itself is
    refused); ``click_range=False`` leaves the bounds to the library's own check, whose message
    says more than click's. ``choices`` list the values of a text option. ``task_defaults``,
    ``task_help`` and ``task_choices`` override ``default``, ``help`` and ``choices`` for a
    task. ``flag`` is the command-line name when it is not ``--`` + ``name`` with
    dashes; ``to_cli`` writes an API value in its command-line form (``hidden``: ``"128,64"``).
    ``cli_tasks``: the tasks whose command line has the option, when not all of ``tasks``.
    """

    name: str
    group: str
    type: type
    default: Any
    help: str
    tasks: frozenset[str] = TRAINING
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    click_range: bool = True
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    task_defaults: Mapping[str, Any] = field(default_factory=dict)
    task_help: Mapping[str, str] = field(default_factory=dict)
    task_choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    to_cli: Callable[[Any], Any] | None = None
    cli_tasks: frozenset[str] | None = None

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"{self.name}: unknown group {self.group!r}")
        overridden = set(self.task_defaults) | set(self.task_help) | set(self.task_choices)
        if not overridden <= self.tasks:
            raise ValueError(f"{self.name}: a task default or help for a task not in tasks")
        if self.cli_tasks is not None and not self.cli_tasks <= self.tasks:
            raise ValueError(f"{self.name}: on the command line of a task that does not take it")

    def on_command_line(self, task: str) -> bool:
        """Whether ``anndata-rnn <task>`` has this option (a few are of the API only)."""
        return task in (self.tasks if self.cli_tasks is None else self.cli_tasks)

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def default_for(self, task: str) -> Any:
        """The default of ``task`` (the ``tl`` function's)."""
        return self.task_defaults.get(task, self.default)

    def cli_default_for(self, task: str) -> Any:
        """The same default in its command-line form."""
        value = self.default_for(task)
        return self.to_cli(value) if self.to_cli else value

    def choices_for(self, task: str) -> tuple[str, ...] | None:
        return self.task_choices.get(task, self.choices)

    def help_for(self, task: str) -> str:
        return self.task_help.get(task, self.help)


def _comma_joined(value) -> str:
    return ",".join(str(v) for v in value)


STREAM_CHOICES = {"auto": "auto", "always": True, "never": False}

OPTIONS: tuple[Option, ...] = (
    # ------------------------------------------------------------------------- sequences --
    Option(
        "layout", "sequences", str, OBS_SERIES.name,
        "obs-series: observations of a series over time; var-series: each gene's profile "
        "over time; profile: each observation read across its genes.",
        choices=LAYOUTS, tasks=TRAINING | PREDICT, cli_tasks=TRAINING,
        task_defaults={"predict": None},
        task_help={"predict": "If given, must equal the model's layout (a guard for pipelines)."},
    ),
    Option("series_key", "sequences", str, None, "obs column naming the series (subject, trajectory)."),
    Option("time_key", "sequences", str, None, "obs column with numeric time points."),
    Option(
        "series_subset", "sequences", list, None,
        "Only these series, comma separated (e.g. cdc15).", to_cli=lambda v: v and ",".join(v),
        tasks=TRAINING | PREDICT,
        task_help={
            "predict": "Series of the new data to use, comma separated (default: the training "
            "run's subset)."
        },
    ),
    Option(
        "order_key", "sequences", str, None, "profile: var column giving the gene order.",
        tasks=CLASSIFY | EMBED,
    ),
    Option(
        "chunk_size", "sequences", int, 32, "profile: genes per step.", tasks=CLASSIFY | EMBED,
        low=1, high=100_000,
    ),
    Option("layer", "sequences", str, None, "Read this layer instead of X."),
    Option("use_rep", "sequences", str, None, "Read this obsm representation (e.g. X_pca) instead of X."),
    # --------------------------------------------------------------------- preprocessing --
    Option(
        "normalize", "preprocessing", str, "auto",
        "normalize_total + log1p: auto = only when the matrix looks like raw counts.",
        choices=("auto", "always", "never"),
    ),
    Option(
        "n_top_genes", "preprocessing", int, "auto",
        "Use the N most variable genes (training rows); auto = 2,000 in a wide profile "
        "(> 4,000 genes or > 128 steps), else all; 0 = all genes.",
        # the command line's callback checks the bounds (the value may also be "auto")
        low=0, high=MAX_TOP_GENES, click_range=False,
    ),
    Option("gene_subset", "preprocessing", str, None, "Boolean var column selecting the genes to use."),
    Option(
        "scale", "preprocessing", str, "auto",
        "feature: standardize with training statistics; sequence: z-score each sequence; "
        "auto: sequence for a univariate shape problem (one label per series, more than 64 "
        "steps, one channel), else feature.",
        tasks=CLASSIFY | EMBED, choices=("auto", "feature", "sequence"),
        task_defaults={"embed": "feature"},
        task_choices={"embed": ("feature", "sequence")},
        task_help={
            "embed": "feature: standardize with training statistics; sequence: z-score each "
            "sequence (cluster by temporal shape only)."
        },
    ),
    Option(
        "max_missing", "preprocessing", float, 0.5,
        "Units missing more than this fraction of values are not trained on or clustered.",
        tasks=EMBED, low=0, high=1,
    ),
    # ---------------------------------------------------------------------- architecture --
    Option(
        "hidden", "architecture", tuple, (128, 64),
        "Sizes of the stacked recurrent layers, comma separated.",
        task_defaults={"embed": (64,)},
        task_help={"embed": "Sizes of the stacked encoder layers, comma separated."},
        to_cli=_comma_joined,
    ),
    Option("cell", "architecture", str, "lstm", "", choices=tuple(CELLS)),
    Option(
        # a forecaster must be causal: its command line has no --bidirectional
        "bidirectional", "architecture", bool, False, "Bidirectional recurrent layers.",
        cli_tasks=CLASSIFY | EMBED,
    ),
    Option(
        "dropout", "architecture", float, 0.2, "", low=0, high=1, high_open=True,
        click_range=False, task_defaults={"embed": 0.0},
    ),
    Option(
        "linear_path", "architecture", bool, True,
        "A linear path beside the recurrence (logistic / autoregressive), trained jointly; the "
        "linear path alone is always reported beside it.",
        flag="--linear-path/--no-linear-path",
        task_help={
            "embed": "Start at PCA: a linear encoder/decoder initialized at the PCA loadings, "
            "the recurrent part added on top from zero; the start is kept unless training beats "
            "it on the validation units. The linear path alone and PCA are always reported "
            "beside it."
        },
    ),
    Option(
        "conv", "architecture", str, "auto",
        "Convolutional branch beside the recurrence (LSTM-FCN), one label per series: 1 to 3 "
        "channel sizes like 64,64,64, none, or auto (64,64,64 for a shape problem, else none).",
        tasks=CLASSIFY,
    ),
    Option(
        "n_latent", "architecture", int, 16, "Dimension of the latent embedding.", tasks=EMBED,
        low=1, high=1_024,
    ),
    Option(
        "loss", "architecture", str, "mse",
        "Training loss on standardized values (huber is robust to outliers).",
        tasks=FORECAST, choices=("mse", "huber"),
    ),
    Option(
        "residual", "architecture", bool, True,
        "Predict the next value directly instead of the change from the current one.",
        tasks=FORECAST, flag="--no-residual", to_cli=lambda value: not value,
    ),
    Option(
        "ar_form", "architecture", str, "auto",
        "Form of the linear AR: dense, per_gene or auto (dense up to a few hundred features).",
        tasks=FORECAST, choices=("auto", "dense", "per_gene"), cli_tasks=frozenset(),
    ),
    Option(
        "ar_lags", "architecture", int, 3, "Steps seen by the linear autoregression baseline.",
        tasks=FORECAST, low=1, high=100,
    ),
    # -------------------------------------------------------------------------- training --
    Option(
        "max_epochs", "training", int, 100, "Maximum number of epochs.", flag="--epochs",
        low=1, high=1_000_000,
    ),
    Option(
        "batch_size", "training", int, 64, "", low=1, high=16_384, tasks=ALL,
        task_defaults={"predict": 512, "explain": 32},
        task_help={"explain": "Sequences per attribution call (each is expanded --n-steps times)."},
    ),
    Option(
        "lr", "training", float, 1e-3, "Learning rate.", low=0, low_open=True, click_range=False
    ),
    Option(
        "patience", "training", int, 10,
        "Early stopping: epochs without validation improvement.", low=1, high=1_000_000,
    ),
    Option(
        "min_steps", "training", int, None,
        "Train at least this many optimizer steps, however small the data "
        "[default: 600, or the environment's ANNDATA_RNN_MIN_STEPS].",
        tasks=CLASSIFY | FORECAST, low=0, high=1_000_000,
    ),
    Option(
        "class_weights", "training", bool, False,
        "Balanced class weights (imbalanced labels).", tasks=CLASSIFY,
    ),
    Option(
        "val_fraction", "training", float, 0.15, "", low=0, high=1, high_open=True,
        click_range=False,
        task_defaults={"embed": 0.1},
        task_help={"embed": "Units held out for early stopping (0: train all epochs on every unit)."},
    ),
    Option(
        "test_fraction", "training", float, 0.15, "", low=0, high=1, high_open=True,
        click_range=False,
        task_defaults={"embed": 0.1},
        task_help={
            "embed": "Units never trained on: the reconstruction errors of the model, the "
            "linear path alone and PCA are theirs."
        },
    ),
    Option("split_key", "training", str, None, "Column (obs or var) holding train/val/test."),
    Option(
        "cv", "training", int, None,
        "K-fold cross-validation by unit: per-fold metrics, mean ± sd and the paired "
        "difference RNN − baseline with a 95% interval; out-of-fold predictions are written, "
        "and {key}_fold says which fold tested each unit.",
        tasks=CLASSIFY, low=2, high=100,
    ),
    Option(
        "group_key", "training", str, None,
        "Column (obs or var) naming each unit's group (donor, sample, batch): the units of one "
        "group go to one part of the split and are tested in one --cv fold.",
        tasks=CLASSIFY,
    ),
    Option(
        "stream", "training", str, "auto",
        "profile: train without holding the cells in memory: X stays in the file and batches "
        "are read and encoded as needed; auto = when the encoded cells would exceed 1 GiB; "
        "never = read the whole file into memory.",
        tasks=CLASSIFY | EMBED, choices=tuple(STREAM_CHOICES),
    ),
    Option(
        "chunk_rows", "training", int, DEFAULT_CHUNK_ROWS,
        "Streamed training: cells read from the file and shuffled together (bounds memory).",
        tasks=CLASSIFY | EMBED | PREDICT, low=1, high=10_000_000,
        task_help={
            "predict": "Observations read and encoded at a time (bounds memory; lower it on a "
            "small machine)."
        },
    ),
    # ----------------------------------------------------------------------------- apply --
    Option(
        "gene_symbols", "apply", str, None, "var column with the gene identifiers to match.",
        tasks=APPLYING,
    ),
    Option(
        "min_gene_overlap", "apply", float, 0.8,
        "Stop when fewer of the model's genes are present.",
        # the library's check says more than click's (a fraction in (0, 1])
        tasks=APPLYING, low=0, high=1, low_open=True, click_range=False,
    ),
    Option(
        "target", "apply", str, None,
        "Classifier: only explain these classes (comma separated; default all). Forecaster: "
        "the gene(s) whose forecast is explained (required).",
        tasks=EXPLAIN,
    ),
    Option(
        "method", "apply", str, "integrated_gradients",
        "integrated_gradients (captum, with a completeness check) or input_x_gradient (fast).",
        tasks=EXPLAIN, choices=("integrated_gradients", "input_x_gradient"),
    ),
    Option(
        "n_steps", "apply", int, 50,
        "Integration steps (more = attributions closer to complete).",
        tasks=EXPLAIN, low=1, high=1_024,
    ),
    Option(
        "baseline", "apply", str, "mean",
        "Reference input: the training mean of each gene, or no expression.",
        tasks=EXPLAIN, choices=("mean", "zero"),
    ),
    Option(
        "use_labels", "apply", bool, False,
        "Explain each sequence toward its labelled class (the model's label column in this "
        "data) instead of its predicted class.",
        tasks=EXPLAIN,
    ),
    Option(
        "max_per_class", "apply", int, None,
        "Explain at most this many sequences per class (seeded random subset; faster).",
        tasks=EXPLAIN, low=1, high=1_000_000,
    ),
    # ---------------------------------------------------------------------------- output --
    Option(
        "key_added", "output", str, "rnn",
        "Prefix of the output keys (letters, digits, '_' and '-').", tasks=ALL,
        task_defaults={"predict": None},
        task_help={"predict": "Prefix of the output keys (default: the model's)."},
    ),
    Option(
        "horizon", "output", int, None,
        "Steps to forecast beyond the end of every series (rollout) into uns[KEY]['future']. "
        "Default 1, or the number of --future-times.",
        tasks=FORECAST, low=0, high=1_000,
    ),
    Option(
        "future_times", "output", list, None,
        "Time points of those future steps, comma separated (after every series' end). "
        "Default: each series' last time plus multiples of its median time gap.",
        tasks=FORECAST,
    ),
    Option(
        "holdout_steps", "output", int, 0,
        "Forecast the last K steps by rollout and score them (of the test units; of all units "
        "with --test-fraction 0). 0: score one-step-ahead forecasts of the test units.",
        tasks=FORECAST, low=0, high=1_000,
    ),
    Option(
        "cluster", "output", str, None, "Cluster the embedding (--eval-label implies kmeans).",
        tasks=EMBED, choices=("none", "kmeans", "leiden"), to_cli=lambda v: v or "none",
    ),
    Option(
        "n_clusters", "output", int, None,
        "k-means: number of clusters (default: classes of --eval-label, else best silhouette "
        "in 2..10).",
        tasks=EMBED, low=1, high=10_000,
    ),
    Option(
        "resolution", "output", float, 1.0, "Leiden resolution (higher = more clusters).",
        tasks=EMBED, low=0, low_open=True,
    ),
    Option(
        "cluster_level", "output", str, "auto",
        "obs-series: cluster whole series or observations (auto: series, or observations "
        "when --eval-label varies within series).",
        tasks=EMBED, choices=("auto", "series", "step"),
    ),
    Option(
        "eval_label", "output", str, None,
        "Column (obs or var) with known groups: ARI, NMI, silhouette and per-cluster "
        "enrichment, RNN vs PCA + k-means.",
        tasks=EMBED,
    ),
    # ------------------------------------------------------------------------------- run --
    Option(
        "seed", "run", int, 0, "Seed (runs are reproducible).", low=0, high=MAX_SEED, tasks=ALL
    ),
    Option(
        "device", "run", str, "auto", "auto = CUDA when available, else CPU.",
        choices=("auto", "cpu", "cuda"), tasks=ALL,
    ),
    Option(
        "amp", "run", bool, False,
        "Mixed precision on a CUDA GPU (bf16 where supported, else fp16); ignored on CPU.",
        tasks=TRAINING | PREDICT,
    ),
    Option(
        "overwrite", "run", bool, False,
        "Replace output keys that already exist in the AnnData.", tasks=ALL,
    ),
    Option("quiet", "run", bool, False, "No progress bar or log; only the results.", tasks=ALL),
    Option(
        "copy", "run", bool, False, "Work on a copy and return it.", tasks=ALL,
        cli_tasks=frozenset(),
    ),
)  # fmt: skip

#: the options by name
BY_NAME: Mapping[str, Option] = MappingProxyType({option.name: option for option in OPTIONS})
if len(BY_NAME) != len(OPTIONS):
    raise RuntimeError("an option is declared twice")


def options_of(task: str, *groups: str) -> list[Option]:
    """The options ``task`` takes, in table order (only those of ``groups`` when given)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    return [o for o in OPTIONS if task in o.tasks and (not groups or o.group in groups)]


def task_defaults(task: str) -> SimpleNamespace:
    """``task``'s defaults as attributes, for the ``tl`` signatures."""
    return SimpleNamespace(**{o.name: o.default_for(task) for o in options_of(task)})


DEFAULTS: Mapping[str, SimpleNamespace] = MappingProxyType(
    {task: task_defaults(task) for task in TASKS}
)


#: docstring fragments the ``tl`` functions share (numpy style, indented for a parameter list)
DOCS = {
    "doc_sequences": """\
layout
        ``"obs-series"``, ``"var-series"`` or ``"profile"`` (see :mod:`anndata_rnn.sequences`).
    series_key, time_key
        obs columns naming the series and the numeric time of each observation.
    series_subset
        Only these series (var-series: e.g. ``["cdc15"]``).""",
    "doc_profile": """\
order_key, chunk_size
        profile: var column giving the gene order, and genes per step.""",
    "doc_reading": """\
layer, use_rep
        Read features from ``layers[layer]`` or ``obsm[use_rep]`` instead of X.
    normalize
        ``"auto"`` applies normalize_total + log1p when the matrix looks like raw counts;
        ``"always"`` / ``"never"`` force it.
    n_top_genes, gene_subset
        Gene selection: highly variable genes (fitted on training rows) or a boolean var column.
        ``"auto"`` (the default) selects 2,000 in a wide profile (more than 4,000 genes or 128
        steps) and keeps every gene otherwise; 0 or None keeps every gene. In var-series
        ``gene_subset`` selects which genes become sequences.""",
    "doc_run": """\
seed, device
        Seed for python/numpy/torch and the split; ``"auto"`` uses CUDA when available.
    amp
        Mixed precision on a CUDA GPU (bfloat16 where the GPU supports it, else float16 with a
        gradient scaler), for training and inference; ignored on the CPU (logged). Results
        differ from float32 ones within the tolerance stated in the README ("GPU").
    key_added
        Prefix of every output key.
    overwrite
        Replace existing output keys instead of refusing.
    quiet
        No progress bar.
    copy
        Work on a copy and return it.""",
}


def doc_params(**fragments: str):
    """Fill ``{name}`` placeholders of a docstring with ``fragments`` (scanpy's ``doc_params``).

    Only the given names are replaced, so the other braces of a docstring (``{key}_pred``) stay
    as they are; a ``{doc_...}`` placeholder left unfilled is an error.
    """

    def decorate(func):
        doc = func.__doc__
        for name, text in fragments.items():
            doc = doc.replace("{" + name + "}", text)
        if "{doc_" in doc:  # a fragment misspelt or missing from the table
            raise ValueError(f"{func.__name__}'s docstring has an unknown {{doc_...}} fragment")
        func.__doc__ = doc
        return func

    return decorate
