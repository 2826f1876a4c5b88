"""Forecasting head: predict the next step of a sequence from the steps up to now.

Input at step ``t``: the standardized features of step ``t`` followed, when the model uses time,
by the standardized time gap to the step being predicted (``t_{t+1} - t_t``), so irregular
sampling and explicit target times are part of the input. Output at step ``t``: the features of
step ``t + 1``. With ``residual=True`` (the default) the head predicts the change from step
``t`` and starts at zero, so the untrained network is the persistence forecast.

The recurrence is causal (unidirectional) and its state can be carried on, which is how
multi-step forecasts are rolled out: the prediction of one step is fed back as the next input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .encoder import RNNEncoder, build_encoder
from .inference import predict_in_batches

#: the forms of the AR path: one dense layer from every gene's lags to every gene, or each gene
#: from its own lags (and the time gaps), per-gene coefficients
AR_FORMS = ("dense", "per_gene")


class GeneAR(nn.Module):
    """Per-gene autoregression: gene ``g``'s output from its own last ``lags`` values and, with a
    time channel, the last ``lags`` time gaps (per-gene coefficients and intercept), plus an
    optional low-rank cross-gene term: the last ``lags`` steps projected on ``rank`` shared
    directions (``loadings``, started at the training inputs' principal axes), each gene with its
    own coefficients on those scores.

    It reads the same lag design as the dense layer (``[x_t, x_{t-1}, ...]``, ``lags *
    n_inputs`` wide) and holds ``n_outputs * (lags * (c + rank) + rank + 1)`` parameters (``c`` =
    2 with a time channel, else 1): linear in the number of genes. ``weight`` ``(n_outputs,
    lags, c + rank)``: per lag the gene's value, the gap, then the ``rank`` scores.
    """

    def __init__(self, lags: int, n_inputs: int, n_outputs: int, rank: int = 0):
        super().__init__()
        if n_inputs not in (n_outputs, n_outputs + 1):
            raise ValueError("a per-gene AR reads the genes and at most one time-gap channel")
        if not 0 <= rank <= n_outputs:
            raise ValueError(f"the cross-gene rank must be in [0, {n_outputs}], got {rank}")
        self.lags, self.n_inputs, self.n_outputs = int(lags), int(n_inputs), int(n_outputs)
        self.channels = 1 + int(n_inputs > n_outputs)
        self.rank = int(rank)
        self.weight = nn.Parameter(torch.zeros(n_outputs, self.lags, self.channels + self.rank))
        self.bias = nn.Parameter(torch.zeros(n_outputs))
        self.loadings = None
        if self.rank:
            self.loadings = nn.Parameter(torch.zeros(n_outputs, self.rank))
            nn.init.orthogonal_(self.loadings)

    def forward(self, design: torch.Tensor) -> torch.Tensor:
        lagged = design.reshape(*design.shape[:-1], self.lags, self.n_inputs)
        f, c = self.n_outputs, self.channels
        values = lagged[..., :f]
        out = (values * self.weight[..., 0].T).sum(-2) + self.bias
        if c == 2:
            out = out + lagged[..., f] @ self.weight[..., 1].T
        if self.rank:
            scores = values @ self.loadings  # (..., lags, rank)
            mix = self.weight[..., c:].reshape(f, -1)  # (genes, lags * rank)
            out = out + scores.flatten(-2) @ mix.T
        return out


class SequenceForecaster(nn.Module):
    """Unidirectional encoder + linear head predicting the next step's ``n_outputs`` features.

    ``n_outputs`` are the first ``n_outputs`` input channels (the features); a trailing time-gap
    channel, when present, is input only.

    ``ar_lags > 0`` adds a linear autoregression (the "highway" of LSTNet, Lai et al. 2018) on the
    inputs of the last ``ar_lags`` steps (features and time gaps: ``[x_t, x_{t-1}, ...]``, steps
    before the first repeat the first, as in the task's ridge baseline), so that::

        prediction = x_t (residual) + AR(x_t, ..., x_{t-lags+1}) + recurrent change

    The AR layer starts at zero (the untrained model is persistence) or at a fitted ridge AR
    (:meth:`init_linear_ar`); ``linear_l2`` is its L2 penalty. ``ar_form`` ``"dense"`` (one
    ``nn.Linear`` from ``ar_lags * n_inputs`` to ``n_outputs``: quadratic in the genes) or
    ``"per_gene"`` (:class:`GeneAR`: each gene from its own lags and an optional low-rank
    cross-gene term of rank ``ar_rank``, linear in the genes). ``encoder=None`` keeps the AR path
    alone (the ablation). With an AR path the carried ``state`` is a dict ``{"rnn": per-layer
    states or None, "window": the last ar_lags - 1 inputs}``; without, it is the list of
    per-layer states as before.
    """

    def __init__(
        self,
        encoder: RNNEncoder | None,
        n_outputs: int,
        residual: bool = True,
        *,
        n_inputs: int | None = None,
        ar_lags: int = 0,
        linear_l2: float = 0.0,
        ar_form: str = "dense",
        ar_rank: int = 0,
    ):
        super().__init__()
        if encoder is not None and encoder.bidirectional:
            raise ValueError("a forecaster needs a unidirectional (causal) encoder")
        if encoder is None and ar_lags < 1:
            raise ValueError("a forecaster without a recurrent encoder needs ar_lags >= 1")
        self.encoder = encoder
        self.n_outputs = n_outputs
        # a trailing time-gap channel when the inputs are wider than the outputs
        self.time_channel = (
            n_inputs if n_inputs is not None else encoder.layers[0].input_size
        ) > n_outputs
        self.residual = residual
        self.ar_lags = int(ar_lags)
        self.linear_l2 = float(linear_l2)
        self.ar = None
        if ar_form not in AR_FORMS:
            raise ValueError(f"ar_form must be one of {', '.join(AR_FORMS)}, got {ar_form!r}")
        self.ar_form = ar_form
        if self.ar_lags:
            if n_inputs is None:
                raise ValueError("the AR path needs n_inputs")
            if ar_form == "per_gene":
                self.ar = GeneAR(self.ar_lags, n_inputs, n_outputs, ar_rank)
            else:
                self.ar = nn.Linear(self.ar_lags * n_inputs, n_outputs)
                nn.init.zeros_(self.ar.weight)
                nn.init.zeros_(self.ar.bias)
        if encoder is None:
            return
        self.dropout = nn.Dropout(encoder.dropout.p)
        self.head = nn.Linear(encoder.out_size, n_outputs)
        if residual or self.ar_lags:  # start exactly at persistence / the AR: no change
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def init_linear_ar(self, coef, intercept, loadings=None) -> None:
        """Start the AR path at a fitted linear AR: ``coef`` ``(n_outputs, ar_lags * n_inputs)``
        on ``[x_t, x_{t-1}, ...]`` predicting the change to the next step (as the task's ridge
        baseline ``fit_linear_ar``), ``intercept`` ``(n_outputs,)``. A per-gene AR path takes
        the per-gene ridge's ``coef`` ``(n_outputs, ar_lags * (c + rank))`` and, with a
        cross-gene term, its ``loadings`` ``(n_outputs, rank)`` (see :class:`GeneAR`)."""
        if self.ar is None:
            raise ValueError("this forecaster has no AR path (ar_lags=0)")
        coef = torch.as_tensor(coef, dtype=self.ar.weight.dtype)
        if coef.numel() != self.ar.weight.numel():
            raise ValueError(
                f"a {self.ar_form} AR path of shape {tuple(self.ar.weight.shape)} cannot start at "
                f"coefficients of shape {tuple(coef.shape)}"
            )
        coef = coef.reshape(self.ar.weight.shape)
        self.ar.weight.copy_(coef)
        self.ar.bias.copy_(torch.as_tensor(intercept, dtype=self.ar.bias.dtype).reshape(-1))
        if getattr(self.ar, "loadings", None) is not None:
            if loadings is None or np.shape(loadings) != tuple(self.ar.loadings.shape):
                raise ValueError(
                    f"the cross-gene term needs loadings {tuple(self.ar.loadings.shape)}"
                )
            self.ar.loadings.copy_(torch.as_tensor(loadings, dtype=self.ar.loadings.dtype))

    def penalty(self) -> torch.Tensor | float:
        """L2 term of the AR path ``linear_l2 * ||W||^2`` (summed-loss scale: :func:`training.fit`
        divides it by the number of training sequences); 0 by default, the AR path being
        regularized by starting at the ridge fit and by early stopping."""
        if self.ar is None or not self.linear_l2:
            return 0.0
        return self.linear_l2 * (self.ar.weight**2).sum()

    def _autoregression(self, x, lengths, window):
        """AR predictions ``(batch, steps, n_outputs)`` and the window to carry on."""
        lags = self.ar_lags
        if window is None:  # before the first step: the first step repeated
            window = x[:, :1].expand(-1, lags - 1, -1)
        extended = torch.cat([window, x], dim=1)  # step t of x sits at t + lags - 1
        steps = x.shape[1]
        # lag j of step t: extended[t + lags - 1 - j]
        design = torch.cat(
            [extended[:, lags - 1 - j : lags - 1 - j + steps] for j in range(lags)], dim=-1
        )
        ends = lengths.to(x.device) + lags - 1  # one past each sequence's last real step
        offsets = torch.arange(lags - 1, 0, -1, device=x.device)  # oldest first
        rows = torch.arange(len(x), device=x.device)[:, None]
        new_window = extended[rows, ends[:, None] - offsets[None, :]]
        return self.ar(design), new_window

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, state=None):
        """One pass over padded inputs ``x`` ``(batch, steps, n_inputs)``.

        Returns ``(predictions, hidden, state)``: next-step predictions ``(batch, steps,
        n_outputs)``, last-layer outputs ``(batch, steps, hidden)`` (zeros on padding; zero
        width for the AR path alone) and the state after each sequence's last real step (pass
        it back as ``state`` to continue the sequences).
        """
        rnn_state, window = state, None
        if self.ar is not None and state is not None:
            rnn_state, window = state["rnn"], state["window"]
        base = x[..., : self.n_outputs] if self.residual else 0.0
        prediction = base
        out, states = x.new_zeros(*x.shape[:2], 0), None
        if self.encoder is not None:
            out, states = self._recurrence(x, lengths, rnn_state)
            prediction = prediction + self.head(self.dropout(out))
        if self.ar is None:
            return prediction, out, states
        ar, window = self._autoregression(x, lengths, window)
        prediction = prediction + ar
        return prediction, out, {"rnn": states, "window": window}

    def _recurrence(self, x, lengths, state):
        out, _, states = self.encoder.run(x, lengths, state)
        return out, states


def build(n_inputs: int, config: dict) -> SequenceForecaster:
    """The forecaster described by a model config (``architecture``, ``n_outputs``, ``residual``).

    Optional keys (absent: the original recurrent forecaster): ``architecture["linear_path"]``
    (bool) adds the AR path on the last ``config["ar_lags"]`` steps, with L2 penalty
    ``architecture["linear_l2"]``, in the form ``architecture["ar_form"]`` (absent: ``"dense"``,
    as files written before the per-gene form) with a cross-gene term of rank
    ``architecture["ar_rank"]`` (per gene only; absent: 0); ``architecture["recurrent"]`` False
    keeps the AR path alone.
    """
    arch = config["architecture"]
    recurrent = bool(arch.get("recurrent", True))
    linear = bool(arch.get("linear_path", False)) or not recurrent
    return SequenceForecaster(
        build_encoder(n_inputs, arch) if recurrent else None,
        int(config["n_outputs"]),
        residual=bool(config.get("residual", True)),
        n_inputs=n_inputs,
        ar_lags=int(config.get("ar_lags", 3)) if linear else 0,
        linear_l2=float(arch.get("linear_l2", 0.0)),
        ar_form=str(arch.get("ar_form", "dense")),
        ar_rank=int(arch.get("ar_rank", 0)),
    )


def rollout(module: SequenceForecaster, x, lengths, later_gaps, device, batch_size: int = 512):
    """One-step forecasts along ``x`` and the rollout of ``1 + later_gaps.shape[1]`` steps.

    ``x`` must carry, at each sequence's last step, the gap channel to the first step rolled
    out; ``later_gaps`` (``(n, k)``, already standardized, or ``None`` for a model without a
    time channel) are the gap channels of the following rolled-out steps: each prediction is
    fed back with them as the next input. Returns standardized numpy arrays
    ``(one_step, hidden, final_hidden, rollout)``.
    """
    n_more = later_gaps.shape[1]
    use_time = module.time_channel

    def step(net, xb, nb, gaps):
        prediction, out, state = net(xb, nb)
        rows = torch.arange(len(nb), device=xb.device)
        last = (nb - 1).to(xb.device)
        current = prediction[rows, last]
        rolled = [current]
        gaps = torch.as_tensor(gaps).to(xb.device)
        ones = torch.ones(len(nb), dtype=torch.int64)
        for j in range(n_more):
            inp = current[:, None, :]
            if use_time:
                inp = torch.cat([inp, gaps[:, j, None, None]], dim=-1)
            next_prediction, _, state = net(inp, ones, state)
            current = next_prediction[:, 0]
            rolled.append(current)
        return prediction, out, out[rows, last], torch.stack(rolled, dim=1)[..., : net.n_outputs]

    return predict_in_batches(step, module, x, lengths, device, later_gaps, batch_size=batch_size)
