"""One process per run directory: an advisory ``fcntl.flock`` lock on ``RUN_DIR/.lock``.

The lock is taken before anything in the run directory is read or written and held until the run ends
(or the process dies: the kernel releases it, so a ``kill -9`` never leaves a stale lock). A second
process fails at once with one line naming the holder's pid and host, which the lock file records.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from dits.errors import DitsError
from dits.utils import write_all

LOCK_FILE = ".lock"


class RunLock:
    """The lock of run directory ``root`` (created if missing), held from construction to `release`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / LOCK_FILE
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held open for the life of the lock
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise DitsError(
                f"{self.root} is in use by another dits process ({self.holder()}); wait for it to finish "
                "or stop it, then run again (one run directory takes one process)"
            ) from None
        except BaseException:
            self._file.close()
            raise
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        fd = self._file.fileno()
        os.ftruncate(fd, 0)
        write_all(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {started}\n".encode())

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it."""
        try:
            return self.path.read_text(errors="replace").strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def release(self) -> None:
        """Give the lock up (the lock file stays; only the kernel lock matters)."""
        self._file.close()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
