"""The skeleton every tool (``anndata_rnn.tl``) composes: a run from settings to results.

- :func:`start_training` validates the settings, seeds, picks the device and builds the index;
- :meth:`TrainingRun.prepare` splits, fits the preprocessing on the training units and encodes;
- :meth:`TrainingRun.finish` writes the split column and the ``uns`` record and builds the model;
- :func:`open_model` opens a saved model on new data (load, gene overlap, index) for predict and
  explain.

Every tool returns a :class:`TaskResult` through :func:`task_api`: the public function gives the
scanpy-style return value, ``tool.run`` the result object the command line prints.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch
from anndata import AnnData

from . import distributed, threads, timing
from .errors import InputError, listed
from .features import FIT_BUDGET_BYTES, FeatureSource
from .io import uns_safe, versions
from .metrics import MIN_TEST_PER_CLASS, MIN_TEST_UNITS
from .model import Model, check_gene_overlap
from .preprocessing import Encoded, Preprocessor, encode
from .sequences import Layout, SequenceIndex, SequenceSpec, bool_column, broadcast_to_rows
from .splits import log_split, make_split, random_subset, split_from_column
from .streaming import (
    DEFAULT_CHUNK_ROWS,
    STREAM_FIT_SEQUENCES,
    LazyEncoded,
    Streamed,
    stream_apply,
)
from .training import (
    TrainConfig,
    batch_order,
    deterministic,
    precision,
    resolve_device,
    seed_everything,
)

log = logging.getLogger("anndata_rnn")

IMPUTATION_LOG = {
    "interpolate": "imputed %d missing values (interpolation along time, then training mean)",
    "causal": "imputed %d missing values (last observed value, then the training mean); they are "
    "inputs only, never targets or scored values",
}


@dataclass
class TaskResult:
    """What a tool did: the annotated AnnData, the model (training tools), the metrics and the
    elements it wrote. ``record`` is the content stored in ``uns[key]``; ``written`` the
    elements the tool wrote besides ``uns[key]`` (``"obs/<column>"``, ``"var/<column>"``,
    ``"obsm/<key>"``, ``"varm/<key>"``, ``"layers/<key>"``), given by the tool itself."""

    adata: AnnData
    key: str
    record: dict
    model: Model | None = None
    copy: bool = False
    title: str = "test split"
    written: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.record.get("metrics", {})

    @property
    def elements(self) -> list[str]:
        """Exactly the elements the tool wrote into the AnnData (``written`` and
        ``uns/{key}``): what a copy of the input file needs to get
        (:func:`~anndata_rnn.streaming.write_new_elements`; ``tests/test_elements.py``)."""
        return [*self.written, f"uns/{self.key}"]

    def returned(self):
        """scanpy style: the model (training) or None; with ``copy`` the annotated copy too."""
        if self.model is not None:
            return (self.model, self.adata) if self.copy else self.model
        return self.adata if self.copy else None


def task_api(run):
    """The public tool: ``run``'s signature and docstring, scanpy's return value.

    ``tool.run(...)`` returns the :class:`TaskResult` itself (used by the command line). The run
    has deterministic torch kernels (:func:`~anndata_rnn.training.deterministic`) and, with
    ``amp=True``, mixed precision; both are undone when it returns.
    """

    @functools.wraps(run)
    def run_in_precision(adata, *args, **kwargs):
        # mixed precision (amp=True) covers every forward pass of the run, training and inference
        amp = bool(kwargs.get("amp", False))
        device = resolve_device(kwargs.get("device", "auto")) if amp else "cpu"
        with timing.recording(), precision(device, amp), deterministic():
            result = run(adata, *args, **kwargs)
            timing.store(result.adata, result.key, result.record)  # uns[key]["timings"]
            store_threads(result)
            return result

    @functools.wraps(run)
    def public(adata, *args, **kwargs):
        return run_in_precision(adata, *args, **kwargs).returned()

    public.run = run_in_precision
    return public


def store_threads(result: TaskResult) -> None:
    """``uns[key]["threads"]``: torch's intra-op threads and why (:mod:`.threads`)."""
    chosen = threads.record()
    part = timing.own_part(result.record)  # explain extending a model's record keeps its threads
    for target in (result.record, result.adata.uns.get(result.key)):
        if isinstance(target, dict):
            (target[part] if part else target)["threads"] = dict(chosen)


def target_of(adata: AnnData, copy: bool) -> AnnData:
    if adata.isbacked and not copy:
        raise InputError(
            "the AnnData is opened backed (read-only on disk): pass copy=True to get the results "
            "in memory"
        )
    return adata.copy() if copy else adata


def check_keys_free(adata: AnnData, targets: list[tuple[str, str]], overwrite: bool) -> None:
    """Refuse to overwrite existing result keys unless asked to."""
    if overwrite:
        return
    taken = [f"{attr}[{key!r}]" for attr, key in targets if key in _mapping(adata, attr)]
    if taken:
        raise InputError(
            f"the output keys {', '.join(taken)} already exist: choose another key_added "
            "(--key-added) or pass --overwrite"
        )


def _mapping(adata: AnnData, attr: str):
    if attr in ("obs", "var"):
        return getattr(adata, attr).columns
    return getattr(adata, attr).keys()


def store_uns(adata: AnnData, key: str, content: dict) -> None:
    adata.uns[key] = uns_safe(content)


def history_record(history: dict) -> dict:
    return {k: np.asarray(v) if isinstance(v, list) else v for k, v in history.items()}


# ---------------------------------------------------------------------------------------------
# training


@dataclass
class TrainingRun:
    """One training run of a tool, from settings to the written record."""

    target: AnnData
    spec: SequenceSpec
    source: FeatureSource
    index: SequenceIndex
    architecture: dict
    train_config: TrainConfig
    device: torch.device
    seed: int
    copy: bool
    split: np.ndarray | None = None
    ids: dict = field(default_factory=dict)
    prep: Preprocessor | None = None
    encoded: Encoded | LazyEncoded | None = None
    #: training sequences the preprocessing was fitted on
    fit_sequences: int = 0

    @property
    def key(self) -> str:
        return self.spec.key_added

    def choose_split(
        self,
        *,
        split_key: str | None,
        val_fraction: float,
        test_fraction: float,
        usable: np.ndarray | None = None,
        strata: np.ndarray | None = None,
        groups: np.ndarray | None = None,
    ) -> np.ndarray:
        """Units -> train / val / test / unused: from a column, or seeded (stratified; whole
        ``groups`` to one part when given)."""
        if split_key is not None:
            split = split_from_column(self.target, self.index, split_key)
            return split if usable is None else np.where(usable, split, "unused")
        return make_split(
            self.index.n_units,
            usable=np.ones(self.index.n_units, dtype=bool) if usable is None else usable,
            strata=strata,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=self.seed,
            groups=groups,
        )

    @timing.timed("preprocessing")
    def prepare(
        self,
        split: np.ndarray,
        prep: Preprocessor,
        *,
        normalize: str,
        n_top_genes: int | None,
        gene_subset: str | None,
        order_key: str | None = None,
        fit_index: SequenceIndex | None = None,
        stream: bool = False,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> Encoded | LazyEncoded:
        """Fit ``prep`` on the training units (on ``fit_index`` when given) and encode.

        Sets ``split``, ``ids`` (train / val / test sequence ids), ``prep`` and ``encoded``
        (every sequence of ``fit_index`` or of the run's index). With ``stream``, ``prep`` is
        fitted on at most :data:`~anndata_rnn.streaming.STREAM_FIT_SEQUENCES` training
        sequences (seeded) and ``encoded`` is a :class:`~anndata_rnn.streaming.LazyEncoded`
        (which, on a file, reads its shuffle buffer ``chunk_rows`` sequences at a time).
        """
        if chunk_rows < 1:
            raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.split = split
        self.ids = {
            name: self.index.sequences_of_units(np.flatnonzero(split == name))
            for name in ("train", "val", "test")
        }
        log_split(self.index.layout, split)
        layout, target = self.index.layout, self.target
        if (
            Layout.of(layout).steps_are_gene_chunks
            and order_key is not None
            and order_key not in target.var.columns
        ):
            raise InputError(f"var has no column {order_key!r} (order_key)")
        index = self.index if fit_index is None else fit_index
        fit_ids = self.ids["train"]
        if stream:
            fit_ids = random_subset(fit_ids, STREAM_FIT_SEQUENCES, self.seed)
            log.info(
                "streamed training: preprocessing fitted on %d of %d training sequences",
                len(fit_ids),
                len(self.ids["train"]),
            )
        fit_ids = self._within_fit_budget(index, fit_ids)
        self.fit_sequences = len(fit_ids)
        prep.fit(
            self.source,
            index,
            fit_ids,
            normalize=normalize,
            n_top_genes=n_top_genes,
            gene_subset=(
                bool_column(target.var, gene_subset, "var")
                if (gene_subset is not None and not Layout.of(layout).one_feature)
                else None
            ),
            gene_order=(
                target.var[order_key].to_numpy()
                if (Layout.of(layout).steps_are_gene_chunks and order_key)
                else None
            ),
            chunk_size=self.spec.chunk_size if Layout.of(layout).steps_are_gene_chunks else None,
        )
        self.prep = prep
        if Layout.of(layout).steps_are_gene_chunks:  # the steps follow the number of selected genes
            self.index = index = self.index.with_width(len(prep.features))
        if stream:  # encoded batch by batch while training and predicting
            self.encoded = LazyEncoded(index, self.source, prep, chunk_rows=chunk_rows)
            return self.encoded
        self.encoded = encode(index, self.source, prep)
        if self.encoded.imputed:
            log.info(IMPUTATION_LOG[prep.imputation], self.encoded.imputed)
        return self.encoded

    def _within_fit_budget(self, index: SequenceIndex, fit_ids: np.ndarray) -> np.ndarray:
        """At most :data:`~anndata_rnn.features.FIT_BUDGET_BYTES` of dense float32 for the
        preprocessing fit: a seeded subset of the training sequences when the rows × genes the
        file declares would take more (a file can claim 10⁵ × 10⁵ in a few MB)."""
        n_features = len(self.source.feature_names)
        if index.layout_kind.one_feature:  # every sequence reads every row: the whole matrix
            needed = self.source.n_rows * n_features * 4
            if needed > FIT_BUDGET_BYTES * 8:
                raise InputError(
                    f"var-series reads the whole {self.source.description} ({self.source.n_rows} "
                    f"× {n_features}, {needed / 2**30:.1f} GiB as float32): give fewer genes "
                    "(--gene-subset) or time points"
                )
            return fit_ids
        n_rows = len(index.obs_rows(fit_ids))
        needed = n_rows * n_features * 4
        if needed <= FIT_BUDGET_BYTES:
            return fit_ids
        keep = max(1, int(len(fit_ids) * FIT_BUDGET_BYTES / needed))
        log.info(
            "preprocessing fitted on %d of %d training sequences (%d genes: the fit reads at most "
            "%d MiB)",
            keep,
            len(fit_ids),
            n_features,
            FIT_BUDGET_BYTES >> 20,
        )
        return random_subset(fit_ids, keep, self.seed)

    def preprocessing_record(self, n_imputed: int, **extra) -> dict:
        """What the record says of the fitted preprocessing (``extra``: a task's own entries)."""
        prep = self.prep
        return {
            "normalized": prep.normalize,
            **extra,
            "n_features": len(prep.features),
            "n_imputed": n_imputed,
            "fitted_on_sequences": self.fit_sequences,
        }

    def stream_params(self, stream, chunk_rows: int, batch_size: int) -> dict:
        """The record of streaming: as asked, whether the run streamed, the buffer size and the
        order of the training batches (:func:`~anndata_rnn.training.batch_order`)."""
        return {
            "stream": stream,
            "streamed": isinstance(self.encoded, LazyEncoded),
            "chunk_rows": chunk_rows,
            "batch_order": batch_order((self.encoded,), batch_size),
        }

    def exclude_units(self, usable: np.ndarray, why: str) -> None:
        """Units that cannot be trained on become "unused" (they are still embedded)."""
        if not usable.all():
            log.info(
                "%d of %d units %s: embedded but not trained on or clustered",
                int((~usable).sum()),
                self.index.n_units,
                why,
            )
        self.split = np.where(usable, self.split, "unused")
        for name in ("train", "val", "test"):
            self.ids[name] = self.index.sequences_of_units(np.flatnonzero(self.split == name))
        if len(self.ids["train"]) == 0:
            raise InputError(
                "no training sequences left (all units miss too many values or are not in the "
                "training split): raise max_missing or check the split"
            )

    def test_cautions(self, labels=None) -> list[str]:
        """Why the test metrics of a plain run cannot be trusted (fewer than
        ``MIN_TEST_UNITS`` test units, or fewer than ``MIN_TEST_PER_CLASS`` of some class), each
        with the fix."""
        units = np.flatnonzero(self.split == "test")
        if labels is not None and labels.level == "unit":
            units = units[labels.codes[units] >= 0]
        cautions = []
        if 0 < len(units) < MIN_TEST_UNITS:
            cautions.append(
                f"only {len(units)} test units: the test metrics are unreliable; use "
                "cross-validation (--cv 5) to measure on every unit"
            )
        if labels is not None and labels.level == "unit" and len(units):
            counts = np.bincount(labels.codes[units], minlength=len(labels.classes))
            rare = [
                str(c)
                for c, n in zip(labels.classes, counts, strict=True)
                if n < MIN_TEST_PER_CLASS
            ]
            if rare:
                cautions.append(
                    f"class(es) {listed(rare)} have fewer than {MIN_TEST_PER_CLASS} test units: "
                    "their metrics are unreliable; use cross-validation (--cv 5)"
                )
        return cautions  # TrainingRun.finish warns, stores them in uns, the CLI prints them

    def write_split(self, categories=("train", "val", "test", "unused")) -> str:
        """The split of every unit into ``{key}_split`` of obs (var); returns its path."""
        split_rows = broadcast_to_rows(self.index, np.asarray(self.split, dtype=object))
        return self.index.write_column(
            self.target, f"{self.key}_split", split_rows, categories=list(categories)
        )

    def finish(
        self,
        config: dict,
        module: torch.nn.Module,
        *,
        head: dict,
        params: dict,
        preprocessing: dict,
        metrics: dict,
        written: list[str],
        history: dict,
        tail: dict | None = None,
        text_in_config: bool = True,
        notes: list[str] | None = None,
        arrays: dict | None = None,
        title: str = "test split",
        cautions: list[str] | None = None,
    ) -> TaskResult:
        """Write ``uns[key]``, complete ``config`` and build the model."""
        index, key = self.index, self.key
        config["metrics"] = {
            name: {
                m: v
                for m, v in values.items()
                if np.ndim(v) == 0 and (text_in_config or not isinstance(v, str))
            }
            for name, values in metrics.items()
        }
        config["versions"] = versions()
        config["device"] = str(self.device)
        record = {
            "task": config["task"],
            "layout": index.layout,
            **head,
            "params": {
                **{k: v for k, v in self.spec.keys().items() if v is not None},
                **{k: v for k, v in config["architecture"].items() if k != "time_channel"},
                **config["train"],
                **params,
            },
            "preprocessing": preprocessing,
            "metrics": metrics,
            **(tail or {}),
            "history": history_record(history),
            "written": written,
            "seed": self.seed,
            "device": str(self.device),
            "versions": config["versions"],
            "notes": index.notes + (notes or []),
        }
        if cautions:  # what makes the metrics unreliable (printed under the table)
            record["cautions"] = list(cautions)
        # a Python user sees them as warnings; the command line prints them under its table
        # (it ignores UserWarning) and the report shows them from the record
        for caution in cautions or ():
            log.info(caution)
            warnings.warn(caution, UserWarning, stacklevel=3)
        store_uns(self.target, key, record)
        model = Model(config, self.prep, module.cpu(), arrays=arrays)
        return TaskResult(
            self.target, key, record, model=model, copy=self.copy, title=title, written=written
        )


def start_training(
    adata: AnnData,
    spec: SequenceSpec,
    *,
    architecture: dict,
    train_config: TrainConfig,
    seed: int,
    device: str,
    copy: bool,
    gene_subset: str | None = None,
) -> TrainingRun:
    """Validate, seed, pick the device and build the sequence index (once) of a training run.

    In var-series ``gene_subset`` (a boolean var column) picks the genes that become sequences.
    """
    target = target_of(adata, copy)
    train_config.validate()
    seed_everything(seed)
    torch_device = distributed.local_device(resolve_device(device))
    distributed.init(torch_device)  # under torchrun: join the process group
    source = FeatureSource(target, layer=spec.layer, use_rep=spec.use_rep)
    var_mask = None
    if Layout.of(spec.layout).one_feature and gene_subset is not None:
        var_mask = bool_column(target.var, gene_subset, "var")
    index = spec.index(target, var_mask=var_mask)
    threads.log_choice()  # the command line's thread choice, once the input is read
    for note in index.notes:
        log.info(note)
    return TrainingRun(
        target, spec, source, index, architecture, train_config, torch_device, seed, copy
    )


# ---------------------------------------------------------------------------------------------
# applying a saved model


@dataclass
class OpenedModel:
    """A saved model opened on new data: where its sequences come from and how genes matched."""

    target: AnnData
    model: Model
    spec: SequenceSpec
    source: FeatureSource
    index: SequenceIndex
    overlap: dict
    device: torch.device
    #: streamed apply: obs rows read per chunk, and whether to show a progress bar
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    progress: bool = False
    #: where outputs that grow with the data may be spilled (see :func:`stream`)
    scratch: h5py.Group | None = None

    def stream(self, run, batch_size: int, spill: dict[int, str] | None = None) -> Streamed:
        """Every sequence encoded chunk by chunk through ``run(values, lengths)`` (the network's
        inference on one batch); only its outputs are kept (:func:`.streaming.stream_apply`).
        With a ``scratch`` group, the outputs named in ``spill`` stay on disk there."""
        return stream_apply(
            self.index,
            self.source,
            self.model.preprocessor,
            run,
            batch_size=batch_size,
            chunk_rows=self.chunk_rows,
            progress=self.progress,
            spill=spill,
            scratch=self.scratch,
        )


def _check_sequence_length(model: Model, index: SequenceIndex) -> None:
    """Refuse data whose sequences are longer than any the model was trained on: its linear
    path reads a fixed number of steps, so the rest would be ignored without a word (a
    var-series model given obs-series data, or the reverse, ends here)."""
    max_steps = model.config["architecture"].get("max_steps")
    steps = index.steps.shape[1]
    if max_steps and model.config.get("label_level", "unit") == "unit" and steps > max_steps:
        raise InputError(
            f"the data's {model.layout} sequences have up to {steps} steps but the model was "
            f"trained on at most {max_steps}: check the layout and the series/time keys, or "
            "keep the time points the model was trained on"
        )


@timing.timed("preprocessing")
def open_model(
    adata: AnnData,
    model: Model,
    *,
    copy: bool,
    seed: int,
    device: str,
    gene_symbols: str | None,
    min_gene_overlap: float,
    series_subset=None,
    check_targets=None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = False,
    scratch: h5py.Group | None = None,
) -> OpenedModel:
    """Seed, match genes and build the index of ``model`` (loaded by the tool:
    :func:`~anndata_rnn.model.load_model`) on ``adata``.

    ``check_targets(target, model)`` runs once the target exists, before anything is computed
    (the output-key checks of the calling tool). ``chunk_rows``, ``progress`` and ``scratch``
    set how the apply step streams (:func:`~anndata_rnn.streaming.stream_apply`).
    """
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not 0 < min_gene_overlap <= 1:
        raise InputError(f"min_gene_overlap must be in (0, 1], got {min_gene_overlap}")
    target = target_of(adata, copy)
    seed_everything(seed)
    torch_device = distributed.local_device(resolve_device(device))
    distributed.init(torch_device)  # under torchrun: the ranks share the streamed sequences
    spec = SequenceSpec.from_keys(
        model.config["keys"], layout=model.layout, series_subset=series_subset
    )
    if check_targets is not None:
        check_targets(target, model)
    source = FeatureSource(
        target, layer=spec.layer, use_rep=spec.use_rep, gene_symbols=gene_symbols
    )
    overlap = check_gene_overlap(model.preprocessor, source, min_gene_overlap)
    n_features = len(model.features) if Layout.of(model.layout).steps_are_gene_chunks else None
    index = spec.index(target, n_features=n_features)
    threads.log_choice()
    for note in index.notes:
        log.info(note)
    _check_sequence_length(model, index)
    return OpenedModel(
        target, model, spec, source, index, overlap, torch_device, chunk_rows, progress, scratch
    )
