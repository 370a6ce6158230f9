"""Hands the C allocator's free memory back to the system after a large request.

TensorFlow's CPU tensors come from the C library's malloc. After a request that needed
gigabytes, glibc keeps the freed pages in its arenas, so the server's resident memory
stays at the request's peak; `malloc_trim(0)` returns them. Where the C library has no
`malloc_trim` (musl, macOS), this does nothing.

A trim costs 0.25-0.5 ms and makes the next run fault its pages in again, so the server
trims only when its resident memory has grown by `slack` over the lowest it has been
after a trim (`release_free_memory_if_grown`): after the large requests that need it, not
after each small one (a stream calls the graph once per token).

Example:
    >>> release_free_memory()
    True
    >>> release_free_memory_if_grown()   # False: nothing grew since the last trim
    False
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

GROWTH_SLACK = 128 * 2**20  # bytes of resident growth that make a trim worth its cost
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_lowest = [None]  # the lowest resident size seen right after a trim


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Returns freed heap memory to the system; True where the C library can."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    after = resident_bytes()
    if after is not None:
        _lowest[0] = after if _lowest[0] is None else min(_lowest[0], after)
    return True


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc/self/statm), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def release_free_memory_if_grown(slack: int = GROWTH_SLACK) -> bool:
    """Trims (`release_free_memory`) only when resident memory is `slack` bytes over the
    lowest it has been after a trim (always where it cannot be read); True when it
    trimmed. The floor never rises, so memory left over from a large request is released
    by the next request that ends after it."""
    resident = resident_bytes()
    if resident is not None and _lowest[0] is not None and resident - _lowest[0] < slack:
        return False
    return release_free_memory()
