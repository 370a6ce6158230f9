"""The lock that keeps two `lmpipe run`s from working on the same folders at once.

An exclusive, non-blocking `flock` on `<run.work_dir>/lmpipe-run.lock`: the kernel drops
it when its process dies, however it dies, so a lock left by a killed run is taken over
at once; the file records the holder's pid for the message a second run prints.

Example:
    >>> with RunLock("work/runs") as lock:
    ...     ...                      # a second process gets RunLocked here
"""

from __future__ import annotations

import fcntl
import os

from pipeline.core.errors import LmpipeError


class RunLocked(LmpipeError):
    """Another `lmpipe run` holds the lock."""

    exit_code = 11


class RunLock:
    """An exclusive `flock` on `<work_dir>/lmpipe-run.lock` for `lmpipe run`, as a context manager;
    a second holder gets RunLocked (exit 11); a lock left by a dead process is taken over
    (`previous_pid`).

    Example:
        >>> with RunLock("work"):
        ...     run_every_stage()
    """

    def __init__(self, work_dir: str) -> None:
        self.path = os.path.join(work_dir, "lmpipe-run.lock")
        self._fd: int | None = None
        self.previous_pid: int | None = None  # a dead holder whose lock was taken over

    def __enter__(self) -> "RunLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"another lmpipe run (pid {holder}) is running with this work folder "
                            f"({self.path}); this run exits without touching anything") from None
        previous = os.read(fd, 64).decode(errors="replace").strip()
        self.previous_pid = int(previous) if previous.isdigit() else None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
