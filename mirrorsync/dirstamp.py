"""A Maildir folder's change stamp, read with two `stat` calls and no other import.

`maildir.MaildirFolder.stamp()` wraps this in a `Stamp` (which knows when a stamp
can be trusted); `mirrorsync.quick` compares the `value` alone with the one the
state recorded. Both read it here, so the quick check can never disagree with a full
sync about whether a folder changed.
"""

from __future__ import annotations

import os
import time

# Tests move the settle clock forward instead of sleeping: a stamp (or a config
# file's times) counts as settled only once it is clearly older than this clock, so
# a test that advances it reaches steady state at once. A subprocess reads the
# same variable, so kill tests see the same time as the test.
CLOCK_SKEW_ENV = "MIRRORSYNC_TEST_CLOCK_SKEW"


def settle_now() -> float:
    """The time that decides whether a stamp has settled: the wall clock, plus the
    skew a test gave with MIRRORSYNC_TEST_CLOCK_SKEW (seconds)."""
    skew = os.environ.get(CLOCK_SKEW_ENV)
    return time.time() + float(skew) if skew else time.time()


def read_stamp(folder_dir: str | os.PathLike[str]) -> tuple[str, float, float, bool] | None:
    """(value, newest mtime, time taken, sub-second mtimes) of the folder in
    `folder_dir`, from the mtimes of its cur/ and new/; None when either is missing
    or unreadable. Any delivery, rename or unlink in either directory changes its
    mtime, so an equal value means an unchanged folder, provided the stamp was
    settled when it was recorded (see `maildir.Stamp`)."""
    try:
        cur = os.stat(os.path.join(folder_dir, "cur"))
        new = os.stat(os.path.join(folder_dir, "new"))
    except OSError:
        return None
    return (
        f"{cur.st_mtime_ns}:{new.st_mtime_ns}",
        max(cur.st_mtime, new.st_mtime),
        settle_now(),
        bool(cur.st_mtime_ns % 1_000_000_000 or new.st_mtime_ns % 1_000_000_000),
    )
