"""Gene order for the profile layout from training-set structure: hierarchical clustering
(average linkage) of 1 - |Pearson correlation| between genes on the training rows, leaves in
dendrogram order, so correlated genes share a chunk (step). Measured on pbmc in pbmc.py
(``--order cluster``); used only by the benchmark unless it helps."""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform


def cluster_order(prep, source, index, train_ids):
    rows = index.obs_rows(train_ids)
    block = prep.transform_rows(source.read_rows(rows), source.feature_names)
    corr = np.corrcoef(np.nan_to_num(block), rowvar=False)
    corr = np.nan_to_num(corr)
    dist = 1 - np.abs(corr)
    np.fill_diagonal(dist, 0.0)
    order = leaves_list(linkage(squareform(np.clip(dist, 0, None), checks=False), "average"))
    prep.features = prep.features[order]
    prep.mean = prep.mean[order]
    prep.std = prep.std[order]
