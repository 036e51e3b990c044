"""One writer per workdir: a lock file naming the run that holds it (pid, host, start time).

A second run on the same workdir stops at once (``WorkdirLockedError``, exit 3). A lock left by a
process that died on this host is stale and taken over. The lock is created atomically
(``O_CREAT | O_EXCL``), so two runs starting together cannot both get it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket

from jaxdl.errors import WorkdirLockedError

LOCK_NAME = ".jaxdl.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """Context manager holding ``<workdir>/.jaxdl.lock`` for the duration of a run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_NAME)
        self._held = False

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def acquire(self) -> None:
        """Takes the lock, or raises ``WorkdirLockedError`` naming the live holder."""
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                here = holder is not None and holder.get("host") == record["host"]
                pid = int(holder.get("pid", -1)) if holder is not None else -1
                # Half-written by a killed run, its owner died, or this process holds it already
                # (an earlier trainer on the same workdir that was never released).
                if holder is None or (here and (pid == os.getpid() or not _alive(pid))):
                    os.remove(self.path)
                    continue
                raise WorkdirLockedError(
                    f"{os.path.dirname(self.path)} is in use by another run (pid "
                    f"{holder.get('pid')} on {holder.get('host')}, started {holder.get('started')})"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            self._held = True
            return
        raise WorkdirLockedError(f"cannot take the lock {self.path}")

    def release(self) -> None:
        if self._held:
            self._held = False
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
