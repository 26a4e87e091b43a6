"""One run per output directory at a time.

:class:`RunLock` creates ``OUT/.geoseg.lock`` exclusively (``O_EXCL``), with
the holder's host and pid inside. A second run writing the same directory is
refused with a clear message; a lock left by a run that died on this host
(its pid is gone) is taken over, with a note.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable

from geoseg.errors import GeosegError


class LockedError(GeosegError):
    """Another run holds the output directory (exit code 2: fix the command)."""

    exit_code = 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, directory: str | Path, *, echo: Callable[[str], None] = print):
        self.path = Path(directory) / ".geoseg.lock"
        self.echo = echo
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    other = {}
                if other.get("host") == me["host"] and isinstance(other.get("pid"), int) and not _alive(other["pid"]):
                    self.echo(f"note: taking over the lock of a dead run (pid {other['pid']}) on {self.path.parent}")
                    self.path.unlink(missing_ok=True)
                    continue
                raise LockedError(
                    f"another geoseg run (host {other.get('host', '?')}, pid {other.get('pid', '?')}) is writing {self.path.parent}",
                    fix=f"wait for it to finish, or use another output directory; if that run is dead, delete {self.path}",
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
