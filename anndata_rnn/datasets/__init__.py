"""Real datasets bundled with the package (no download).

Both are yeast cell-cycle time courses (bulk microarrays, log2 ratios vs an asynchronous
reference) from the Bioconductor experiment package yeastCC 1.47.0 (Artistic-2.0):

- :func:`spellman1998`: Spellman et al. 1998, Mol Biol Cell 9:3273. 77 arrays × 6178 genes;
  obs ``series`` (alpha, cdc15, cdc28, elu, clb2, cln3), ``time`` (minutes); var
  ``cell_cycle_800`` (Spellman's 800 cell-cycle regulated genes). NaN = missing spot (also
  in layer ``missing``).
- :func:`pramila2006`: Pramila et al. 2006 (GEO GSE4987). 50 arrays × 6215 genes; obs ``time``
  (0–120 min every 5), ``series`` (dye orientation).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

HERE = Path(__file__).parent


def spellman1998() -> ad.AnnData:
    """Spellman et al. 1998 yeast cell-cycle time courses (77 × 6178)."""
    return ad.read_h5ad(HERE / "yeast_cellcycle_spellman1998.h5ad")


def pramila2006() -> ad.AnnData:
    """Pramila et al. 2006 yeast cell-cycle time course (50 × 6215)."""
    return ad.read_h5ad(HERE / "yeast_cellcycle_pramila2006.h5ad")


def path(name: str) -> Path:
    """File path of a bundled dataset (``"spellman1998"`` or ``"pramila2006"``)."""
    files = {
        "spellman1998": "yeast_cellcycle_spellman1998.h5ad",
        "pramila2006": "yeast_cellcycle_pramila2006.h5ad",
    }
    return HERE / files[name]
