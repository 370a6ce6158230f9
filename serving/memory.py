"""Hands the C allocator's free memory back to the system after a large request.

TensorFlow's CPU tensors come from the C library's malloc. After a request that needed
gigabytes, glibc keeps the freed pages in its arenas, so the server's resident memory
stays at the request's peak; `malloc_trim(0)` returns them. Where the C library has no
`malloc_trim` (musl, macOS), this does nothing.

Example:
    >>> release_free_memory()
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


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
    return True
