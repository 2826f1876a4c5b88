"""Tools (scanpy style): ``anndata_rnn.tl.classify``, ``predict`` and the other tasks."""

from ._classify import classify
from ._predict import predict

__all__ = ["classify", "predict"]
