"""Process-wide settings every long-running service applies before it starts serving."""

from __future__ import annotations

import gc

# The collector's default first threshold (700 net allocations) is far below what one batch
# of reports keeps alive at once (hundreds of messages, their packets, dicts and records), so
# under load it ran a young-generation collection every few reports, each walking everything
# the batch held (profiles in docs/benchmarks.md). Collections of the young generation still
# run, just less often; reference counting frees almost everything before they do.
_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated (modules, the app, its routes) out of the collector's
    scans, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, older, oldest)
