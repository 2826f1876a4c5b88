"""Tools (scanpy style): ``anndata_rnn.tl.classify``, ``predict`` and the other tasks."""

from ._classify import classify
from ._forecast import forecast
from ._predict import predict

__all__ = ["classify", "forecast", "predict"]
