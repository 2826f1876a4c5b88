"""Default ``anndata-rnn classify`` runs alone and side by side on the same cores (issue 21).

Not a test: run by hand on an otherwise idle machine::

    PYTHONPATH=. python benchmarks/side_by_side.py                       # pbmc68k_reduced, 2 at once
    PYTHONPATH=. python benchmarks/side_by_side.py --data yeast --jobs 2
    PYTHONPATH=. python benchmarks/side_by_side.py --variant threads1="--threads 1" \\
        --variant passive="env:OMP_WAIT_POLICY=PASSIVE"              # compare settings

Each variant runs the command once alone, then ``--jobs`` copies at once (seeds 0, 1, ...),
then alone again; it reports every wall time, the mean solo time and the ratio of each
side-by-side run to it (goal: ≤ 2.5× for two runs on two cores, where 2× is fair), the
phases each run recorded (``uns["rnn"]["timings"]``), the threads it chose
(``uns["rnn"]["threads"]``) and the load average before each step. The JSON goes to
``--out`` (default ``benchmarks/results/side_by_side_<data>.json``).

The default variant is the command as a user types it (no ``--threads``, no environment
settings beyond the caller's): the package's own thread policy decides. Without ``--variant`` it
is compared with ``spin`` (``GOMP_SPINCOUNT=300000``: OpenMP's spinning, the behaviour before
issue 21; its solo time is "today's") and ``threads1`` (``--threads 1``); the JSON holds
``default_solo_vs_spin_solo`` (goal ≤ 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


#: the variants run beside the default unless --variant is given
COMPARED = ("spin=env:GOMP_SPINCOUNT=300000", "threads1=--threads 1")


def prepare(data: str, folder: Path) -> tuple[Path, list[str]]:
    """The input file and the classify arguments of ``data``."""
    if data == "pbmc":
        import scanpy as sc

        path = folder / "pbmc68k_reduced.h5ad"
        sc.datasets.pbmc68k_reduced().write_h5ad(path)
        return path, ["--layout", "profile", "--label", "bulk_labels"]
    from anndata_rnn.datasets import path as dataset_path

    args = ["--layout", "var-series", "--series-key", "series", "--time-key", "time"]
    args += ["--series-subset", "cdc15", "--label", "cell_cycle_800"]
    return Path(dataset_path("spellman1998")), args


def parse_variant(text: str) -> tuple[str, list[str], dict[str, str]]:
    """``name=ARGS`` where ARGS are extra command-line arguments; ``env:K=V`` items set the
    child's environment instead (e.g. ``passive="env:OMP_WAIT_POLICY=PASSIVE"``)."""
    name, _, rest = text.partition("=")
    args, env = [], {}
    for item in shlex.split(rest):
        if item.startswith("env:"):
            key, _, value = item[4:].partition("=")
            env[key] = value
        else:
            args.append(item)
    return name, args, env


def launch(input_path: Path, base: list[str], extra: list[str], env: dict, out: Path, seed: int):
    cmd = [sys.executable, "-m", "anndata_rnn", "classify", str(input_path), *base]
    cmd += ["--output", str(out), "--model-out", str(out.with_suffix(".h5"))]
    cmd += ["--seed", str(seed), "--quiet", "--overwrite", *extra]
    child_env = {**os.environ, **env, "MPLBACKEND": "Agg"}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, started, cmd


def finish(proc, started, cmd, out: Path) -> dict:
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    entry = {"seconds": round(seconds, 3), "rc": proc.returncode}
    if proc.returncode != 0:
        entry["stderr"] = stderr.decode(errors="replace")[-2000:]
        entry["command"] = shlex.join(cmd)
        return entry
    entry.update(read_record(out))
    return entry


def read_record(path: Path) -> dict:
    """The timings and the thread choice the run stored in ``uns["rnn"]``."""
    from anndata.io import read_elem

    found = {}
    with h5py.File(path, "r") as f:
        for name in ("timings", "threads"):
            if f"uns/rnn/{name}" in f:
                found[name] = _plain(read_elem(f[f"uns/rnn/{name}"]))
        if "uns/rnn/metrics/rnn/macro_f1" in f:
            found["macro_f1"] = float(f["uns/rnn/metrics/rnn/macro_f1"][()])
    return found


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_variant(name, extra, env, input_path, base, jobs: int, folder: Path) -> dict:
    steps = []

    def step(label: str, seeds: list[int]) -> list[dict]:
        load = os.getloadavg()[0]
        procs = [
            (launch(input_path, base, extra, env, folder / f"{name}_{label}_{s}.h5ad", s), s)
            for s in seeds
        ]
        results = [{"seed": s, **finish(*p, folder / f"{name}_{label}_{s}.h5ad")} for p, s in procs]
        steps.append({"step": label, "load_before": round(load, 2), "runs": results})
        for r in results:
            print(f"  {name} {label} seed {r['seed']}: {r['seconds']:.1f} s (rc {r['rc']})")
        return results

    solo = step("solo", [0])
    together = step("together", list(range(jobs)))
    solo += step("solo_again", [0])
    solo_s = [r["seconds"] for r in solo if r["rc"] == 0]
    together_s = [r["seconds"] for r in together if r["rc"] == 0]
    mean_solo = float(np.mean(solo_s)) if solo_s else float("nan")
    return {
        "variant": name,
        "extra_args": extra,
        "env": env,
        "steps": steps,
        "solo_seconds": mean_solo,
        "together_seconds": together_s,
        "ratios": [round(t / mean_solo, 3) for t in together_s],
        "worst_ratio": round(max(together_s) / mean_solo, 3) if together_s else None,
        "failed": sum(r["rc"] != 0 for s in steps for r in s["runs"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["pbmc", "yeast"], default="pbmc")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help='name="EXTRA ARGS env:K=V": a setting to compare (repeatable); default: the plain '
        "command",
    )
    parser.add_argument("--no-default", action="store_true", help="only the --variant settings")
    parser.add_argument("--epochs", type=int, help="pass --epochs (quick checks; tests)")
    parser.add_argument("--out", type=Path, help="JSON path")
    args = parser.parse_args(argv)

    variants = [] if args.no_default else [("default", [], {})]
    if not args.variant and not args.no_default:
        # what the default is measured against: OpenMP's own spinning (the behaviour before
        # issue 21) and one thread per run
        variants += [parse_variant(v) for v in COMPARED]
    variants += [parse_variant(v) for v in args.variant]
    out = args.out or ROOT / "benchmarks" / "results" / f"side_by_side_{args.data}.json"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "data": args.data,
        "jobs": args.jobs,
        "cpus": cpus,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "environment": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "GALAXY_SLOTS", "SLURM_CPUS_PER_TASK", "OMP_WAIT_POLICY")
            if k in os.environ
        },
        "variants": [],
    }
    print(
        f"side by side: {args.data}, {args.jobs} jobs, {cpus} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp:
        folder = Path(tmp)
        input_path, base = prepare(args.data, folder)
        if args.epochs:
            base = [*base, "--epochs", str(args.epochs)]
        for name, extra, env in variants:
            result = run_variant(name, extra, env, input_path, base, args.jobs, folder)
            report["variants"].append(result)
            print(
                f"{name}: solo {result['solo_seconds']:.1f} s, side by side "
                f"{', '.join(f'{t:.1f}' for t in result['together_seconds'])} s, worst ratio "
                f"{result['worst_ratio']} (goal <= 2.5 for 2 jobs)"
            )
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    by_name = {v["variant"]: v for v in report["variants"]}
    if "default" in by_name and "spin" in by_name:
        # goal: the default alone no slower than OpenMP's spinning default (before) + 10 %
        ratio = by_name["default"]["solo_seconds"] / by_name["spin"]["solo_seconds"]
        report["default_solo_vs_spin_solo"] = round(ratio, 3)
        print(f"default solo / spin solo: {ratio:.2f} (goal <= 1.10)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return int(any(v["failed"] for v in report["variants"]))


if __name__ == "__main__":
    sys.exit(main())
