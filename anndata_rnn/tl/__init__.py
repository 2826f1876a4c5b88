"""Tools (scanpy style): ``anndata_rnn.tl.classify``, ``predict`` and the other tasks."""

from ._classify import classify
from ._cluster import cluster
from ._embed import embed
from ._explain import explain, importance_table
from ._forecast import forecast
from ._predict import predict

__all__ = ["classify", "cluster", "embed", "explain", "forecast", "importance_table", "predict"]
