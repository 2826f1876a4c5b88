"""Shared CLI plumbing: options, one-line errors, atomic outputs, the metrics table."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import click
import numpy as np
import pandas as pd

from ..errors import AnnDataRNNError, InputError
from ..io import check_output_path, temporary_name, write_table

log = logging.getLogger("anndata_rnn")

EXIT_INPUT = 2
EXIT_RUNTIME = 1
EXIT_INTERRUPTED = 130
#: upper bound of --threads (torch allocates per thread; 100,000 threads exhaust memory)
MAX_THREADS = 1024

#: the fix to suggest for operating-system errors while reading or writing
OS_HINTS = {
    errno.ENOSPC: "free disk space or write the outputs to another disk",
    errno.EDQUOT: "free disk space or write the outputs to another disk",
    errno.EACCES: "check the file permissions or write to another directory",
    errno.EROFS: "the file system is read-only: write to another directory",
}


def common_options(func):
    """``--quiet``, ``--debug``, ``--threads``, ``--overwrite`` and error handling."""

    @_table_option("quiet")
    @click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
    @click.option(
        "--threads",
        type=click.IntRange(1, MAX_THREADS),
        default=None,
        help="CPU threads for torch (Galaxy passes GALAXY_SLOTS). Default: torch's choice.",
    )
    @_table_option("overwrite")
    @functools.wraps(func)
    def wrapper(*args, quiet, debug, threads, **kwargs):
        from .. import heap, timing
        from .. import threads as thread_policy

        RUN.warnings = []
        _setup_logging(quiet)
        heap.set_for_command_line()  # glibc's thresholds (anndata_rnn/heap.py)
        thread_policy.apply(threads)  # explicit --threads, else the environment's (one log line)
        try:
            with warnings.catch_warnings(), terminate_as_interrupt(), timing.recording():
                # our own warnings are already logged as one line; python's repeat them with
                # a source line, which reads like a crash on the command line
                warnings.simplefilter("ignore", UserWarning)
                warnings.showwarning = _recording(warnings.showwarning)
                # numpy's RuntimeWarnings (overflow, empty slices) are a source line, not a
                # message: the checks report such data as one line of their own
                warnings.simplefilter("ignore", RuntimeWarning)
                return func(*args, quiet=quiet, **kwargs)
        except Terminated as exc:
            click.echo(f"Terminated by {exc.name}: no output was written.", err=True)
            sys.exit(128 + exc.signum)
        except KeyboardInterrupt:
            click.echo("Interrupted: no output was written.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except AnnDataRNNError as exc:
            if debug:
                traceback.print_exc()
            error_line(str(exc))
            sys.exit(exc.exit_code)
        except Exception as exc:
            if debug:
                traceback.print_exc()
            if out_of_memory(exc):
                error_line(f"out of memory{_tried(exc)}: {memory_hint()}")
                sys.exit(EXIT_INPUT)
            if isinstance(exc, OSError):
                message = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
                hint = OS_HINTS.get(exc.errno)
                error_line(f"{message}{f': {hint}' if hint else ''}")
                sys.exit(EXIT_RUNTIME)
            if debug:
                raise
            # unexpected: still one line
            error_line(
                f"unexpected {type(exc).__name__}: {exc}",
                suffix=" (rerun with --debug and report it)",
            )
            sys.exit(EXIT_RUNTIME)

    return wrapper


#: the longest error line printed; a longer message (a huge class or file name) is cut in the
#: middle with "…"
MAX_ERROR_CHARS = 500


def error_line(message: str, *, suffix: str = "") -> None:
    """Print ``Error: message`` as one line of at most :data:`MAX_ERROR_CHARS` characters."""
    text = " ".join(message.split())
    room = MAX_ERROR_CHARS - len("Error: ") - len(suffix)
    if len(text) > room:
        half = (room - 1) // 2
        text = text[:half] + "…" + text[len(text) - (room - 1 - half) :]
    click.echo(f"Error: {text}{suffix}", err=True)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (what Galaxy, batch schedulers and a closed terminal send): unwinds
    like Ctrl-C, so every temporary and scratch file is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def terminate_as_interrupt():
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while a command runs (main thread only:
    Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, raise_terminated) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


TERMINATING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)

#: what a failed allocation says (numpy's MemoryError, torch's CPU and CUDA allocators)
_OOM_WORDS = ("out of memory", "not enough memory", "cannot allocate memory", "unable to allocate")
#: the options that lower memory, in the order a hint names them (those the command has)
_MEMORY_OPTIONS = ("--batch-size", "--chunk-rows", "--hidden", "--n-top-genes", "--n-steps")


def out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _OOM_WORDS)


def _tried(exc: BaseException) -> str:
    """' (tried to allocate 22.5 GB)' when the allocator said how much."""
    import re

    found = re.search(r"allocate (\d+) bytes", str(exc))
    if found:
        return f" (tried to allocate {int(found.group(1)) / 1e9:.1f} GB)"
    found = re.search(r"allocate ([\d.]+ [KMGT]i?B)", str(exc))
    return f" (tried to allocate {found.group(1)})" if found else ""


def memory_hint() -> str:
    """Which options of the running command lower its memory."""
    ctx = click.get_current_context(silent=True)
    have = {o for p in (ctx.command.params if ctx else []) for o in getattr(p, "opts", [])}
    options = [o for o in _MEMORY_OPTIONS if o in have] or ["--batch-size"]
    return f"lower {', '.join(options[:-1])}{' or ' if len(options) > 1 else ''}{options[-1]}"


class RunState:
    """What one command invocation collects for its report: the ``--report`` path, the
    warnings raised (log warnings and python warnings) and the command line."""

    def __init__(self):
        self.report: str | None = None
        self.warnings: list[str] = []

    @staticmethod
    def command() -> str | None:
        if Path(sys.argv[0]).name in ("anndata-rnn", "__main__.py"):
            return shlex.join(["anndata-rnn", *sys.argv[1:]])
        return None


#: the state of the command being run (one at a time per process)
RUN = RunState()


class _WarningCollector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)

    def emit(self, record):
        RUN.warnings.append(record.getMessage())


def _recording(show):
    """``warnings.showwarning`` that also records the warning for the report."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        RUN.warnings.append(f"{category.__name__}: {message}")
        show(message, category, filename, lineno, file, line)

    return showwarning


def report_option(func):
    """``--report FILE``: a self-contained HTML report of the run, written with the other
    outputs (temporary name, renamed at the end; nothing when the run fails)."""

    @click.option(
        "--report",
        type=click.Path(dir_okay=False),
        help="Also write a self-contained HTML report: parameters, data and split sizes, "
        "metrics against the baseline, plots, warnings, package versions.",
    )
    @functools.wraps(func)
    def wrapper(*args, report, **kwargs):
        RUN.report = report
        try:
            return func(*args, **kwargs)
        finally:
            RUN.report = None

    return wrapper


def apply_model_arguments(func):
    """``INPUT --model MODEL --output OUT`` of the commands that apply a saved model."""
    func = click.option(
        "--output", required=True, type=click.Path(dir_okay=False), help="Output .h5ad."
    )(func)
    func = click.option(
        "--model",
        "model_path",
        required=True,
        type=click.Path(dir_okay=False),
        help="Model file written by a training command (--model-out).",
    )(func)
    return click.argument("input", type=click.Path(dir_okay=False))(func)


def device_options(func):
    """``--seed`` and ``--device`` for commands that train or apply a network."""
    return _table_option("seed")(_table_option("device")(func))


def amp_option(func):
    """``--amp``: mixed precision on a CUDA GPU (commands that run a network many times)."""
    return _table_option("amp")(func)


def _table_option(name: str):
    """The click option of a run option of :data:`anndata_rnn.options.OPTIONS` (the same for
    every command: no task has a default of its own)."""
    from ..options import BY_NAME
    from ._training_options import click_option

    option = BY_NAME[name]
    return click_option(option, next(iter(option.tasks)))


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("anndata_rnn")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.addHandler(_WarningCollector())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def split_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


class Outputs:
    """Output files written under temporary names and renamed together at the end.

    A failure (or Ctrl-C) before :meth:`commit` removes every temporary file, so no partial
    output is ever left behind.
    """

    def __init__(self, inputs: tuple = ()):
        self.inputs = inputs
        self.pending: list[tuple[Path, Path]] = []
        #: the temporary path of the --report of the command being run (None without)
        self.report = self.add(RUN.report)
        self.report_final = RUN.report

    def write_report(self, adata, key: str) -> None:
        """Write the --report of this run (if asked) to its temporary path."""
        if self.report is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        from ..report import write_report

        write_report(adata, self.report, key=key, run_warnings=RUN.warnings, command=RUN.command())

    def add(self, final) -> Path | None:
        if final is None:
            return None
        final = Path(final)
        check_output_path(final, inputs=self.inputs)
        if any(final.resolve() == f.resolve() for _, f in self.pending):
            raise InputError(f"output path {str(final)!r} is given twice: use distinct file names")
        tmp = temporary_name(final)
        self.pending.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []
        if self.report is not None:
            click.echo(f"wrote report {self.report_final}")

    def discard(self) -> None:
        for tmp, _ in self.pending:
            if tmp.exists():
                tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


def metrics_frame(metrics: dict) -> pd.DataFrame:
    """One row per scalar metric, one column per model (rnn, baseline, ...)."""
    models = [m for m, v in metrics.items() if isinstance(v, dict)]
    names: list[str] = []
    for m in models:
        for k, v in metrics[m].items():
            if np.ndim(v) == 0 and not isinstance(v, str) and k not in names:
                names.append(k)
    rows = []
    for name in names:
        row = {"metric": name}
        for m in models:
            value = metrics[m].get(name, np.nan)
            row[m] = float(value) if np.ndim(value) == 0 and not isinstance(value, str) else np.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", *models])


def print_metrics(metrics: dict, title: str = "test split") -> None:
    frame = metrics_frame(metrics)
    if frame.empty:
        click.echo("no metrics (no test split)")
        return
    headers = ["metric", *[c.upper() if c == "rnn" else c for c in frame.columns[1:]]]
    widths = [max(len(h), 18) if i == 0 else max(len(h), 10) for i, h in enumerate(headers)]
    click.echo(f"\nMetrics on the {title}:")
    click.echo(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    click.echo("-+-".join("-" * w for w in widths))
    for _, row in frame.iterrows():
        cells = [str(row["metric"]).ljust(widths[0])]
        for c, w in zip(frame.columns[1:], widths[1:], strict=True):
            value = row[c]
            cells.append(("n/a" if pd.isna(value) else f"{value:.4g}").ljust(w))
        click.echo(" | ".join(cells))


def write_metrics_table(metrics: dict, path, *, atomic: bool = True) -> None:
    write_table(metrics_frame(metrics), path, atomic=atomic)


def train_and_write(input, output, model_out, metrics_table, train, *, lazy: bool = False):
    """Read ``input``, run ``train(adata) -> TaskResult``, write the h5ad, model and metrics.

    All outputs appear together or not at all (temporary names renamed at the end). With
    ``lazy``, X and the layers stay in the file (:func:`~anndata_rnn.streaming.open_lazy`) and
    the output h5ad is a copy of the input plus the new elements, as ``predict`` writes it.
    """
    from .. import distributed, timing
    from ..io import read_h5ad, write_h5ad
    from ..streaming import open_lazy, write_new_elements

    with contextlib.ExitStack() as opened:

        def read():
            with timing.phase("reading"):
                return opened.enter_context(open_lazy(input)) if lazy else read_h5ad(input)

        if distributed.requested() and int(os.environ.get("RANK", "0")) != 0:
            return train(read())  # under torchrun rank 0 alone writes the outputs
        with Outputs(inputs=(input,)) as outputs:
            out_tmp = outputs.add(output)
            model_tmp = outputs.add(model_out)
            table_tmp = outputs.add(metrics_table)
            result = train(read())
            with timing.phase("writing"):
                result.model.save(model_tmp, atomic=False)
                if lazy:
                    write_new_elements(input, out_tmp, result.adata, result.elements)
                else:
                    write_h5ad(result.adata, out_tmp, atomic=False)
                if table_tmp:
                    write_metrics_table(result.metrics, table_tmp, atomic=False)
            record_timings(out_tmp, result.adata, result.key, result.record)
            outputs.write_report(result.adata, result.key)
            outputs.commit()
    echo_written(result.elements, output, model_out)
    print_metrics(result.metrics, title=result.title)
    print_start(result.record)
    print_cautions(result.record)
    return result


def record_timings(path, adata, key: str, record: dict | None = None) -> dict:
    """Once the outputs are written: the run's wall time per phase, writing included, into
    ``uns[key]["timings"]`` of the written h5ad ``path`` (replacing the entry the tool stored
    before writing), of ``adata`` (for the report) and of ``record``."""
    import h5py
    from anndata.io import write_elem

    from .. import timing

    timings = timing.store(adata, key, record)
    if not timings or path is None:
        return timings
    part = timing.own_part(record)
    with h5py.File(path, "r+") as f:
        group = f.get(f"uns/{key}/{part}" if part else f"uns/{key}")
        if isinstance(group, h5py.Group):
            if "timings" in group:
                del group["timings"]
            write_elem(group, "timings", timings)
    return timings


def print_start(record: dict) -> None:
    """Under a classifier's table: did training beat its start (the logistic regression)?"""
    from ..report import start_lines

    for line in start_lines(record):
        click.echo(line.replace("→", "->"))


def print_cautions(record: dict) -> None:
    """What makes the printed metrics unreliable, and the cross-validation intervals."""
    for caution in record.get("cautions", []):
        click.echo(f"! {caution}")
    cv = record.get("cv") or {}
    for pair, differences in cv.get("difference", {}).items():
        for name, d in differences.items():
            click.echo(
                f"cv {pair} {name}: {d['mean']:+.3f} (95% interval {d['ci95_low']:+.3f} to "
                f"{d['ci95_high']:+.3f}, corrected resampled t; {d.get('n', cv['n_folds'])} of "
                f"{cv['n_folds']} folds)"
            )


def echo_written(written, output, model_out=None) -> None:
    click.echo(f"wrote {output}")
    for item in written:
        click.echo(f"  {item}")
    if model_out:
        click.echo(f"wrote model {model_out}")
