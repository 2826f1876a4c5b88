"""sequences.Layout: what each layout means, asked instead of comparing names."""

from __future__ import annotations

import pytest

from anndata_rnn.errors import InputError
from anndata_rnn.sequences import LAYOUTS, OBS_SERIES, PROFILE, VAR_SERIES, Layout


def test_every_layout_name_has_one_layout():
    assert tuple(Layout.of(name).name for name in LAYOUTS) == LAYOUTS
    assert Layout.of(VAR_SERIES) is VAR_SERIES
    assert Layout.get("nope") is None and Layout.get(None) is None
    with pytest.raises(InputError, match="unknown layout 'nope'"):
        Layout.of("nope")
    with pytest.raises(InputError, match="unknown layout"):
        Layout.of(["profile"])


def test_each_layout_is_told_apart_by_exactly_one_property():
    """The three properties code branches on pick out one layout each."""
    for layout in (OBS_SERIES, VAR_SERIES, PROFILE):
        flags = (layout.steps_are_observations, layout.one_feature, layout.steps_are_gene_chunks)
        assert sum(flags) == 1, layout
    assert OBS_SERIES.steps_are_observations and VAR_SERIES.one_feature
    assert PROFILE.steps_are_gene_chunks and not PROFILE.is_time_series


def test_where_unit_outputs_go():
    assert (VAR_SERIES.unit_axis, VAR_SERIES.unit_matrices) == ("var", "varm")
    assert {(layout.unit_axis, layout.unit_matrices) for layout in (OBS_SERIES, PROFILE)} == {
        ("obs", "obsm")
    }
    assert [Layout.of(name).unit_name for name in LAYOUTS] == ["series", "gene", "observation"]
