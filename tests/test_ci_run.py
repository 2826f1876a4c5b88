"""``.ci/run`` stops at the first failing command (it never skips the suite and carries on).

A copy of ``.ci/run`` runs in an empty folder with ``pip``, ``python``, ``ruff`` and
``anndata-rnn`` replaced by stubs on PATH that log their call and exit with a chosen status, so
nothing is installed and the real suite does not run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

CI_RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"
TOOLS = ("pip", "python", "ruff", "anndata-rnn")


def run_ci(tmp_path: Path, failing: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a copy of .ci/run with stub tools; ``failing`` exits 1, the others 0."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(CI_RUN, repo / ".ci" / "run")
    stubs, log = tmp_path / "bin", tmp_path / "calls.log"
    stubs.mkdir()
    for tool in TOOLS:
        status = 1 if tool == failing else 0
        stub = stubs / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexit {status}\n')
        stub.chmod(0o755)
    bash = shutil.which("bash")
    env = {
        "PATH": f"{stubs}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "ANNDATA_RNN_CI_FRESH_VENV": "0",  # a fresh venv would put real tools before the stubs
    }
    proc = subprocess.run(
        [bash, str(repo / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


@pytest.mark.parametrize(
    "failing, calls_made",
    [
        ("pip", ["pip install torch==2.13.0"]),
        ("python", ["pip install torch==2.13.0", "pip install -e .[test]", "python -m pytest"]),
    ],
)
def test_a_failing_step_1_command_stops_the_script(failing, calls_made, tmp_path):
    proc, calls = run_ci(tmp_path, failing)
    assert proc.returncode != 0, proc.stdout
    assert "=== 1." in proc.stdout
    assert "=== 2." not in proc.stdout, "went on to step 2 after a failure in step 1"
    assert calls == calls_made


def test_the_stubs_let_step_1_pass_when_nothing_fails(tmp_path):
    """The control: with working tools the script does reach step 2 (so the test above can
    tell a stop from a script that never got there)."""
    proc, calls = run_ci(tmp_path, None)
    assert "=== 2. lint" in proc.stdout, proc.stdout + proc.stderr
    assert calls[:4] == [
        "pip install torch==2.13.0",
        "pip install -e .[test]",
        "python -m pytest",
        "ruff check .",
    ]


def test_ci_runs_the_suite_in_a_fresh_venv():
    """Step 1 runs the README's test command in a new venv (the newest allowed versions), unless
    a test of the script turns that off."""
    text = CI_RUN.read_text()
    step_1 = text[text.index('step "1.') : text.index('step "2.')]
    assert 'python3 -m venv "$ci_venv"' in step_1 and '. "$ci_venv/bin/activate"' in step_1
    assert step_1.index("activate") < step_1.index("pip install torch==2.13.0")
    assert '"${ANNDATA_RNN_CI_FRESH_VENV:-1}" = 1' in step_1


def test_ci_requires_the_galaxy_layer():
    """CI sets ANNDATA_RNN_REQUIRE_GALAXY=1, which turns the Galaxy fast layer's skip into a
    failure."""
    text = CI_RUN.read_text()
    assert "export ANNDATA_RNN_REQUIRE_GALAXY=1" in text
    env = dict(os.environ, ANNDATA_RNN_REQUIRE_GALAXY="1")
    # a Python where galaxy is not installed: the module must fail, not skip. A None entry in
    # sys.modules makes every import of the package raise ModuleNotFoundError, as an absent
    # package does (pytest >= 9.1 skips on that error only, not on a plain ImportError)
    code = (
        "import sys\n"
        "sys.modules['galaxy'] = None\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]]))\n"
    )
    test_file = str(Path(__file__).resolve().parent / "test_galaxy_tool.py")
    proc = subprocess.run(
        [shutil.which("python") or "python", "-c", code, test_file],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "ANNDATA_RNN_REQUIRE_GALAXY is set but galaxy-tool-util is not importable" in (
        proc.stdout + proc.stderr
    )
    env["ANNDATA_RNN_REQUIRE_GALAXY"] = "0"
    proc = subprocess.run(
        [shutil.which("python") or "python", "-c", code, test_file],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 5 or "skipped" in proc.stdout, proc.stdout
