"""Training loop, early stopping, devices and seeds (task-agnostic)."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.utils.deterministic  # noqa: F401  (the fill flag of deterministic mode)
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)
from tqdm.auto import tqdm

from . import distributed, timing
from .errors import InputError, TrainingError

log = logging.getLogger("anndata_rnn")

DEVICES = ("auto", "cpu", "cuda")


SCHEDULES = ("steps", "epochs")


def default_min_steps() -> int:
    """The step schedule's floor when none is given: 600, or ``ANNDATA_RNN_MIN_STEPS`` (for
    quick trials and the test suite, whose tiny runs need no floor)."""
    return int(os.environ.get("ANNDATA_RNN_MIN_STEPS", "600"))


@dataclass
class TrainConfig:
    """Optimisation settings shared by every task.

    ``schedule="steps"`` (sized for the data; what new runs should use) or ``"epochs"`` (the
    original loop, still the dataclass default so existing callers are unchanged: ``max_epochs``
    passes, early stopping after ``patience`` epochs without improvement).
    With ``"steps"``, ``max_epochs`` and ``patience`` keep their meaning as a number of passes
    over the training set, but are floored so small data still get trained:

    - batch size: ``min(batch_size, max(min_batch, ceil(n_train / 4)))``, so an epoch is >= 4
      optimizer steps;
    - a budget of ``max(max_epochs * steps_per_epoch, min_steps)`` optimizer steps; with
      ``ceiling > 1``, a validation set and the ``min_steps`` floor setting the budget, the
      floor is not a ceiling: training goes on while early stopping has not fired, up to
      ``ceiling`` times the budget (the bounded maximum, ``schedule_for(...)["max_steps"]``);
      when ``max_epochs`` sets the budget it stays the maximum;
    - validation every ``eval_every`` steps (0: ``max(steps_per_epoch, 10)``);
    - early stopping after ``max(patience * steps_per_epoch, min_steps // 2)`` steps without a
      better validation loss, never before ``min_steps`` steps;
    - the learning rate halves after ``lr_patience`` evaluations without improvement of the
      validation loss (``ReduceLROnPlateau``; None: half the early-stopping patience, at least
      2 evaluations; 0 turns it off), down to ``lr / 100``.
    """

    max_epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    patience: int = 10
    weight_decay: float = 0.0
    schedule: str = "epochs"
    min_steps: int | None = None
    min_batch: int = 8
    eval_every: int = 0
    lr_patience: int | None = None
    #: the most steps, as a multiple of the budget, while validation still improves (1: the
    #: budget is the maximum, the original schedule)
    ceiling: int = 1
    #: mixed precision (recorded; the tool enters :func:`precision` around the whole run)
    amp: bool = False

    def __post_init__(self):
        if self.min_steps is None:
            self.min_steps = default_min_steps()

    def validate(self) -> None:
        if self.max_epochs < 1:
            raise InputError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"learning rate must be > 0, got {self.lr}")
        if self.patience < 1:
            raise InputError(f"patience must be >= 1, got {self.patience}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.min_steps < 0 or self.eval_every < 0 or (self.lr_patience or 0) < 0:
            raise InputError("min_steps, eval_every and lr_patience must be >= 0")
        if self.min_batch < 1:
            raise InputError(f"min_batch must be >= 1, got {self.min_batch}")
        if self.ceiling < 1:
            raise InputError(f"ceiling must be >= 1, got {self.ceiling}")

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


def amp_dtype(amp: bool, device) -> torch.dtype | None:
    """The autocast dtype ``amp`` gives on ``device``: bfloat16 on a CUDA GPU that supports it,
    else float16 (trained with a gradient scaler); ``None`` (float32) without ``amp`` or on the
    CPU, whose oneDNN LSTM kernels have no reduced-precision path on most processors."""
    if not amp:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        log.info("--amp: mixed precision runs on CUDA GPUs only; the CPU computes in float32")
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def precision(device, amp: bool):
    """Autocast on ``device`` when ``amp`` (see :func:`amp_dtype`); yields the dtype or None.

    Every forward pass inside (training, validation, inference) runs in mixed precision;
    :func:`fit` adds a gradient scaler when the dtype is float16.
    """
    dtype = amp_dtype(amp, device)
    if dtype is None:
        yield None
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield dtype


def _grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only under float16 autocast (bfloat16 needs none)."""
    fp16 = (
        device.type == "cuda"
        and torch.is_autocast_enabled("cuda")
        and torch.get_autocast_dtype("cuda") == torch.float16
    )
    return torch.amp.GradScaler("cuda", enabled=fp16)


def to_device(batch, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Tensors onto ``device``; asynchronous from pinned memory on CUDA."""
    return tuple(t.to(device, non_blocking=device.type == "cuda") for t in batch)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (the kernels are made deterministic by
    :func:`deterministic`, around the whole run)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


#: cuBLAS needs this workspace setting for deterministic results on CUDA
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic():
    """Deterministic torch kernels for the length of a run, the process's settings restored
    after it (a scanpy user's own torch code keeps its settings).

    On the CPU this makes runs bitwise reproducible; on CUDA cuDNN's RNN kernels are
    deterministic with the cuBLAS workspace setting, but results may still differ from the
    CPU's. A ``CUBLAS_WORKSPACE_CONFIG`` the user set is kept.

    Deterministic mode also fills every new uninitialized tensor with NaN (torch's guard against
    reading uninitialized memory). That fill cost 7 % of a CPU training step (the benchmark's LSTM,
    the same steps with and without it in one process) and changes no result of correct
    kernels, so it is off during the run.
    """
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    set_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        enabled, warn_only, benchmark, cudnn_deterministic, workspace, fill = saved
        set_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def set_deterministic_algorithms(enabled: bool, *, warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms(enabled, warn_only=...)`` without its import of
    ``torch._inductor`` (which pulls in dynamo: seconds of every run's start, measured 3-11 s
    on the shared 2-core machine, for a compiler flag this package never uses). The public call
    is the fallback, and is used once the inductor is imported (it sets the inductor's flag
    too)."""
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        return
    setter(enabled, warn_only=warn_only)


class _Batches(Dataset):
    """Items indexed a whole batch at a time: ``items[k][positions]`` for every item.

    An item is a tensor, or an object that builds the batch on demand when indexed by positions
    (:class:`anndata_rnn.streaming.LazyEncoded`: sequences encoded from the file per batch),
    with ``len()`` and ``take(positions)``.
    """

    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items[0])

    def __getitem__(self, positions):
        return tuple(torch.as_tensor(item[positions]) for item in self.items)


def take(item, positions):
    """The entries ``positions`` of a tensor or of a lazily built item (still lazy)."""
    if isinstance(item, torch.Tensor | np.ndarray):
        return item[positions]
    return item.take(positions)


def n_items(items) -> int:
    return len(items[0])


class BufferedBlocks(Sampler):
    """Shuffled batches that a file on disk can serve fast: contiguous blocks, a shuffle buffer.

    Each pass permutes blocks of ``block`` consecutive positions (rounded up to whole batches),
    takes as many blocks as fit in ``buffer`` positions (at least one) at a time, tells every
    item that can read ahead (``prefetch``, e.g. :class:`anndata_rnn.streaming.LazyEncoded` on
    a file) which positions come next, and yields those positions shuffled in batches of
    ``batch_size``: the approach of scverse's annbatch. Batches mix the buffer's random regions
    of the data (not the whole data at once, as a full permutation does); a pass has
    ``ceil(n / batch_size)`` batches, as with full shuffling.
    """

    def __init__(self, items, batch_size: int, block: int, buffer: int, generator):
        self.items, self.batch_size, self.generator = items, batch_size, generator
        self.n = n_items(items)
        self.block, self.buffer = _block_geometry(block, buffer, batch_size)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self):
        n_blocks = math.ceil(self.n / self.block)
        blocks = torch.randperm(n_blocks, generator=self.generator).numpy()
        for start in range(0, n_blocks, self.buffer):
            chosen = np.sort(blocks[start : start + self.buffer])
            positions = np.concatenate(
                [np.arange(b * self.block, min(self.n, (b + 1) * self.block)) for b in chosen]
            )
            for item in self.items:
                if hasattr(item, "prefetch"):
                    item.prefetch(positions)
            order = positions[torch.randperm(len(positions), generator=self.generator).numpy()]
            for first in range(0, len(order), self.batch_size):
                yield order[first : first + self.batch_size].tolist()


def _read_blocks(items) -> tuple[int, int] | None:
    return next((i.read_blocks for i in items if getattr(i, "read_blocks", None)), None)


def _block_geometry(block: int, buffer: int, batch_size: int) -> tuple[int, int]:
    """(positions per block: ``block`` rounded up to whole batches, blocks per buffer)."""
    block = max(1, math.ceil(block / batch_size)) * batch_size
    return block, max(1, buffer // block)


def batch_order(items, batch_size: int) -> str:
    """How :func:`make_loader` shuffles ``items`` in batches of ``batch_size`` (for the record)."""
    blocks = _read_blocks(items)
    if not blocks:
        return "random"
    block, per_buffer = _block_geometry(*blocks, batch_size)
    return f"blocks of {block} in a shuffle buffer of {block * per_buffer}"


def make_loader(items: tuple, batch_size: int, *, shuffle: bool, seed: int, device=None):
    """Batches of ``items`` (pinned for fast copies when ``device`` is a CUDA device).

    The order is DataLoader's own (``shuffle=True``: a permutation per pass drawn from a
    generator seeded with ``seed``), so tensors and lazily encoded items give the same batches.
    When an item reads from a file (``read_blocks = (block, buffer)``, in positions), shuffled
    batches come
    from :class:`BufferedBlocks` instead, with the same seeded generator.
    """
    generator = torch.Generator().manual_seed(seed)
    pin = device is not None and torch.device(device).type == "cuda"
    dataset = _Batches(items)
    blocks = _read_blocks(items)
    if shuffle and blocks:
        batches = BufferedBlocks(items, batch_size, *blocks, generator)
    else:
        order = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
        batches = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,  # the sampler yields whole batches of positions
        generator=generator,
        pin_memory=pin,
    )


#: a fit whose final training loss is not this fraction below its starting loss has failed
FAILED_FIT_TOLERANCE = 0.02


@timing.timed("training")
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
    initial_candidate: bool = False,
    reference_loss: float | None = None,
) -> dict:
    """Mini-batch Adam with early stopping on the validation loss (best weights restored).

    ``loss_fn(module, batch)`` returns the mean loss of a batch (tensors already on ``device``).
    When the module has a ``penalty()`` method (the L2 term of a linear path, on the scale of a
    summed loss), ``penalty() / n_train`` is added to the mean training loss (never to the
    validation loss or the reported losses); ``n_train`` is the number of training sequences.
    ``val_metric = (name, fn)`` with ``fn(module, batch) -> (loss, total, count)`` (the batch's
    mean loss, as ``loss_fn``'s, and the metric's sum and count, from one forward pass) adds a
    validation metric to the progress bar and the history. ``initial_candidate=True`` counts
    the untrained weights as a candidate for the best (a forecaster starting at persistence or
    a fitted AR, an autoencoder starting at PCA, never ends worse than its start on the
    validation set; the history then holds ``initial_val_loss``, and ``best_step`` /
    ``best_epoch`` is 0 when the start was kept). ``reference_loss`` is the loss a model that
    learned nothing has (default: the loss of the weights given, i.e. ~ln K for a fresh K-class
    classifier); pass it when the weights are warm-started (e.g. ``ln K``).

    The schedule follows ``config.schedule`` (see :class:`TrainConfig`). Returns the training
    history: per evaluation ``train_loss``, ``val_loss`` (and the metric); ``best_epoch``,
    ``epochs_run``, ``stopped_early``; ``steps_run``, ``best_step``, ``batch_size``,
    ``eval_every`` (steps), ``lr`` per evaluation; ``best_val_loss`` (with validation data);
    ``start_loss`` and ``final_train_loss`` (mean training loss of the untrained and of the
    returned weights, eval mode) and ``failed_fit`` (True when the final
    training loss is not ``FAILED_FIT_TOLERANCE`` below the start, e.g. still ~ln K for K
    classes: the task should warn and mark its table).
    """
    config.validate()
    module.to(device)
    net = module
    if distributed.active():  # torchrun: this rank's shard, gradients averaged by DDP
        positions = torch.as_tensor(distributed.shard(n_items(train), seed, 0))
        train = tuple(take(t, positions) for t in train)
        net = _DistributedModule(module, device)
        quiet = quiet or not distributed.is_main()
    start_loss = dataset_loss(module, loss_fn, train, config.batch_size, device, seed)
    history = _fit_steps(
        net, loss_fn, train, val, config, device, seed, quiet, description, val_metric,
        initial_candidate,
    )  # fmt: skip
    final_loss = dataset_loss(module, loss_fn, train, config.batch_size, device, seed)
    reference = start_loss if reference_loss is None else float(reference_loss)
    history["start_loss"] = start_loss
    history["reference_loss"] = reference
    history["final_train_loss"] = final_loss
    history["failed_fit"] = bool(
        math.isfinite(reference) and final_loss > reference * (1 - FAILED_FIT_TOLERANCE)
    )
    if history["failed_fit"]:
        log.info(
            "%s: the training loss stayed at its starting value (%.4f -> %.4f): the model "
            "learned nothing; try more steps (--epochs), a higher learning rate (--lr) or "
            "smaller batches (--batch-size)",
            description,
            reference,
            final_loss,
        )
    module.eval()
    return history


class _DistributedModule(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that still answers the wrapped network's attributes (``level``,
    ``penalty``, ``param_groups``) the tasks' loss functions read."""

    def __init__(self, module, device):
        ids = [device.index or 0] if device.type == "cuda" else None
        super().__init__(module, device_ids=ids)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _param_groups(module, lr: float):
    """``module.param_groups(lr)`` when the module defines learning rates per part."""
    groups = getattr(module, "param_groups", None)
    return groups(lr) if groups is not None else module.parameters()


def _penalty(module) -> torch.Tensor | None:
    penalty = getattr(module, "penalty", None)
    if penalty is None:
        return None
    value = penalty()
    return value if isinstance(value, torch.Tensor) else None


def _train_step(module, loss_fn, batch, optimizer, scaler, where: str, n_train: int = 1) -> float:
    optimizer.zero_grad()
    loss = loss_fn(module, batch)
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the training loss became {loss.item()} at {where}: lower the learning "
            "rate (--lr) or check the input for extreme values"
        )
    penalty = _penalty(module)
    scaler.scale(loss + penalty / n_train if penalty is not None else loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients (a no-op when the scaler is off)
    torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def dataset_loss(module, loss_fn, train, batch_size=256, device="cpu", seed=0) -> float:
    """Mean loss of ``module`` over a whole data set (eval mode, no gradients)."""
    if n_items(train) == 0:
        return math.nan
    loader = make_loader(train, max(batch_size, 256), shuffle=False, seed=seed)
    return evaluate_loss(module, loss_fn, loader, device)[0]


def schedule_for(n_train: int, config: TrainConfig) -> dict:
    """The step schedule ``config`` gives a training set of ``n_train`` samples (see
    :class:`TrainConfig`): ``batch_size``, ``steps_per_epoch``, ``budget``, ``max_steps`` (the
    bounded maximum: ``ceiling`` × the budget when the ``min_steps`` floor sets the budget, else
    the budget: ``max_epochs`` stays a maximum), ``eval_every``, ``patience_steps``,
    ``lr_patience``, ``min_steps`` and ``val_batch_size``.

    ``schedule="epochs"`` is the same loop without the floors: batches of ``batch_size``,
    ``max_epochs`` passes, validation after each, early stopping after ``patience`` passes
    without improvement, no learning-rate schedule."""
    if config.schedule == "epochs":
        batch = max(1, config.batch_size)
        per_epoch = math.ceil(n_train / batch)
        return {
            "batch_size": batch,
            "steps_per_epoch": per_epoch,
            "budget": config.max_epochs * per_epoch,
            "max_steps": config.max_epochs * per_epoch,
            "eval_every": max(per_epoch, 1),
            "patience_steps": config.patience * per_epoch,
            "lr_patience": 0,
            "min_steps": 0,
            "val_batch_size": batch,
        }
    batch = min(config.batch_size, max(config.min_batch, math.ceil(n_train / 4)))
    batch = max(1, min(batch, n_train))
    per_epoch = math.ceil(n_train / batch)
    out = {
        "batch_size": batch,
        "steps_per_epoch": per_epoch,
        "budget": max(config.max_epochs * per_epoch, config.min_steps),
        "eval_every": config.eval_every or max(per_epoch, 10),
        "patience_steps": max(config.patience * per_epoch, config.min_steps // 2),
        "min_steps": config.min_steps,
        "val_batch_size": 256,
    }
    # the ceiling extends the step floor only: when max_epochs governs, it is the maximum
    floor_governs = config.min_steps > config.max_epochs * per_epoch
    out["max_steps"] = out["budget"] * config.ceiling if floor_governs else out["budget"]
    if config.lr_patience is None:
        out["lr_patience"] = max(2, out["patience_steps"] // out["eval_every"] // 2)
    else:
        out["lr_patience"] = config.lr_patience
    return out


def _fit_steps(
    module,
    loss_fn,
    train,
    val,
    config,
    device,
    seed,
    quiet,
    description,
    val_metric,
    initial_candidate,
):
    """The training loop, counted in optimizer steps (see :class:`TrainConfig` and
    :func:`schedule_for`; ``schedule="epochs"`` evaluates after every pass)."""
    epochs = config.schedule == "epochs"
    plan = schedule_for(n_items(train), config)
    optimizer = torch.optim.Adam(
        _param_groups(module, config.lr), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = None
    if plan["lr_patience"]:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=0.5,
            patience=plan["lr_patience"],
            min_lr=[g["lr"] / 100 for g in optimizer.param_groups],
        )
    scaler = _grad_scaler(device)
    train_loader = make_loader(train, plan["batch_size"], shuffle=True, seed=seed, device=device)
    has_val = val is not None and n_items(val) > 0
    val_loader = (
        make_loader(val, plan["val_batch_size"], shuffle=False, seed=seed, device=device)
        if has_val
        else None
    )

    # (the epoch schedule's history keeps its original keys: no learning rate, no max_steps)
    history = (
        {"train_loss": [], "val_loss": []}
        if epochs
        else {"train_loss": [], "val_loss": [], "lr": []}
    )
    best_loss, best_state, best_step = math.inf, None, 0
    if has_val and initial_candidate:
        best_loss = distributed.mean(evaluate_loss(module, loss_fn, val_loader, device)[0])
        best_state = copy.deepcopy(module.state_dict())
        history["initial_val_loss"] = best_loss
    # beyond the budget only while early stopping (on the validation loss) has not fired
    limit = plan["max_steps"] if has_val else plan["budget"]
    per_epoch = plan["steps_per_epoch"]
    bar = tqdm(total=limit, desc=description, disable=quiet, leave=False, unit="step")
    # (the benchmark times the loop, validation included, from this record to the summary)
    log.debug("%s: training loop starts (at most %d steps)", description, limit)
    step, total, count = 0, 0.0, 0
    batches = iter(train_loader)
    stopped = False
    while step < limit:
        module.train()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(train_loader)
            batch = next(batches)
        batch = to_device(batch, device)
        where = f"epoch {step // per_epoch + 1}" if epochs else f"step {step + 1}"
        loss = _train_step(module, loss_fn, batch, optimizer, scaler, where, n_items(train))
        step += 1
        bar.update(1)
        total += loss * len(batch[0])
        count += len(batch[0])
        if step % plan["eval_every"] and step < limit:
            continue
        train_loss = total / max(count, 1)
        total, count = 0.0, 0
        history["train_loss"].append(train_loss)
        if not epochs:
            history["lr"].append(optimizer.param_groups[0]["lr"])
        postfix = {"train": f"{train_loss:.4f}"}
        monitored = train_loss
        if has_val:
            val_loss, metric = evaluate_loss(module, loss_fn, val_loader, device, val_metric)
            val_loss = distributed.mean(val_loss)
            history["val_loss"].append(val_loss)
            postfix["val"] = f"{val_loss:.4f}"
            if metric is not None:
                history.setdefault(f"val_{val_metric[0]}", []).append(metric)
                postfix[val_metric[0]] = f"{metric:.3f}"
            monitored = val_loss
            if val_loss < best_loss - 1e-6:
                best_loss, best_step = val_loss, step
                best_state = copy.deepcopy(module.state_dict())
        else:
            best_step = step
        bar.set_postfix(postfix)
        if scheduler is not None:
            scheduler.step(monitored)
        if has_val and step >= plan["min_steps"] and step - best_step >= plan["patience_steps"]:
            stopped = True
            break
    bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    if has_val:
        history["best_val_loss"] = best_loss
    if epochs:
        return _epoch_history(history, best_step, step, per_epoch, config, description, has_val)
    history["best_step"] = best_step
    history["steps_run"] = step
    history["best_epoch"] = math.ceil(best_step / per_epoch)
    history["epochs_run"] = math.ceil(step / per_epoch)
    history["stopped_early"] = stopped
    history["max_steps"] = limit
    history["batch_size"] = plan["batch_size"]
    history["eval_every"] = plan["eval_every"]
    log.info(
        "%s: %d steps (batch %d, %d per epoch), best step %d%s",
        description,
        step,
        plan["batch_size"],
        per_epoch,
        best_step,
        f" (validation loss {best_loss:.4f})" if has_val else "",
    )
    return history


def _epoch_history(history, best_step, step, per_epoch, config, description, has_val) -> dict:
    """The history of the epoch schedule, in its original keys and order."""
    best_epoch = best_step // max(per_epoch, 1)
    history["best_epoch"] = best_epoch
    history["epochs_run"] = len(history["train_loss"])
    history["stopped_early"] = len(history["train_loss"]) < config.max_epochs
    history["steps_run"] = step
    history["best_step"] = best_epoch * max(per_epoch, 1)
    history["batch_size"] = config.batch_size
    history["eval_every"] = max(per_epoch, 1)
    log.info(
        "%s: %d epochs, best epoch %d%s",
        description,
        history["epochs_run"],
        best_epoch,
        f" (validation loss {history['best_val_loss']:.4f})" if has_val else "",
    )
    return history


@torch.no_grad()
def evaluate_loss(module, loss_fn, loader, device, val_metric=None) -> tuple[float, float | None]:
    """Mean validation loss (and metric, when asked) in eval mode."""
    module.eval()
    total, count, metric_total, metric_count = 0.0, 0, 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        if val_metric is None:
            loss = loss_fn(module, batch)
        else:  # the metric's function returns the loss too: one forward pass per batch
            loss, value, n = val_metric[1](module, batch)
            metric_total += float(value)
            metric_count += int(n)
        total += loss.item() * len(batch[0])
        count += len(batch[0])
    metric = metric_total / metric_count if metric_count else None
    return total / max(count, 1), metric
