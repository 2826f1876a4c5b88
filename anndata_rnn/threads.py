"""How many CPU threads torch uses (intra-op), chosen once per command.

Order (the first that is set wins):

1. ``--threads N`` (the command line) — as given;
2. ``OMP_NUM_THREADS`` — as given (what torch itself would use);
3. ``GALAXY_SLOTS`` then ``SLURM_CPUS_PER_TASK`` — the slots a job manager granted, at most the
   CPUs the process may run on;
4. otherwise the CPUs the process may run on (``os.sched_getaffinity(0)``: a ``taskset`` or a
   container's cpuset), at most :data:`MAX_DEFAULT_THREADS`.

The choice is logged (one line) and recorded in ``uns[key]["threads"]``. The thread count is a
deterministic function of these settings, never of the machine's load: two runs with the same
settings give the same numbers (a thread count can change float summation order).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("anndata_rnn")

#: upper bound of the default (no setting): the recurrent models this package trains are small
#: (63 steps of 128 × 512 matmuls); more threads than this mostly wait at barriers
MAX_DEFAULT_THREADS = 4
#: environment variables of job managers granting a number of CPUs, in the order they are read
SLOT_VARIABLES = ("GALAXY_SLOTS", "SLURM_CPUS_PER_TASK")

#: the OpenMP wait policy the command line sets (when the caller set neither it nor a spin count)
CLI_WAIT_POLICY = "PASSIVE"
#: where the command line's wait policy came from, set by :func:`set_cli_wait_policy`
WAIT_POLICY: dict = {}

#: what :func:`apply` chose in this process: {"intra_op": n, "chosen_by": why} (empty before)
CHOSEN: dict = {}


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number >= 1 else None


def choose(
    explicit: int | None = None,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
) -> tuple[int, str]:
    """(threads, why) for this process; see the module docstring for the order."""
    environ = os.environ if environ is None else environ
    cpus = available_cpus() if cpus is None else max(1, int(cpus))
    if explicit:
        return int(explicit), "--threads"
    omp = _positive_int(environ.get("OMP_NUM_THREADS"))
    if omp is not None:
        return omp, f"OMP_NUM_THREADS={omp}"
    for name in SLOT_VARIABLES:
        slots = _positive_int(environ.get(name))
        if slots is not None:
            if slots > cpus:
                return cpus, f"{name}={slots}, capped at the {cpus} CPUs this process may use"
            return slots, f"{name}={slots}"
    n = min(cpus, MAX_DEFAULT_THREADS)
    why = f"default: {cpus} CPUs this process may use"
    if n < cpus:
        why += f", at most {MAX_DEFAULT_THREADS} by default"
    return n, why


def apply(explicit: int | None = None) -> tuple[int, str]:
    """Choose and set torch's intra-op threads; :func:`log_choice` logs them once the run has
    read its input (an input error stays the command's only line)."""
    import torch

    n, why = choose(explicit)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    CHOSEN.clear()
    CHOSEN.update({"intra_op": n, "chosen_by": why})
    _PENDING[:] = [True]
    return n, why


#: whether the choice of :func:`apply` is still to be logged
_PENDING: list[bool] = []


def log_choice() -> None:
    """Log what :func:`apply` chose, once (one line); nothing outside the command line."""
    if not _PENDING or not CHOSEN:
        return
    _PENDING.clear()
    log.info(
        "torch threads: %d (%s; --threads to change); OpenMP wait policy %s",
        CHOSEN["intra_op"],
        CHOSEN["chosen_by"],
        wait_policy()["omp_wait_policy"],
    )


def record() -> dict:
    """What ``uns[key]["threads"]`` holds: the intra-op threads in use and why."""
    import torch

    n = torch.get_num_threads()
    if CHOSEN.get("intra_op") == n:
        return {**CHOSEN, **wait_policy()}
    chosen = {"intra_op": n, "chosen_by": "torch (set by the caller or torch's default)"}
    return {**chosen, **wait_policy()}


def is_command_line(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``anndata-rnn`` command (the console script, ``python -m
    anndata_rnn`` or torchrun's ``-m anndata_rnn`` workers), not a Python session."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and Path(argv[0]).name == "anndata-rnn":
        return True
    return any(
        a == "-m" and b == "anndata_rnn" for a, b in zip(orig_argv, orig_argv[1:], strict=False)
    )


def set_cli_wait_policy(environ: dict | None = None, command_line: bool | None = None) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` for the command line, before torch loads OpenMP.

    libgomp (torch's OpenMP) reads its wait policy once, when it is loaded: by default a thread
    that reaches a barrier spins (up to 300,000 iterations) before sleeping. An LSTM step ends
    at such a barrier; when another job holds the core of the thread being waited for, the
    waiting thread spins through its time slice. Measured on the shared 2-core machine (load
    ~8; 2 threads, training steps of the default 128→64 LSTM, two processes at once): 2.4–11.7 s
    per step spinning, 0.22 s passive, 0.53 s with one thread each. Only in a command-line
    process, only when torch is not loaded yet and only when the caller set neither
    ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT`` (either restores any other behaviour).
    """
    environ = os.environ if environ is None else environ
    command_line = is_command_line() if command_line is None else command_line
    WAIT_POLICY.clear()
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        WAIT_POLICY["omp_wait_policy_set_by"] = "environment"
        return
    if not command_line or "torch" in sys.modules:
        return
    environ["OMP_WAIT_POLICY"] = CLI_WAIT_POLICY
    WAIT_POLICY["omp_wait_policy_set_by"] = "anndata-rnn (command line default)"


def wait_policy(environ: Mapping[str, str] | None = None) -> dict:
    """The OpenMP wait policy in force (as the environment says) and who set it."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" in environ:
        policy = environ["OMP_WAIT_POLICY"]
    elif "GOMP_SPINCOUNT" in environ:
        policy = f"GOMP_SPINCOUNT={environ['GOMP_SPINCOUNT']}"
    else:
        policy = "OpenMP default (spin, then sleep)"
    set_by = WAIT_POLICY.get("omp_wait_policy_set_by")
    if set_by is None:
        set_by = "environment" if "default" not in policy else "none"
    return {"omp_wait_policy": str(policy), "omp_wait_policy_set_by": set_by}
