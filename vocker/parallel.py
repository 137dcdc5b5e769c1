"""Thread-pool mapping that stops promptly on Ctrl-C or the first error.

hashlib, zstd and file I/O release the GIL, so threads give real parallelism for
store work. ``ThreadPoolExecutor``'s own exit would finish every queued item first.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return min(8, (os.cpu_count() or 2) * 2)


def pmap(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> list[R]:
    from concurrent.futures import ThreadPoolExecutor  # imported on use: most commands never need it

    pool = ThreadPoolExecutor(max_workers=workers or default_workers())
    try:
        result = list(pool.map(fn, items))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return result
