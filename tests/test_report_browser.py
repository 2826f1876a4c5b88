"""The HTML report in a real headless browser (Debian's ``chromium``).

Skipped when chromium is not installed, unless ``ANNDATA_RNN_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs it): then a missing browser fails. The page is opened from a
``file://`` URL with a fresh profile; the screenshot must not be blank, and chromium's network
log must show no request made by the page (chromium's own background requests, which have no
page initiator, are told apart; a control page with one external image proves the check sees
page requests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fixtures_rich import rich_adata

import anndata_rnn as ar

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("ANNDATA_RNN_REQUIRE_BROWSER") == "1"
if BROWSER is None:
    if REQUIRED:
        raise RuntimeError("ANNDATA_RNN_REQUIRE_BROWSER=1 but chromium is not installed")
    pytest.skip("needs chromium (apt-get install -y chromium)", allow_module_level=True)


def open_in_browser(page: Path, folder: Path) -> tuple[np.ndarray, list[str]]:
    """Screenshot of ``page`` (grey pixels) and the URLs the page requested."""
    shot, netlog = folder / f"{page.stem}.png", folder / f"{page.stem}.netlog.json"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                BROWSER,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={shot}",
                "--window-size=1200,2000",
                f"--log-net-log={netlog}",
                page.resolve().as_uri(),
            ],  # fmt: skip
            check=True,
            capture_output=True,
            timeout=120,
        )
    from PIL import Image

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    return pixels, page_requests(netlog)


def page_requests(netlog: Path) -> list[str]:
    """URLs of the requests a page started (browser-internal ones have no page initiator)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] != start or "url" not in params:
            continue
        if params.get("initiator") == "not an origin":  # chromium's own update/time checks
            continue
        if params["url"].startswith(("file:", "data:")):
            continue
        urls.append(params["url"])
    return urls


def test_report_renders_offline_in_chromium(tmp_path):
    adata = rich_adata(sparse=False, counts=False)
    adata.obs["label"] = adata.obs["label"].cat.rename_categories(
        {"up": "<script>alert(1)</script>", "down": "CD14+ Monocyte"}
    )
    ar.tl.classify(
        adata, label_key="label", layout="obs-series", series_key="series", time_key="time",
        max_epochs=2, hidden="8", seed=0, quiet=True,
    )  # fmt: skip
    page = ar.report.write_report(adata, tmp_path / "report.html", run_warnings=["a warning"])
    html = page.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html

    pixels, requests = open_in_browser(page, tmp_path)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20, "the screenshot is blank"
    assert (pixels < 100).mean() > 0.005, "no text or plot drawn"
    assert requests == [], f"the report loaded external resources: {requests}"

    # control: the same check sees a page's external request
    control = tmp_path / "control.html"
    control.write_text('<html><body><p>x</p><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, control_requests = open_in_browser(control, tmp_path)
    assert any("127.0.0.1" in url for url in control_requests), control_requests
