"""Versions that mean something: the package, the Galaxy tool and the CHANGELOG agree, and
predict says which version wrote the model it applies."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from fixtures_rich import rich_adata

import anndata_rnn as ar

ROOT = Path(__file__).parent.parent


def test_predict_records_which_version_wrote_the_model(tmp_path):
    adata = rich_adata()
    model = ar.tl.classify(
        adata, label_key="label", series_key="series", time_key="time", hidden=8, max_epochs=2,
        seed=0, device="cpu", quiet=True,
    )  # fmt: skip
    model.save(tmp_path / "m.h5")
    new = rich_adata(seed=1)
    ar.tl.predict(new, str(tmp_path / "m.h5"), key_added="again", quiet=True)
    assert new.uns["again"]["model_written_by"] == version("anndata-rnn")
    assert np.all(new.obs["again_pred"].notna())


def test_the_changelog_names_the_package_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (\d+\.\d+\.\d+)", text, flags=re.M)
    assert headings and headings[0] == version("anndata-rnn")


@pytest.mark.parametrize("path", ["pyproject.toml", "macros.xml"])
def test_the_version_is_declared_the_same_everywhere(path):
    text = (ROOT / path).read_text()
    assert version("anndata-rnn") in text
