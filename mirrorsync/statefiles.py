"""The files in an account's state directory: the lock and the SQLite database.

`state` re-exports all of this. It lives apart so that `mirrorsync.quick` takes the
same lock and opens the database the same way as a full run, without importing
`state`'s dataclasses and logging (a third of a no-op run's time went to imports).
"""

from __future__ import annotations

import fcntl
import os

from mirrorsync.xdg import private_makedirs

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import sqlite3

SCHEMA_VERSION = 1
DB_NAME = "state.sqlite3"
LOCK_NAME = "lock"

# Fault injection for the crash tests (mbsync's discipline: crash after each journal
# step, then prove the next run recovers). When set to N, the process dies as if by
# `kill -9` just before the Nth state commit: after the change it records was made,
# before it is recorded, which is the window where a crash could lose or duplicate.
KILL_ENV = "MIRRORSYNC_TEST_KILL_BEFORE_COMMIT"


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection as every run uses it: autocommit (transactions are explicit), WAL,
    and synchronous=FULL so that a commit is on disk before the run goes on to change
    mail on the strength of it."""
    # The C module: the `sqlite3` package adds 2.5 ms of imports (datetime) that the
    # quick check does without. Its connections are the very same class.
    import _sqlite3

    conn = _sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    except BaseException:
        conn.close()
        raise
    return conn


class AccountLock:
    """An exclusive lock per account, so two runs never interleave on one state.

    flock is released by the kernel when the process dies, so a killed run never
    leaves a stale lock behind. `name` and the wording let the daemon hold a second,
    lifetime lock of the same kind (one daemon per account)."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        account: str,
        name: str = LOCK_NAME,
        busy: str = "is being synced by another mirrorsync process",
        hint: str = "wait for it to finish",
    ) -> None:
        self.path = os.path.join(os.fspath(state_dir), name)
        self.account = account
        self._busy = busy
        self._hint = hint
        self._fd: int | None = None

    def __enter__(self) -> AccountLock:
        private_makedirs(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            from mirrorsync.errors import LockedError  # here: the quick check avoids enum

            raise LockedError(
                f"account {self.account} {self._busy}", f"{self._hint} (lock {self.path})"
            ) from e
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
