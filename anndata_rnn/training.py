"""Training loop, early stopping, devices and seeds (task-agnostic)."""

from __future__ import annotations

import copy
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .errors import InputError, TrainingError

log = logging.getLogger("anndata_rnn")

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task."""

    max_epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 10
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.max_epochs < 1:
            raise InputError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"learning rate must be > 0, got {self.lr}")
        if self.patience < 1:
            raise InputError(f"patience must be >= 1, got {self.patience}")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an input error."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was requested but no CUDA GPU is visible to torch: use --device auto "
            "(falls back to the CPU) or --device cpu"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch and ask torch for deterministic kernels.

    On the CPU this makes runs bitwise reproducible; on CUDA cuDNN's RNN kernels are deterministic
    with the workspace setting below, but results may still differ from the CPU's.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def make_loader(tensors: tuple[torch.Tensor, ...], batch_size: int, *, shuffle: bool, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(*tensors), batch_size=batch_size, shuffle=shuffle, generator=generator
    )


def fit(
    module: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    train: tuple[torch.Tensor, ...],
    val: tuple[torch.Tensor, ...] | None,
    config: TrainConfig,
    *,
    device: torch.device,
    seed: int = 0,
    quiet: bool = False,
    description: str = "training",
    val_metric: tuple[str, Callable] | None = None,
) -> dict:
    """Mini-batch Adam with early stopping on the validation loss (best weights restored).

    ``loss_fn(module, batch)`` returns the mean loss of a batch (tensors already on ``device``).
    ``val_metric = (name, fn)`` with ``fn(module, batch) -> (total, count)`` adds a validation
    metric to the progress bar and the history. Returns the training history.
    """
    config.validate()
    module.to(device)
    optimizer = torch.optim.Adam(
        module.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    train_loader = make_loader(train, config.batch_size, shuffle=True, seed=seed)
    has_val = val is not None and len(val[0]) > 0
    val_loader = make_loader(val, config.batch_size, shuffle=False, seed=seed) if has_val else None

    history = {"train_loss": [], "val_loss": []}
    best_loss, best_state, best_epoch, waited = math.inf, None, 0, 0
    bar = tqdm(
        range(1, config.max_epochs + 1), desc=description, disable=quiet, leave=False, unit="epoch"
    )
    for epoch in bar:
        module.train()
        total, count = 0.0, 0
        for batch in train_loader:
            batch = tuple(t.to(device) for t in batch)
            optimizer.zero_grad()
            loss = loss_fn(module, batch)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the training loss became {loss.item()} at epoch {epoch}: lower the learning "
                    "rate (--lr) or check the input for extreme values"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
            optimizer.step()
            total += loss.item() * len(batch[0])
            count += len(batch[0])
        train_loss = total / max(count, 1)
        history["train_loss"].append(train_loss)
        if has_val:
            val_loss, metric = evaluate_loss(module, loss_fn, val_loader, device, val_metric)
            history["val_loss"].append(val_loss)
            postfix = {"train": f"{train_loss:.4f}", "val": f"{val_loss:.4f}"}
            if metric is not None:
                history.setdefault(f"val_{val_metric[0]}", []).append(metric)
                postfix[val_metric[0]] = f"{metric:.3f}"
            bar.set_postfix(postfix)
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, waited = val_loss, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                waited += 1
                if waited >= config.patience:
                    break
        else:
            bar.set_postfix(train=f"{train_loss:.4f}")
            best_epoch = epoch
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    history["best_epoch"] = best_epoch
    history["epochs_run"] = len(history["train_loss"])
    history["stopped_early"] = len(history["train_loss"]) < config.max_epochs
    log.info(
        "%s: %d epochs, best epoch %d%s",
        description,
        history["epochs_run"],
        best_epoch,
        f" (validation loss {best_loss:.4f})" if has_val else "",
    )
    module.eval()
    return history


@torch.no_grad()
def evaluate_loss(module, loss_fn, loader, device, val_metric=None) -> tuple[float, float | None]:
    """Mean validation loss (and metric, when asked) in eval mode."""
    module.eval()
    total, count, metric_total, metric_count = 0.0, 0, 0.0, 0
    for batch in loader:
        batch = tuple(t.to(device) for t in batch)
        total += loss_fn(module, batch).item() * len(batch[0])
        count += len(batch[0])
        if val_metric is not None:
            value, n = val_metric[1](module, batch)
            metric_total += float(value)
            metric_count += int(n)
    metric = metric_total / metric_count if metric_count else None
    return total / max(count, 1), metric
