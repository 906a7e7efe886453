"""Progress bars for long work (conversion, export, benchmarks); silent in quiet mode."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, quiet: bool = False, unit: str = "B") -> tqdm:
    """A byte-counting bar (shows bytes/s) on stderr; disabled when quiet."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024,
                disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True)
