"""glibc's heap thresholds in a command-line process (nothing in a Python session).

torch's CPU tensors come from ``malloc``. glibc serves an allocation above its mmap threshold
from a fresh mapping that the kernel zero-fills page by page, and gives it back when it is
freed; the threshold rises by itself up to 32 MB only. An LSTM's per-batch buffers are larger
(one layer's gates for a batch: 512 cells × 63 steps × 4 × 128 units = 66 MB at predict's
defaults; 8 MB for a training batch of 64, with its backward buffers beside it), so with a low
threshold every batch maps and faults its memory afresh. Measured on the 2-core machine: a
default ``classify`` of pbmc68k_reduced 27.7–28.2 s with a 1 MB threshold, 4.2 million page
faults and 8.5–8.8 s of system time; 22.5–22.9 s, 0.12 million and 1.5–1.6 s with the
thresholds of :data:`IN_MEMORY`. A 100,000-cell ``predict``: 2.96–2.98 million faults and
6.7–7.2 s of system time against 0.16 million and 1.1–1.8 s.

Training from streamed batches (:class:`anndata_rnn.streaming.LazyEncoded`) is the exception:
its batches of a few MB are allocated and freed among long-lived arrays, and served from the
heap they fragmented it to twice the live memory (3.7 GB peak RSS for a 300,000-cell
``classify`` whose live memory was 2 GB; 1.9 GB with a fixed 1 MB threshold, 3.5 GB with 4 MB).
Such a run switches to :data:`STREAMED_TRAINING` when its first lazily encoded item is made.

The user's own ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` wins: then nothing is
set. On other C libraries nothing is set either.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger("anndata_rnn")

#: glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's default trim threshold (freed memory above it at the top of the heap is given back)
DEFAULT_TRIM_THRESHOLD_BYTES = 128 * 1024
#: a command line's start: buffers up to 256 MB stay in the heap, and up to 128 MB of freed
#: heap is kept for the next batch
IN_MEMORY = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 128 << 20}
#: training from streamed batches: arrays of 1 MB and more get their own mappings
STREAMED_TRAINING = {M_MMAP_THRESHOLD: 1 << 20, M_TRIM_THRESHOLD: DEFAULT_TRIM_THRESHOLD_BYTES}
#: environment variables through which the user sets the thresholds (they win)
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

#: the thresholds this process set ({} when none: a Python session, or the user's own)
POLICY: dict = {}


def _mallopt(settings: dict) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
        for parameter, value in settings.items():
            libc.mallopt(parameter, value)
    except (OSError, AttributeError):  # not glibc
        return False
    return True


def _describe(settings: dict) -> str:
    return (
        f"mmap threshold {settings[M_MMAP_THRESHOLD] >> 20} MB, "
        f"trim threshold {settings[M_TRIM_THRESHOLD] >> 10} kB"
    )


def set_for_command_line(environ=None) -> None:
    """At a command's start: :data:`IN_MEMORY` (see the module docstring)."""
    environ = os.environ if environ is None else environ
    POLICY.clear()
    if not sys.platform.startswith("linux") or any(name in environ for name in USER_SETTINGS):
        return
    if _mallopt(IN_MEMORY):
        POLICY.update(name="in memory", settings=dict(IN_MEMORY))
        log.debug("glibc heap: %s", _describe(IN_MEMORY))


def set_for_streamed_training() -> None:
    """:data:`STREAMED_TRAINING`, in a process whose thresholds :func:`set_for_command_line`
    set (never in a Python session's)."""
    if not POLICY or POLICY["name"] == "streamed training":
        return
    if _mallopt(STREAMED_TRAINING):
        POLICY.update(name="streamed training", settings=dict(STREAMED_TRAINING))
        log.debug("glibc heap, training from streamed batches: %s", _describe(STREAMED_TRAINING))
