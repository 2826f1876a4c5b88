#!/usr/bin/env python
"""Small helpers for run_tool_tests.sh (standard library only, any Python >= 3.9).

Subcommands::

    free-port                          print a free TCP port on 127.0.0.1
    wait-up URL PID TIMEOUT            wait until Galaxy answers URL/api/version (fails early if PID died)
    create-user URL ADMIN_KEY EMAIL    create a user, print a new API key for it
    break-xml SRC DST                  copy SRC to DST with the first test's first has_h5_keys broken
                                       and every other test removed (for --expect-failure-check)
    hostile-xml SRC_DIR DST_DIR        write DST_DIR/galaxy_tool.xml + macros.xml: the tool with the
                                       key validators taken out and one test that sends a hostile
                                       key (quotes, $(...), backticks, ';') through the sanitizer
                                       and quoting only, asserting no shell command ran
    summarize JSON...                  print a per-test summary of planemo's --test_output_json files;
                                       exit 1 when a test failed or none ran
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET


def free_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        print(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_up(url: str, pid: str, timeout: str) -> None:
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if not _pid_alive(int(pid)):
            sys.exit(f"Galaxy (pid {pid}) exited before it answered on {url}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=5) as response:
                version = json.load(response)
            print(
                f"Galaxy {version.get('version_major')}.{version.get('version_minor')} is up at {url}"
            )
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            time.sleep(1)
    sys.exit(f"Galaxy did not answer on {url} within {timeout} s")


def _request(url: str, key: str, payload: dict | None = None):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("x-api-key", key)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        sys.exit(f"POST {url} failed: {error.code} {error.read().decode(errors='replace')}")


def create_user(url: str, admin_key: str, email: str) -> None:
    user = _request(
        f"{url}/api/users",
        admin_key,
        {"username": email.split("@")[0], "email": email, "password": secrets.token_hex(16)},
    )
    key = _request(f"{url}/api/users/{user['id']}/api_key", admin_key)
    print(key if isinstance(key, str) else key["key"])


def break_xml(src: str, dst: str) -> None:
    """Change one asserted key of the first test so that it cannot be satisfied."""
    tree = ET.parse(src)
    tests = tree.getroot().find("tests")
    if tests is None or not len(tests):
        sys.exit(f"{src} has no tests")
    first = tests[0]
    for extra in list(tests)[1:]:
        tests.remove(extra)
    assertion = first.find(".//has_h5_keys")
    if assertion is None:
        sys.exit(f"the first test of {src} has no has_h5_keys assertion")
    keys = assertion.get("keys").split(",")
    keys[0] = keys[0] + "_BROKEN_ON_PURPOSE"
    assertion.set("keys", ",".join(keys))
    tree.write(dst, encoding="unicode")
    print(f"wrote {dst}: first test now asserts {keys[0]!r}")


#: a key_added value that runs `touch PWNED` if it ever reaches a shell unquoted/unsanitized
HOSTILE_KEY = 'x\'; touch PWNED; $(touch PWNED) `touch PWNED` "; touch PWNED; echo "'
KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def sanitized_key(value: str) -> str:
    """What the tool's output-key sanitizer (macros.xml sanitize_output_key) keeps of a value."""
    return "".join(c for c in value if c in KEY_CHARS)


def hostile_xml(src_dir: str, dst_dir: str) -> None:
    """A copy of the tool that defends itself by sanitizer + quoting alone.

    Galaxy refuses a hostile key at submission (regex validators), and its linter refuses tool
    tests whose values fail a validator, so the real tool cannot carry this test. The copy drops
    the key validators (as a client that bypassed them would), lists its working directory
    after the run, and asserts that the job wrote its results under the sanitized key and that
    no file named PWNED appeared (no shell command of the value ran).
    """
    os.makedirs(dst_dir, exist_ok=True)
    macros = ET.parse(os.path.join(src_dir, "macros.xml"))
    for xml in macros.getroot().iter("xml"):
        if xml.get("name") in ("sanitize_key", "sanitize_output_key"):
            for validator in xml.findall("validator"):
                xml.remove(validator)
    macros.write(os.path.join(dst_dir, "macros.xml"), encoding="unicode")
    tree = ET.parse(os.path.join(src_dir, "galaxy_tool.xml"))
    root = tree.getroot()
    root.set("id", "anndata_rnn_hostile")
    root.set("name", "AnnData RNN (hostile-key check)")
    command = root.find("command")
    command.text = command.text.rstrip() + "\n&& ls -a\n"
    tests = root.find("tests")
    for test in list(tests):
        tests.remove(test)
    key = sanitized_key(HOSTILE_KEY)
    test = ET.SubElement(tests, "test", {"expect_num_outputs": "1"})
    mode = ET.SubElement(test, "conditional", {"name": "mode"})
    for name, value, ftype in (
        ("mode", "predict", None),
        ("adata", "galaxy_krumsiek11_series.h5ad", "h5ad"),
        ("model", "galaxy_krumsiek11_model.h5", "h5"),
        ("key_added", HOSTILE_KEY, None),
    ):
        attrs = {"name": name, "value": value}
        if ftype:
            attrs["ftype"] = ftype
        ET.SubElement(mode, "param", attrs)
    # the report is on by default; off here so the test's one output is the AnnData
    ET.SubElement(test, "param", {"name": "report", "value": "false"})
    output = ET.SubElement(test, "output", {"name": "anndata_out", "ftype": "h5ad"})
    contents = ET.SubElement(output, "assert_contents")
    ET.SubElement(contents, "has_h5_keys", {"keys": f"obs/{key}_pred,obsm/{key}_proba,uns/{key}"})
    stdout = ET.SubElement(test, "assert_stdout")
    ET.SubElement(stdout, "has_text", {"text": f"obs/{key}_pred"})
    ET.SubElement(stdout, "has_line", {"line": "output.h5ad"})  # the listing ran
    ET.SubElement(stdout, "has_line", {"line": "PWNED", "negate": "true"})
    tree.write(os.path.join(dst_dir, "galaxy_tool.xml"), encoding="unicode")
    print(f"wrote {dst_dir}/galaxy_tool.xml: key {HOSTILE_KEY!r} -> {key!r}")


def summarize(*paths: str) -> None:
    tests = []
    for path in paths:
        try:
            with open(path) as handle:
                tests.extend(json.load(handle).get("tests", []))
        except (OSError, ValueError) as error:
            print(f"  cannot read {path}: {error}")
    passed = failed = 0
    for test in tests:
        data = test.get("data", {})
        status = data.get("status", "unknown")
        name = test.get("id", "?")
        seconds = data.get("time_seconds")
        timing = f" ({seconds:.1f} s)" if isinstance(seconds, (int, float)) else ""
        print(f"  {status:8s} {name}{timing}")
        if status == "success":
            passed += 1
        else:
            failed += 1
            problems = data.get("job", {}) or {}
            for line in (data.get("output_problems") or [])[:5]:
                print(f"           output problem: {str(line)[:500]}")
            if data.get("execution_problem"):
                print(f"           execution problem: {str(data['execution_problem'])[:500]}")
            stderr = (problems.get("stderr") or "").strip().splitlines()[-10:]
            for line in stderr:
                print(f"           stderr: {line}")
    print(f"Galaxy tool tests summary - passed {passed}, failed {failed}")
    if failed or not passed:
        sys.exit(1)


def main() -> None:
    commands = {
        "free-port": free_port,
        "wait-up": wait_up,
        "create-user": create_user,
        "break-xml": break_xml,
        "hostile-xml": hostile_xml,
        "summarize": summarize,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
