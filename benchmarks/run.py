"""anndata-rnn benchmark suite: the package against bare PyTorch, measured in the same run.

    python benchmarks/run.py [--quick | --tiny] [--device cpu|cuda] [--threads N] [--out DIR]

writes ``DIR/benchmark.json`` and ``DIR/benchmark.md``. Only the public API is used
(``anndata_rnn.tl.classify``, ``anndata_rnn.Model.save`` and the ``anndata-rnn predict``
command line, run as ``python -m anndata_rnn``), so the figures stay comparable across internal
changes. See ``benchmarks/README.md`` for what each figure means and exactly what is timed.

Exit status: 0 when every measurement ran (skipped ones included, with their reason), 1 when
one failed, 2 for bad arguments (e.g. ``--device cuda`` without a GPU).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _synthetic  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

HIDDEN = (128, 64)
CHUNK = 32  # genes per step (profile layout)
TRAIN_BATCH = 64  # the package's default batch size
PREDICT_BATCH = 512  # the package's default prediction batch size
GIB = 1024**3

#: sizes per mode
MODES = {
    "tiny": {
        "n_genes": 128,
        "train_cells": 240,
        "epochs": (1, 2),
        "predict_cells": [1_000],
        "bare_predict_cells": 1_024,
        "gemm_n": 256,
        "gemm_seconds": 0.2,
        "measure_startup": False,
    },
    "quick": {
        "n_genes": 2000,
        "train_cells": 2_000,
        "epochs": (1, 3),
        "train_rounds": 3,
        "predict_cells": [100_000],
        "predict_rounds": 2,
        "bare_predict_cells": 15_360,  # ~3 s per bare run: 1 s runs differed by 22 % (2026-12-05)
        "gemm_n": 2048,
        "gemm_seconds": 2.0,
    },
    "full": {
        "n_genes": 2000,
        "train_cells": 6_000,
        "epochs": (1, 5),
        "train_rounds": 2,
        "predict_cells": [100_000, 300_000, 1_000_000],
        "predict_rounds": 2,
        "bare_predict_cells": 30_720,
        "gemm_n": 2048,
        "gemm_seconds": 4.0,
    },
}


# --------------------------------------------------------------------------------------------
# helpers


#: mixed precision (--amp): the package's amp=True / --amp, and autocast in the bare loops (on CUDA
#: only: the package ignores amp on the CPU, so the bare loops do too)
AMP = False


def autocast(device) -> tuple:
    """(autocast context, grad scaler or None) of the bare loops, the package's dtype choice."""
    import contextlib

    device = torch.device(device)
    if not (AMP and device.type == "cuda"):
        return contextlib.nullcontext(), None
    from anndata_rnn.training import amp_dtype

    dtype = amp_dtype(True, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lstm_flops_per_sequence(n_inputs: int, hidden=HIDDEN, steps: int = 1) -> float:
    """Forward FLOPs of the stacked LSTM for one sequence: 2·4·(in+h)·h per layer and step."""
    total, size_in = 0.0, n_inputs
    for h in hidden:
        total += 2 * 4 * (size_in + h) * h * steps
        size_in = h
    return total


class BareLSTM(nn.Module):
    """The package's classifier architecture written by hand: stacked single-layer LSTMs
    (hidden 128, 64), dropout between layers and before a linear head on the last hidden state."""

    def __init__(self, n_inputs: int, n_classes: int, hidden=HIDDEN, dropout: float = 0.2):
        super().__init__()
        sizes = [n_inputs, *hidden]
        self.layers = nn.ModuleList(
            nn.LSTM(a, b, batch_first=True) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden[-1], n_classes)

    def forward(self, x):
        out = x
        for i, layer in enumerate(self.layers):
            out, (h, _) = layer(out)
            if i < len(self.layers) - 1:
                out = self.dropout(out)
        return self.head(self.dropout(h[-1]))


class torch_defaults:
    """Run a bare loop under torch's default flags.

    ``anndata_rnn`` turns on deterministic algorithms (and on CUDA turns cuDNN benchmarking off)
    when it seeds; a hand-written loop would not, so the bare loops restore the defaults and the
    package's settings are put back afterwards.
    """

    def __enter__(self):
        self.saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        )
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = False
        return self

    def __exit__(self, *exc):
        det, bench, cudnn_det = self.saved
        torch.use_deterministic_algorithms(det, warn_only=True)
        torch.backends.cudnn.benchmark = bench
        torch.backends.cudnn.deterministic = cudnn_det
        return False


# --------------------------------------------------------------------------------------------
# measurements


def measure_gemm(device: torch.device, n: int, seconds: float) -> dict:
    """fp32 ``torch.matmul`` of two n×n matrices, repeated for about ``seconds``."""
    a = torch.randn(n, n, device=device, dtype=torch.float32)
    b = torch.randn(n, n, device=device, dtype=torch.float32)
    for _ in range(3):
        torch.matmul(a, b)
    sync(device)
    reps, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        reps += 1
        if reps % 4 == 0 or device.type != "cuda":
            sync(device)
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - start
    out = {
        "n": n,
        "repeats": reps,
        "seconds": elapsed,
        "flops_per_s": 2.0 * n**3 * reps / elapsed,
    }
    if device.type == "cuda":
        out["tf32_allowed"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return out


def bare_train(
    n_sequences: int, steps: int, n_inputs: int, n_classes: int, epochs: int, device, seed=0
) -> dict:
    """Adam over preloaded tensors (on ``device``), batch 64, shuffled each epoch; timed over
    ``epochs`` after one untimed warm-up batch."""
    with torch_defaults():
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x = torch.randn(n_sequences, steps, n_inputs, generator=gen).to(device)
        y = torch.randint(n_classes, (n_sequences,), generator=gen).to(device)
        model = BareLSTM(n_inputs, n_classes).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        model.train()

        cast, scaler = autocast(device)

        def step(idx):
            optimizer.zero_grad()
            with cast:
                loss = loss_fn(model(x[idx]), y[idx])
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

        step(torch.arange(min(TRAIN_BATCH, n_sequences), device=device))  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(n_sequences, generator=gen).to(device)
            for i in range(0, n_sequences, TRAIN_BATCH):
                step(order[i : i + TRAIN_BATCH])
        sync(device)
        elapsed = time.perf_counter() - start
    return {"sequences": n_sequences * epochs, "seconds": elapsed}


def bare_predict(n_cells: int, steps: int, n_inputs: int, n_classes: int, device) -> dict:
    """``torch.no_grad`` inference in batches of 512 over preloaded dense tensors on ``device``
    (softmax, probabilities back on the host as numpy, as the package returns them)."""
    with torch_defaults():
        torch.manual_seed(0)
        x = torch.randn(n_cells, steps, n_inputs).to(device)
        model = BareLSTM(n_inputs, n_classes).to(device).eval()
        cast, _ = autocast(device)
        with torch.no_grad(), cast:
            model(x[:PREDICT_BATCH])  # warm-up
            sync(device)
            start = time.perf_counter()
            out = [
                torch.softmax(model(x[i : i + PREDICT_BATCH]), dim=-1).float().cpu().numpy()
                for i in range(0, n_cells, PREDICT_BATCH)
            ]
            sync(device)
            elapsed = time.perf_counter() - start
    assert sum(len(o) for o in out) == n_cells
    return {"cells": n_cells, "seconds": elapsed}


def bare_predict_same_heap(n_cells: int, steps: int, n_classes: int, env: dict, work_dir):
    """:func:`bare_predict` in a child process under the glibc heap thresholds that
    ``anndata-rnn predict`` sets for itself (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``,
    read once when the process starts). The bare loop above runs under glibc's defaults, as a
    hand-written loop would; this one shows how much of the command's rate is the heap setting.
    ``None`` when the child fails."""
    from anndata_rnn import heap as command_heap

    heap = {
        "MALLOC_MMAP_THRESHOLD_": str(command_heap.IN_MEMORY[command_heap.M_MMAP_THRESHOLD]),
        "MALLOC_TRIM_THRESHOLD_": str(command_heap.IN_MEMORY[command_heap.M_TRIM_THRESHOLD]),
    }
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import torch, run; "
        f"torch.set_num_threads({torch.get_num_threads()}); "
        f"print('bare:', json.dumps(run.bare_predict({n_cells}, {steps}, run.CHUNK, "
        f"{n_classes}, torch.device('cpu'))))"
    )
    log_path = Path(work_dir) / "bare_same_heap.log"
    child = run_child([sys.executable, "-c", code], {**env, **heap}, log_path, None)
    lines = [x for x in log_path.read_text().splitlines() if x.startswith("bare: ")]
    if child["returncode"] != 0 or not lines:
        return None
    measured = json.loads(lines[-1][len("bare: ") :])
    return {**measured, "cells_per_s": measured["cells"] / measured["seconds"], "env": heap}


class _LogTimes(logging.Handler):
    """Records (perf_counter, message) of every anndata_rnn log record."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[float, str]] = []

    def emit(self, record):
        self.records.append((time.perf_counter(), record.getMessage()))


def training_seconds_from_log(records: list[tuple[float, str]], epochs: int) -> float | None:
    """The main network's training loop, validation included: from the package's debug record
    ``"<description>: training loop starts"`` to its summary (``"... N epochs ..."`` or
    ``"S steps (batch B, P per epoch)"`` with S = epochs x P, logged when the loop ends). Without
    the start record (older versions), from the record before the summary: the loop plus what
    preceded it (preprocessing, the baselines, the start-loss pass). ``None`` when the log has no
    such summary. The linear path alone logs its own loop later."""
    by_epochs = re.compile(rf"\b{epochs} epochs?\b")
    by_steps = re.compile(r"^classify \(.+\): (\d+) steps \(batch \d+, (\d+) per epoch\)")
    for i, (stamp, message) in enumerate(records):
        steps = by_steps.search(message)
        whole = steps is not None and int(steps[1]) == epochs * int(steps[2])
        if i > 0 and (whole or (steps is None and by_epochs.search(message))):
            description = message.split(":", 1)[0]
            for before, text in reversed(records[:i]):
                if text.startswith(f"{description}: training loop starts"):
                    return stamp - before
            return stamp - records[i - 1][0]
    return None


def package_classify(adata, epochs: int, device: str, seed: int = 0):
    """``tl.classify`` on the profile layout with early stopping effectively off
    (``patience=epochs``, ``min_steps=0``) and without the linear path (the bare loop's LSTM);
    everything else at its defaults. The package also trains the linear path alone (its
    ablation); the log timing isolates the main network's loop.

    Returns ``(model, wall seconds, training seconds from the package's log or None)``."""
    import anndata_rnn as ar

    logger = logging.getLogger("anndata_rnn")
    handler, level = _LogTimes(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the training loop's start record is a debug one
    try:
        start = time.perf_counter()
        model = ar.tl.classify(
            adata,
            label_key="label",
            layout="profile",
            chunk_size=CHUNK,
            hidden=HIDDEN,
            batch_size=TRAIN_BATCH,
            max_epochs=epochs,
            patience=epochs,
            min_steps=0,  # exactly `epochs` passes, as the bare loop
            linear_path=False,  # the same LSTM as the bare loop
            seed=seed,
            device=device,
            amp=AMP,
            quiet=True,
            overwrite=True,
        )
        wall = time.perf_counter() - start
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return model, wall, training_seconds_from_log(handler.records, epochs)


def logistic_baseline(adata, seed: int = 0) -> dict:
    """Logistic regression timed on its own, on the package's split (``obs["rnn_split"]``) and
    on inputs preprocessed like the package's profile inputs: normalize_total to the training
    median + log1p when the package normalized, then per-gene standardization with training
    statistics, flattened (one feature per gene)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    x = adata.X.toarray().astype(np.float64)
    split = adata.obs["rnn_split"].to_numpy()
    y = adata.obs["label"].cat.codes.to_numpy()
    train, test = split == "train", split == "test"
    if bool(adata.uns["rnn"].get("preprocessing", {}).get("normalized", True)):
        totals = x.sum(axis=1, keepdims=True)
        x = np.log1p(x / np.maximum(totals, 1) * np.median(totals[train]))
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    model = LogisticRegression(max_iter=1000, random_state=seed)
    start = time.perf_counter()
    model.fit(x[train], y[train])
    seconds = time.perf_counter() - start
    proba = model.predict_proba(x[test])
    pred = proba.argmax(axis=1)
    return {
        "fit_seconds": seconds,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "accuracy": float(accuracy_score(y[test], pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y[test], pred)),
        "f1_macro": float(f1_score(y[test], pred, average="macro")),
        "auroc": float(roc_auc_score(y[test], proba, multi_class="ovr", average="macro")),
    }


def _rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_child(cmd: list[str], env: dict, log_path: Path, rss_cap: float | None) -> dict:
    """Run ``cmd``; wall time, exit code and the child's own peak RSS, system time and minor
    page faults (``os.wait4``'s rusage, this child only). Killed when its RSS exceeds
    ``rss_cap`` bytes."""
    killed = threading.Event()
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

        def watch():
            while proc.returncode is None and not killed.is_set():
                rss = _rss_bytes(proc.pid)
                if rss is None:
                    return
                if rss_cap and rss > rss_cap:
                    killed.set()
                    os.kill(proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - start
    tail = log_path.read_text(errors="replace")[-2000:]
    return {
        "returncode": proc.returncode,
        "seconds": elapsed,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # kilobytes on Linux
        # kernel time and minor page faults (memory mapped and zero-filled afresh)
        "system_seconds": usage.ru_stime,
        "minor_page_faults": usage.ru_minflt,
        "killed_at_rss_cap": killed.is_set(),
        "log_tail": tail,
    }


# --------------------------------------------------------------------------------------------
# the run


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def environment(device: torch.device, threads: int) -> dict:
    import anndata_rnn

    cpu_model = None
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                None,
            )
    except OSError:
        pass
    env = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "anndata": _version("anndata"),
        "anndata_rnn": getattr(anndata_rnn, "__version__", None),
        "anndata_rnn_path": str(Path(anndata_rnn.__file__).parent),
        "python": platform.python_version(),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        env["git_commit"] = subprocess.run(
            ["git", "-C", env["anndata_rnn_path"], "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        env["git_commit"] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def child_env() -> dict:
    """The environment of the CLI children: this process's anndata_rnn first on the path."""
    import anndata_rnn

    env = dict(os.environ)
    root = str(Path(anndata_rnn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run(
    mode: str,
    device_name: str,
    out: Path,
    *,
    threads: int | None,
    work: Path | None,
    rss_cap_gb: float,
    max_extrapolated_gb: float,
    keep_data: bool,
) -> dict:
    sizes = MODES[mode]
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    device = torch.device(device_name)
    out.mkdir(parents=True, exist_ok=True)
    work_dir = Path(work) if work else Path(tempfile.mkdtemp(prefix="anndata_rnn_bench_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = _synthetic.Spec(n_genes=sizes["n_genes"])
    steps = math.ceil(spec.n_genes / CHUNK)
    fwd_flops = lstm_flops_per_sequence(CHUNK, HIDDEN, steps)
    result: dict = {
        "mode": mode,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": {**environment(device, threads), "amp": AMP},
        "setup": {
            "layout": "profile",
            "n_genes": spec.n_genes,
            "density": spec.density,
            "n_classes": spec.n_classes,
            "chunk_size": CHUNK,
            "steps": steps,
            "n_inputs": CHUNK,
            "hidden": list(HIDDEN),
            "train_batch_size": TRAIN_BATCH,
            "predict_batch_size": PREDICT_BATCH,
            "forward_flops_per_sequence": fwd_flops,
        },
        "errors": [],
        "skipped": [],
    }

    def failed(what: str, exc: BaseException | str) -> None:
        message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        print(f"FAILED {what}: {message}", file=sys.stderr)
        if not isinstance(exc, str):
            traceback.print_exc()
        result["errors"].append({"what": what, "error": message})

    print(f"[bench] mode {mode}, device {device}, {threads} threads, work dir {work_dir}")

    # 1. GEMM rate
    try:
        result["gemm"] = measure_gemm(device, sizes["gemm_n"], sizes["gemm_seconds"])
        print(f"[bench] fp32 GEMM {result['gemm']['flops_per_s'] / 1e9:.1f} GFLOP/s")
    except Exception as exc:  # noqa: BLE001
        failed("gemm", exc)

    # 2. training throughput and the RNN against the baseline
    model_path = work_dir / "model.h5"
    try:
        result["train"] = train_section(sizes, spec, steps, device, model_path)
    except Exception as exc:  # noqa: BLE001
        failed("train", exc)

    # 3. prediction throughput and memory
    if model_path.exists():
        try:
            result["predict"] = predict_section(
                sizes,
                spec,
                steps,
                device,
                threads,
                model_path,
                work_dir,
                result,
                rss_cap_gb=rss_cap_gb,
                max_extrapolated_gb=max_extrapolated_gb,
            )
        except Exception as exc:  # noqa: BLE001
            failed("predict", exc)
    else:
        result["skipped"].append({"what": "predict", "reason": "no model (training failed)"})

    # 4. achieved LSTM FLOP/s as a fraction of the GEMM rate
    summarize(result, fwd_flops)
    if not keep_data and not work:
        shutil.rmtree(work_dir, ignore_errors=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2, default=_json_default))
    (out / "benchmark.md").write_text(markdown(result))
    return result


def train_section(sizes, spec, steps, device, model_path: Path) -> dict:
    e1, e2 = sizes["epochs"]
    adata = _synthetic.make_adata(sizes["train_cells"], spec)
    # warm-up: the first call in a process pays one-time imports and allocations
    package_classify(adata[: min(200, adata.n_obs)].copy(), 1, device.type)  # (model, s, s)
    print(f"[bench] classify on {adata.n_obs} cells, {e1} and {e2} epochs")
    _, t1, _ = package_classify(adata, e1, device.type)
    n_train = int((adata.obs["rnn_split"] == "train").sum())
    n_classes = len(adata.obs["label"].cat.categories)
    half = (e2 - e1) / 2
    # rounds of (bare, package, bare): a change of the machine's speed during a round hits both
    # sides, and the rounds pool several seconds of each (one round of the quick run's ~4 s
    # windows gave 0.78–0.87 from run to run on the idle machine)
    bare_runs, rounds = [], []
    for _ in range(sizes.get("train_rounds", 1)):
        before = bare_train(n_train, steps, CHUNK, n_classes, max(1, math.floor(half)), device)
        model, t2, logged = package_classify(adata, e2, device.type)
        after = bare_train(n_train, steps, CHUNK, n_classes, max(1, math.ceil(half)), device)
        history = adata.uns["rnn"]["history"]
        epochs_run = int(history["epochs_run"])
        if epochs_run != e2:
            raise RuntimeError(f"classify stopped after {epochs_run} epochs, not {e2}")
        bare_runs += [before, after]
        pair = (before["sequences"] + after["sequences"]) / (before["seconds"] + after["seconds"])
        rounds.append(
            {
                "package_seconds": t2,
                "package_training_seconds_logged": logged,
                "bare_sequences_per_s": pair,
                "train_ratio": n_train * e2 / logged / pair if logged else None,
            }
        )
    model.save(model_path)
    # pooled over the rounds: sequences over seconds, on each side
    t2 = sum(r["package_seconds"] for r in rounds) / len(rounds)
    logs = [r["package_training_seconds_logged"] for r in rounds]
    logged = sum(logs) / len(logs) if all(logs) else None
    diff_rate = n_train * (e2 - e1) / (t2 - t1) if t2 > t1 else float("nan")
    log_rate = n_train * e2 / logged if logged else None
    # the log isolates the training loop of one call; the difference of two calls is the
    # fallback (noisy on a busy machine: the calls' fixed costs must cancel)
    package_rate, method = (log_rate, "log") if log_rate else (diff_rate, "difference")
    bare_seqs = sum(r["sequences"] for r in bare_runs)
    bare_seconds = sum(r["seconds"] for r in bare_runs)
    bare_rate = bare_seqs / bare_seconds
    metrics = adata.uns["rnn"]["metrics"]
    keep = ("accuracy", "balanced_accuracy", "f1_macro", "auroc")
    lr = logistic_baseline(adata)
    return {
        "n_cells": adata.n_obs,
        "n_train_sequences": n_train,
        "epochs": [e1, e2],
        "package_seconds": {str(e1): t1, str(e2): t2},
        "package_sequences_per_s": package_rate,
        "package_timing": method,
        "package_training_seconds_logged": logged,
        "package_sequences_per_s_log": log_rate,
        "package_sequences_per_s_difference": diff_rate,
        "package_end_to_end_sequences_per_s": n_train * e2 / t2,
        # where the E2 call's wall time went, as the package records it (uns["rnn"]["timings"];
        # "training" holds both fits: the model and the linear path alone)
        "package_timings": {k: float(v) for k, v in adata.uns["rnn"].get("timings", {}).items()},
        "bare_runs": bare_runs,
        "bare_sequences_per_s": bare_rate,
        "rounds": rounds,
        "train_ratio": package_rate / bare_rate,
        "train_ratio_end_to_end": n_train * e2 / t2 / bare_rate,
        "rnn_vs_baseline": {
            "rnn": {
                **{k: float(metrics["rnn"][k]) for k in keep},
                "epochs": e2,
                "train_seconds": e2 * n_train / package_rate,
                "classify_seconds": t2,
            },
            "baseline_package": {k: float(metrics["baseline"][k]) for k in keep},
            "baseline_sklearn": lr,
        },
    }


def predict_section(
    sizes,
    spec,
    steps,
    device,
    threads,
    model_path,
    work_dir,
    result,
    *,
    rss_cap_gb: float,
    max_extrapolated_gb: float,
) -> dict:
    n_classes = spec.n_classes
    env = child_env()
    # the cost of starting the command (interpreter + imports), for reading the figures
    startup = None
    if sizes.get("measure_startup", True):
        startup = run_child(
            [sys.executable, "-c", "import anndata_rnn, anndata_rnn.cli"],
            env,
            work_dir / "startup.log",
            None,
        )["seconds"]
    bare_runs = [bare_predict(sizes["bare_predict_cells"], steps, CHUNK, n_classes, device)]
    runs = []
    for n_cells in sizes["predict_cells"]:
        reason = _skip_reason(runs, n_cells, max_extrapolated_gb)
        if reason:
            result["skipped"].append({"what": f"predict {n_cells} cells", "reason": reason})
            runs.append({"cells": n_cells, "skipped": reason})
            print(f"[bench] skip predict on {n_cells} cells: {reason}")
            continue
        data = work_dir / f"cells_{n_cells}.h5ad"
        output = work_dir / f"predicted_{n_cells}.h5ad"
        output.unlink(missing_ok=True)
        start = time.perf_counter()
        info = _synthetic.write_h5ad(data, n_cells, spec)
        generated = time.perf_counter() - start
        print(f"[bench] predict on {n_cells} cells ({info['bytes'] / GIB:.2f} GiB file)")
        cmd = [
            sys.executable, "-m", "anndata_rnn", "predict", str(data),
            "--model", str(model_path), "--output", str(output),
            "--device", device.type, "--threads", str(threads), "--quiet",
            *(["--amp"] if AMP else []),
        ]  # fmt: skip
        # the size that gives predict_ratio runs `predict_rounds` times, with a bare run between
        # two commands: pooled, as training's rounds (a change of speed hits both sides)
        repeats = sizes.get("predict_rounds", 1) if n_cells == sizes["predict_cells"][0] else 1
        children = []
        for repeat in range(repeats):
            if repeat:
                bare_runs.append(
                    bare_predict(sizes["bare_predict_cells"], steps, CHUNK, n_classes, device)
                )
            output.unlink(missing_ok=True)
            child = run_child(cmd, env, work_dir / f"predict_{n_cells}.log", rss_cap_gb * GIB)
            children.append({k: v for k, v in child.items() if k != "log_tail"})
            if child["returncode"] != 0:
                break
        entry = {
            "cells": n_cells,
            "file_bytes": info["bytes"],
            "nnz": info["nnz"],
            "generate_seconds": generated,
            **{k: v for k, v in child.items() if k != "log_tail"},
            "command": " ".join(cmd[1:]),
        }
        if len(children) > 1 and child["returncode"] == 0:
            entry.update(
                repeats=children,
                seconds=sum(c["seconds"] for c in children) / len(children),
                peak_rss_bytes=max(c["peak_rss_bytes"] for c in children),
                system_seconds=sum(c["system_seconds"] for c in children) / len(children),
                minor_page_faults=sum(c["minor_page_faults"] for c in children) // len(children),
            )
            child = {
                **child,
                "seconds": entry["seconds"],
                "peak_rss_bytes": entry["peak_rss_bytes"],
            }
        if child["returncode"] == 0 and output.exists():
            entry["cells_per_s"] = n_cells / child["seconds"]
            entry["timings"] = recorded_timings(output)
            print(
                f"[bench]   {child['seconds']:.1f} s, {entry['cells_per_s']:.0f} cells/s, "
                f"peak RSS {child['peak_rss_bytes'] / GIB:.2f} GiB"
            )
        else:
            why = "killed at the RSS cap" if child["killed_at_rss_cap"] else "failed"
            entry["error"] = f"{why} (exit {child['returncode']}): {child['log_tail'][-500:]}"
            result["errors"].append({"what": f"predict {n_cells} cells", "error": entry["error"]})
        runs.append(entry)
        data.unlink(missing_ok=True)
        output.unlink(missing_ok=True)
    bare_runs.append(bare_predict(sizes["bare_predict_cells"], steps, CHUNK, n_classes, device))
    bare_rate = sum(r["cells"] for r in bare_runs) / sum(r["seconds"] for r in bare_runs)
    same_heap = None
    if device.type == "cpu" and sys.platform.startswith("linux"):
        same_heap = bare_predict_same_heap(
            sizes["bare_predict_cells"], steps, n_classes, env, work_dir
        )
    out = {
        "startup_seconds": startup,
        "bare_runs": bare_runs,
        "bare_cells_per_s": bare_rate,
        "bare_same_heap": same_heap,
        "runs": runs,
    }
    measured = [r for r in runs if "cells_per_s" in r]
    if measured:
        first = measured[0]  # the smallest size: 100k cells outside --tiny
        out["predict_ratio_cells"] = first["cells"]
        out["predict_ratio"] = first["cells_per_s"] / bare_rate
        if same_heap and same_heap.get("cells_per_s"):
            out["predict_ratio_same_heap"] = first["cells_per_s"] / same_heap["cells_per_s"]
        out["predict_ratio_by_cells"] = {
            str(r["cells"]): r["cells_per_s"] / bare_rate for r in measured
        }
    return out


def recorded_timings(path: Path, key: str = "rnn") -> dict:
    """The wall time per phase the command recorded in its output (``uns[key]["timings"]``;
    empty for versions that record none)."""
    import h5py

    with h5py.File(path, "r") as f:
        group = f.get(f"uns/{key}/timings")
        if not isinstance(group, h5py.Group):
            return {}
        return {name: float(group[name][()]) for name in group}


def _skip_reason(runs: list[dict], n_cells: int, max_gb: float) -> str | None:
    """1M cells only when the RSS of the two largest runs extrapolates (linearly) below
    ``max_gb``: a predict that loads the whole file would otherwise exhaust a shared machine."""
    done = [r for r in runs if r.get("peak_rss_bytes") and r.get("returncode") == 0]
    if n_cells < 1_000_000 or len(done) < 2:
        return None
    (c0, m0), (c1, m1) = [(r["cells"], r["peak_rss_bytes"]) for r in done[-2:]]
    predicted = m1 + (m1 - m0) / (c1 - c0) * (n_cells - c1)
    if predicted / GIB > max_gb:
        return (
            f"peak RSS extrapolates to {predicted / GIB:.1f} GiB at {n_cells} cells from "
            f"{m0 / GIB:.2f} GiB at {c0} and {m1 / GIB:.2f} GiB at {c1} (limit "
            f"{max_gb:g} GiB, --max-extrapolated-gb)"
        )
    return None


def summarize(result: dict, fwd_flops: float) -> None:
    gemm = result.get("gemm", {}).get("flops_per_s")
    lstm = {}
    train = result.get("train", {})
    predict = result.get("predict", {})
    rates = {
        # training: forward + backward ~ 3 × forward
        "train_package": (train.get("package_sequences_per_s"), 3),
        "train_bare": (train.get("bare_sequences_per_s"), 3),
        "predict_bare": (predict.get("bare_cells_per_s"), 1),
    }
    measured = [r for r in predict.get("runs", []) if "cells_per_s" in r]
    if measured:
        rates["predict_package"] = (measured[0]["cells_per_s"], 1)
    for name, (rate, factor) in rates.items():
        if rate is None or not math.isfinite(rate):
            continue
        flops = rate * fwd_flops * factor
        lstm[name] = {"flops_per_s": flops, "fraction_of_gemm": flops / gemm if gemm else None}
    result["lstm_flops"] = lstm
    result["summary"] = {
        "train_ratio": train.get("train_ratio"),
        "predict_ratio": predict.get("predict_ratio"),
        "predict_ratio_same_heap": predict.get("predict_ratio_same_heap"),
        "gemm_gflops": gemm / 1e9 if gemm else None,
        "lstm_train_fraction_of_gemm": lstm.get("train_bare", {}).get("fraction_of_gemm"),
        "lstm_train_package_fraction_of_gemm": lstm.get("train_package", {}).get(
            "fraction_of_gemm"
        ),
        "peak_rss_gib": {
            str(r["cells"]): r["peak_rss_bytes"] / GIB
            for r in predict.get("runs", [])
            if r.get("peak_rss_bytes") and r.get("returncode") == 0
        },
    }


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _fmt(value, spec=".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def _timings_table(train: dict, predict: dict) -> list[str]:
    """Where the wall time went, as the package recorded it (``uns["rnn"]["timings"]``)."""
    rows = []
    if train.get("package_timings"):
        rows.append(
            (f"classify, {train['epochs'][1]} epochs (in process)", train["package_timings"])
        )
    for r in predict.get("runs", []):
        if r.get("timings"):
            rows.append((f"predict, {r['cells']:,} cells", r["timings"]))
    if not rows:
        return []
    phases = [p for p in ("reading", "preprocessing", "baselines", "training", "inference",
                          "writing", "other", "total") if any(p in t for _, t in rows)]  # fmt: skip
    lines = [
        "",
        'Where the time went (seconds, recorded by the package in `uns["rnn"]["timings"]`):',
        "",
    ]
    lines.append("| run | " + " | ".join(phases) + " |")
    lines.append("|---|" + "---|" * len(phases))
    for name, t in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(t.get(p), ".1f") for p in phases) + " |")
    return lines


def markdown(result: dict) -> str:
    env, setup = result["environment"], result["setup"]
    train, predict = result.get("train", {}), result.get("predict", {})
    gemm, lstm = result.get("gemm", {}), result.get("lstm_flops", {})
    lines = [
        f"# anndata-rnn benchmark ({result['mode']})",
        "",
        f"`{result['command']}` — {env['date']}, device {env['device']}"
        + (f" ({env.get('gpu')})" if env.get("gpu") else "")
        + f", {env['torch_threads']} torch threads, {env['cpu_count']} CPUs"
        + (f" ({env['cpu_model']})" if env.get("cpu_model") else "")
        + f", load average {_fmt((env.get('load_average') or [None])[0], '.2f')} at start"
        + f", torch {env['torch']}, anndata-rnn {env['anndata_rnn']}"
        + (f" ({env['git_commit']})" if env.get("git_commit") else ""),
        "",
        f"Data: synthetic counts, {setup['n_genes']} genes, {setup['density']:.0%} non-zero, "
        f"{setup['n_classes']} classes; profile layout, {setup['chunk_size']} genes per step "
        f"({setup['steps']} steps); LSTM {'→'.join(map(str, setup['hidden']))}.",
        "",
        "| figure | anndata-rnn | bare PyTorch | ratio |",
        "|---|---|---|---|",
    ]
    if train:
        lines.append(
            f"| training, sequences/s ({train['n_train_sequences']} sequences, batch "
            f"{setup['train_batch_size']}, {train['epochs'][1]} epochs; "
            + {
                "log": "training loop timed from the package's log",
                "difference": "difference of "
                f"{train['epochs'][0]}- and {train['epochs'][1]}-epoch calls",
            }[train["package_timing"]]
            + ") | "
            f"{_fmt(train['package_sequences_per_s'], '.0f')} | "
            f"{_fmt(train['bare_sequences_per_s'], '.0f')} | "
            f"**{_fmt(train['train_ratio'], '.2f')}** (`train_ratio`) |"
        )
        if train["package_timing"] == "log":
            lines.append(
                f"| training, difference of {train['epochs'][0]}- and {train['epochs'][1]}-epoch "
                f"calls (cross-check) | {_fmt(train['package_sequences_per_s_difference'], '.0f')}"
                f" | {_fmt(train['bare_sequences_per_s'], '.0f')} | "
                f"{_fmt(train['package_sequences_per_s_difference'] / train['bare_sequences_per_s'], '.2f')} |"
            )
        lines.append(
            f"| training end to end (whole `tl.classify` of {train['epochs'][1]} epochs) | "
            f"{_fmt(train['package_end_to_end_sequences_per_s'], '.0f')} | "
            f"{_fmt(train['bare_sequences_per_s'], '.0f')} | "
            f"{_fmt(train['train_ratio_end_to_end'], '.2f')} |"
        )
    for r in predict.get("runs", []):
        if "cells_per_s" in r:
            ratio = r["cells_per_s"] / predict["bare_cells_per_s"]
            key = " (`predict_ratio`)" if r["cells"] == predict.get("predict_ratio_cells") else ""
            lines.append(
                f"| prediction, cells/s (`anndata-rnn predict`, {r['cells']:,} cells, end to "
                f"end) | {_fmt(r['cells_per_s'], '.0f')} | "
                f"{_fmt(predict['bare_cells_per_s'], '.0f')} | **{ratio:.2f}**{key} |"
            )
    same_heap = predict.get("bare_same_heap")
    if same_heap and predict.get("predict_ratio_same_heap"):
        first = next(r for r in predict["runs"] if r["cells"] == predict["predict_ratio_cells"])
        lines.append(
            f"| prediction, {first['cells']:,} cells, against the bare loop under the command's "
            f"heap thresholds (`predict_ratio_same_heap`) | {_fmt(first['cells_per_s'], '.0f')} | "
            f"{_fmt(same_heap['cells_per_s'], '.0f')} | "
            f"{predict['predict_ratio_same_heap']:.2f} |"
        )
    load = (env.get("load_average") or [0])[0]
    if env.get("cpu_count") and load > env["cpu_count"] and env["device"] == "cpu":
        lines += [
            "",
            f"**Busy machine**: load average {load:.1f} on {env['cpu_count']} CPUs at the start; "
            "absolute figures are low and noisy (with more than one torch thread, OpenMP threads "
            "wait on each other); the ratios, measured side by side, are the figures to read.",
        ]
    lines += [
        "",
        "| predict: cells | wall time | peak RSS | system time | minor page faults | file |",
        "|---|---|---|---|---|---|",
    ]
    for r in predict.get("runs", []):
        if "skipped" in r:
            lines.append(f"| {r['cells']:,} | skipped: {r['skipped']} | | | | |")
        elif "error" in r:
            lines.append(f"| {r['cells']:,} | failed: {r['error'][:120]} | | | | |")
        else:
            system = r.get("system_seconds")
            faults = r.get("minor_page_faults")
            lines.append(
                f"| {r['cells']:,} | {r['seconds']:.1f} s | {r['peak_rss_bytes'] / GIB:.2f} GiB "
                f"| {'–' if system is None else f'{system:.1f} s'} "
                f"| {'–' if faults is None else f'{faults:,}'} | {r['file_bytes'] / GIB:.2f} GiB |"
            )
    lines += _timings_table(train, predict)
    if predict.get("startup_seconds") is not None:
        lines.append(
            f"\nStarting the command (interpreter + imports) takes "
            f"{predict['startup_seconds']:.1f} s of each prediction's wall time."
        )
    if train:
        rv = train["rnn_vs_baseline"]
        rnn, pkg, skl = rv["rnn"], rv["baseline_package"], rv["baseline_sklearn"]
        lines += [
            "",
            f"RNN vs logistic regression (test split, {skl['n_test']} cells; RNN trained "
            f"{rnn['epochs']} epochs on {skl['n_train']} cells):",
            "",
            "The RNN here is the throughput configuration (the bare loop's LSTM: no linear path, "
            "which starts the product's model at the logistic regression; a fixed number of "
            "epochs, no early stopping): its accuracy says nothing of `classify`'s defaults, "
            "which the accuracy benchmarks (`benchmarks/accuracy/`) measure.",
            "",
            "| | train time | accuracy | balanced acc. | macro F1 | AUROC |",
            "|---|---|---|---|---|---|",
            f"| RNN (anndata-rnn) | ≈{rnn['train_seconds']:.1f} s (epochs × time per epoch; "
            f"whole `tl.classify` {rnn['classify_seconds']:.1f} s) | {rnn['accuracy']:.3f} | "
            f"{rnn['balanced_accuracy']:.3f} | {rnn['f1_macro']:.3f} | {rnn['auroc']:.3f} |",
            f"| logistic regression (anndata-rnn's baseline) | – | {pkg['accuracy']:.3f} | "
            f"{pkg['balanced_accuracy']:.3f} | {pkg['f1_macro']:.3f} | {pkg['auroc']:.3f} |",
            f"| logistic regression (sklearn, timed alone) | {skl['fit_seconds']:.1f} s | "
            f"{skl['accuracy']:.3f} | {skl['balanced_accuracy']:.3f} | {skl['f1_macro']:.3f} | "
            f"{skl['auroc']:.3f} |",
        ]
    if gemm:
        lines += [
            "",
            "| compute | GFLOP/s | fraction of GEMM |",
            "|---|---|---|",
            f"| fp32 GEMM ({gemm['n']}×{gemm['n']} matmul) | {gemm['flops_per_s'] / 1e9:.1f} | 1 |",
        ]
        names = {
            "train_bare": "LSTM training, bare PyTorch",
            "train_package": "LSTM training, anndata-rnn",
            "predict_bare": "LSTM inference, bare PyTorch",
            "predict_package": "LSTM inference, `anndata-rnn predict` end to end",
        }
        for key, name in names.items():
            if key in lstm:
                lines.append(
                    f"| {name} | {lstm[key]['flops_per_s'] / 1e9:.1f} | "
                    f"{_fmt(lstm[key]['fraction_of_gemm'], '.2f')} |"
                )
    for s in result["skipped"]:
        lines.append(f"\nSkipped: {s['what']}: {s['reason']}")
    for e in result["errors"]:
        lines.append(f"\n**Failed**: {e['what']}: {e['error']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="100k cells for prediction only")
    size.add_argument("--tiny", action="store_true", help="seconds: checks the script works")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: the package's --amp and autocast in the bare loops (CUDA only)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmark_results"))
    parser.add_argument("--work-dir", type=Path, default=None, help="for the synthetic files")
    parser.add_argument("--keep-data", action="store_true")
    parser.add_argument(
        "--rss-cap-gb", type=float, default=12.0, help="kill a predict child above this RSS"
    )
    parser.add_argument(
        "--max-extrapolated-gb",
        type=float,
        default=8.0,
        help="skip 1M cells when the RSS extrapolated from the smaller runs exceeds this",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    global AMP
    AMP = args.amp
    result = run(
        mode,
        args.device,
        args.out,
        threads=args.threads,
        work=args.work_dir,
        rss_cap_gb=args.rss_cap_gb,
        max_extrapolated_gb=args.max_extrapolated_gb,
        keep_data=args.keep_data,
    )
    print((args.out / "benchmark.md").read_text())
    print(f"[bench] results: {args.out / 'benchmark.json'} and {args.out / 'benchmark.md'}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
