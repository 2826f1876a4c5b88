#!/usr/bin/env bash
# Lint galaxy_tool.xml with planemo and run its <tests> on a real, throw-away Galaxy server.
#
# Usage (from anywhere):
#   .ci/galaxy/run_tool_tests.sh                          lint + all tool tests + the hostile-key
#                                                         check (a validator-free copy of the tool)
#   .ci/galaxy/run_tool_tests.sh --tool PATH/TO/tool.xml  the same for another tool XML
#   .ci/galaxy/run_tool_tests.sh --lint-only              only the planemo lint step
#   .ci/galaxy/run_tool_tests.sh --expect-failure-check   self-check: run a copy of the tool whose
#       first test asserts a key that cannot exist; succeeds only if that test FAILS (proves that a
#       broken assertion makes this script exit non-zero)
#
# Environment:
#   ANNDATA_RNN_CI_CACHE  where the venvs live (default ~/.cache/anndata-rnn-ci); created when
#                         missing, reused afterwards (first run ~5 min, later runs skip it)
#   GALAXY_TOOL_XML       same as --tool
#   PYTHON                interpreter for the venvs (default python3; Galaxy needs >= 3.9)
#   GALAXY_TEST_JOBS      planemo test processes run side by side (default 2)
#   KEEP_GALAXY_TMP=1     keep the server's temp dir (config, log, job dirs) for debugging
#
# Exit status: 0 when lint is clean and every tool test passed, non-zero otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/.ci/galaxy"
CACHE="${ANNDATA_RNN_CI_CACHE:-$HOME/.cache/anndata-rnn-ci}"
PYTHON="${PYTHON:-python3}"
GALAXY_VERSION=26.1.2
PLANEMO_VERSION=0.75.47
TORCH_VERSION=2.13.0
GALAXY_VENV="$CACHE/galaxy-venv"
PLANEMO_VENV="$CACHE/planemo-venv"

TOOL="${GALAXY_TOOL_XML:-$ROOT/galaxy_tool.xml}"
TEST_DATA="$ROOT/test-data"
MODE=all
while [ $# -gt 0 ]; do
    case "$1" in
        --tool) TOOL="$2"; shift 2 ;;
        --lint-only) MODE=lint; shift ;;
        --expect-failure-check) MODE=expect-failure; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
TOOL="$(cd "$(dirname "$TOOL")" && pwd)/$(basename "$TOOL")"

log() { printf '[galaxy-ci %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
START=$SECONDS

WORK="$(mktemp -d "${TMPDIR:-/tmp}/anndata-rnn-galaxy.XXXXXX")"
GALAXY_PID=""
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$GALAXY_PID" ] && kill -0 "$GALAXY_PID" 2>/dev/null; then
        log "stopping Galaxy (pid $GALAXY_PID)"
        kill "$GALAXY_PID" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$GALAXY_PID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$GALAXY_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_GALAXY_TMP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pip prints a warning per missing local index page; keep the logs, show them only on failure
pip_quiet() {
    local logfile="$1"; shift
    if ! "$@" >"$logfile" 2>&1; then
        grep -v "^WARNING: Location" "$logfile" | tail -n 40 >&2
        echo "failed: $*" >&2
        return 1
    fi
}

# ---- (a) venvs ------------------------------------------------------------------------------
mkdir -p "$CACHE"
if [ ! -f "$PLANEMO_VENV/.ok-$PLANEMO_VERSION" ]; then
    log "creating planemo venv in $PLANEMO_VENV (once)"
    rm -rf "$PLANEMO_VENV"
    "$PYTHON" -m venv "$PLANEMO_VENV"
    pip_quiet "$CACHE/planemo-install.log" "$PLANEMO_VENV/bin/pip" install "planemo==$PLANEMO_VERSION"
    touch "$PLANEMO_VENV/.ok-$PLANEMO_VERSION"
fi
if [ "$MODE" != lint ] && [ ! -f "$GALAXY_VENV/.ok-$GALAXY_VERSION" ]; then
    log "creating Galaxy $GALAXY_VERSION venv in $GALAXY_VENV (once, ~1.1 GB)"
    rm -rf "$GALAXY_VENV"
    "$PYTHON" -m venv "$GALAXY_VENV"
    pip_quiet "$CACHE/galaxy-install.log" "$GALAXY_VENV/bin/pip" install \
        "galaxy-app==$GALAXY_VERSION" "galaxy-web-apps==$GALAXY_VERSION"
    touch "$GALAXY_VENV/.ok-$GALAXY_VERSION"
fi

# ---- (c) lint -------------------------------------------------------------------------------
log "planemo lint --skip BioToolsValid $(basename "$TOOL")"
set +e
"$PLANEMO_VENV/bin/planemo" lint --skip BioToolsValid --fail_level warn "$TOOL" >"$WORK/lint.txt" 2>&1
LINT_RC=$?
set -e
cat "$WORK/lint.txt"
if [ $LINT_RC -ne 0 ] || grep -Eq '^\.\. (WARNING|ERROR)' "$WORK/lint.txt"; then
    log "planemo lint reported warnings or errors (exit $LINT_RC)"
    exit 1
fi
log "lint clean"
[ "$MODE" = lint ] && exit 0

# ---- (b) torch + this repository into Galaxy's venv (jobs run with this venv on PATH) ----------
if ! "$GALAXY_VENV/bin/python" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION into the Galaxy venv"
    # setuptools<82: galaxy-files requires it, torch would otherwise upgrade it
    pip_quiet "$CACHE/torch-install.log" "$GALAXY_VENV/bin/pip" install "torch==$TORCH_VERSION" "setuptools<82"
fi
log "installing $ROOT into the Galaxy venv"
# (pip always rebuilds and reinstalls a local directory, so code changes are picked up)
pip_quiet "$CACHE/repo-install.log" "$GALAXY_VENV/bin/pip" install "setuptools<82" "$ROOT"
"$GALAXY_VENV/bin/anndata-rnn" --help >/dev/null

# the tool to test (for --expect-failure-check: a broken copy next to a copy of macros.xml)
if [ "$MODE" = expect-failure ]; then
    mkdir -p "$WORK/broken_tool"
    cp "$(dirname "$TOOL")/macros.xml" "$WORK/broken_tool/"
    # Galaxy serves test data from the tool's own directory
    ln -s "$TEST_DATA" "$WORK/broken_tool/test-data"
    "$PYTHON" "$HERE/ci_helpers.py" break-xml "$TOOL" "$WORK/broken_tool/$(basename "$TOOL")"
    TOOL="$WORK/broken_tool/$(basename "$TOOL")"
fi

# the hostile-key check (all mode): a copy of the tool without its key validators, whose one test
# sends quotes, $(...), backticks and ';' through the sanitizer and quoting and asserts that no
# shell command ran (see hostile_xml in ci_helpers.py); served by the same Galaxy
HOSTILE_TOOL=""
if [ "$MODE" = all ]; then
    mkdir -p "$WORK/hostile_tool"
    ln -s "$TEST_DATA" "$WORK/hostile_tool/test-data"
    "$PYTHON" "$HERE/ci_helpers.py" hostile-xml "$(dirname "$TOOL")" "$WORK/hostile_tool"
    HOSTILE_TOOL="$WORK/hostile_tool/galaxy_tool.xml"
fi

# ---- (d) a throw-away Galaxy server -----------------------------------------------------------
PORT="$("$PYTHON" "$HERE/ci_helpers.py" free-port)"
URL="http://127.0.0.1:$PORT"
ADMIN_KEY="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')"
ID_SECRET="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(16))')"
mkdir -p "$WORK/data" "$WORK/tmp" "$WORK/jobs" "$WORK/files"
cat >"$WORK/tool_conf.xml" <<EOF
<toolbox>
  <section id="anndata_rnn_ci" name="anndata-rnn">
    <tool file="$TOOL"/>
$([ -z "$HOSTILE_TOOL" ] || echo "    <tool file=\"$HOSTILE_TOOL\"/>")
  </section>
</toolbox>
EOF
cat >"$WORK/galaxy.yml" <<EOF
galaxy:
  data_dir: $WORK/data
  file_path: $WORK/files
  new_file_path: $WORK/tmp
  job_working_directory: $WORK/jobs
  database_connection: sqlite:///$WORK/data/universe.sqlite?isolation_level=IMMEDIATE
  tool_config_file: $WORK/tool_conf.xml
  shed_tool_config_file: $WORK/shed_tool_conf.xml
  migrated_tools_config: $WORK/migrated_tools_conf.xml
  integrated_tool_panel_config: $WORK/integrated_tool_panel.xml
  bootstrap_admin_api_key: $ADMIN_KEY
  id_secret: $ID_SECRET
  admin_users: ci-admin@example.org
  allow_user_creation: true
  enable_celery_tasks: false
  conda_auto_init: false
  conda_auto_install: false
  watch_tools: 'false'
  # nothing outside this machine: no container tooling, no remote data tables
  enable_mulled_containers: false
  involucro_auto_init: false
  tool_data_table_config_path: $WORK/tool_data_table_conf.xml
  tool_data_path: $WORK/tool-data
  cleanup_job: never
  job_config:
    runners:
      local:
        load: galaxy.jobs.runners.local:LocalJobRunner
        workers: 2
    execution:
      default: local
      environments:
        local:
          runner: local
EOF
echo '<toolbox tool_path="'"$WORK"'/shed_tools"></toolbox>' >"$WORK/shed_tool_conf.xml"
echo '<tables></tables>' >"$WORK/tool_data_table_conf.xml"
mkdir -p "$WORK/tool-data"

log "starting Galaxy on $URL (log: $WORK/galaxy.log)"
(
    cd "$WORK"
    export PATH="$GALAXY_VENV/bin:$PATH" VIRTUAL_ENV="$GALAXY_VENV" GALAXY_VIRTUAL_ENV="$GALAXY_VENV"
    # the jobs get 1 slot each; keep torch/BLAS from oversubscribing the 2 CI cores
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    exec "$GALAXY_VENV/bin/galaxy-web" -c "$WORK/galaxy.yml" -b "127.0.0.1:$PORT"
) >"$WORK/galaxy.log" 2>&1 &
GALAXY_PID=$!
if ! "$PYTHON" "$HERE/ci_helpers.py" wait-up "$URL" "$GALAXY_PID" 300; then
    tail -n 60 "$WORK/galaxy.log"
    exit 1
fi
USER_KEY="$("$PYTHON" "$HERE/ci_helpers.py" create-user "$URL" "$ADMIN_KEY" ci-user@example.org)"

# ---- (e) the tool tests ------------------------------------------------------------------------
# split the tests over GALAXY_TEST_JOBS planemo processes (the local runner runs 2 jobs at once)
N_TESTS="$("$PLANEMO_VENV/bin/python" -c 'import sys
from galaxy.tool_util.parser import get_tool_source
print(len(get_tool_source(sys.argv[1]).parse_tests_to_dict()["tests"]))' "$TOOL")"
JOBS="${GALAXY_TEST_JOBS:-2}"
if [ "$JOBS" -gt "$N_TESTS" ]; then JOBS="$N_TESTS"; fi
if [ "$JOBS" -lt 1 ]; then JOBS=1; fi
log "planemo test --engine external_galaxy $(basename "$TOOL"): $N_TESTS tests in $JOBS processes"
for shard in $(seq 0 $((JOBS - 1))); do
    INDEXES=()
    for i in $(seq 1 "$N_TESTS"); do
        if [ $(((i - 1) % JOBS)) -eq "$shard" ]; then INDEXES+=(--test_index "$i"); fi
    done
    "$PLANEMO_VENV/bin/planemo" test \
        --engine external_galaxy \
        --galaxy_url "$URL" \
        --galaxy_admin_key "$ADMIN_KEY" \
        --galaxy_user_key "$USER_KEY" \
        --test_data "$TEST_DATA" \
        --test_output "$WORK/tool_test_output_$shard.html" \
        --test_output_json "$WORK/tool_test_output_$shard.json" \
        --test_timeout 900 \
        "${INDEXES[@]}" \
        "$TOOL" >"$WORK/planemo_test_$shard.log" 2>&1 &
    PIDS+=($!)
done
if [ -n "$HOSTILE_TOOL" ]; then
    log "planemo test --engine external_galaxy: the hostile-key check"
    "$PLANEMO_VENV/bin/planemo" test \
        --engine external_galaxy \
        --galaxy_url "$URL" \
        --galaxy_admin_key "$ADMIN_KEY" \
        --galaxy_user_key "$USER_KEY" \
        --test_data "$TEST_DATA" \
        --test_output "$WORK/tool_test_output_hostile.html" \
        --test_output_json "$WORK/tool_test_output_hostile.json" \
        --test_timeout 900 \
        "$HOSTILE_TOOL" >"$WORK/planemo_test_hostile.log" 2>&1 &
    PIDS+=($!)
fi
TEST_RC=0
for shard in "${!PIDS[@]}"; do
    if ! wait "${PIDS[$shard]}"; then TEST_RC=1; fi
    name="$shard"
    if [ "$shard" -ge "$JOBS" ]; then name=hostile; fi
    echo "--- planemo test process $name:"
    grep -v -E '^(WARNING: Location|\s*$)' "$WORK/planemo_test_$name.log" | tail -n 30
done
set +e
"$PYTHON" "$HERE/ci_helpers.py" summarize "$WORK"/tool_test_output_*.json
SUMMARY_RC=$?
set -e
if [ $TEST_RC -ne 0 ] || [ $SUMMARY_RC -ne 0 ]; then
    FAILED=1
else
    FAILED=0
fi
if [ $FAILED = 1 ] && [ "$MODE" = all ]; then
    log "Galaxy server log, errors (tail):"
    grep -E "ERROR|Traceback|Exception" "$WORK/galaxy.log" | grep -v display_applications | tail -n 20 || true
fi

# ---- (g) result ------------------------------------------------------------------------------
ELAPSED=$((SECONDS - START))
if [ "$MODE" = expect-failure ]; then
    if [ $FAILED = 1 ] && grep -q "_BROKEN_ON_PURPOSE" "$WORK"/tool_test_output_*.json; then
        log "self-check OK: the deliberately broken assertion failed the tool tests (planemo exit $TEST_RC) after ${ELAPSED}s"
        exit 0
    fi
    log "self-check FAILED: a broken assertion did not fail the tool tests"
    exit 1
fi
if [ $FAILED = 1 ]; then
    log "Galaxy tool tests FAILED (planemo exit $TEST_RC) after ${ELAPSED}s"
    exit 1
fi
log "Galaxy tool tests passed after ${ELAPSED}s"
