"""Servers that throttle: Outlook and Microsoft 365 answer a client that asks too
much with ``NO`` (or ``BAD``) "Request is throttled. Suggested Backoff Time: N
milliseconds", often followed by ``* BYE``. That is no error of the account's: the
same run succeeds after a wait. `ImapStore` raises `Throttled` for such an answer,
wherever in the run it comes, and the caller of a whole run (`cli.sync_account`)
waits and runs the account again, which picks up where the last try stopped (a run
can be cut off anywhere; see docs/sync-algorithm.md), until `MAX_TRIES` or
`MAX_WAIT` seconds of waiting are used up, then says so in one line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

from mirrorsync.errors import ConnectionFailed

_THROTTLED = re.compile(r"\bthrottl", re.IGNORECASE)
_SUGGESTED = re.compile(r"Backoff Time:\s*(\d+)\s*milliseconds", re.IGNORECASE)

MAX_TRIES = 6  # runs of one account, the first included
FIRST_WAIT = 5.0  # seconds, doubled each time, when the server suggests none
LONGEST_WAIT = 300.0  # Outlook suggests up to about 5 minutes
MAX_WAIT = 900.0  # seconds waited in all before giving up

sleep: Callable[[float], None] = time.sleep  # the tests' own, so that they never wait

T = TypeVar("T")


class Throttled(ConnectionFailed):
    """The server refused a command, or closed the connection, for throttling."""

    def __init__(self, address: str, text: str) -> None:
        super().__init__(
            f"{address} is throttling this account ({text})",
            hint="run again later; a smaller max_connections may help",
        )
        self.address = address
        self.text = text

    @property
    def suggested(self) -> float | None:
        """The wait the server suggested, in seconds."""
        found = _SUGGESTED.search(self.text)
        return int(found.group(1)) / 1000 if found else None


def is_throttled(text: str) -> bool:
    return _THROTTLED.search(text) is not None


def run_patiently(attempt: Callable[[], T], warn: Callable[[str], None], what: str) -> T:
    """`attempt()`, and again after each `Throttled`, waiting what the server
    suggested (else 5 s, doubled each time); after `MAX_TRIES` tries, or when the
    next wait would pass `MAX_WAIT` in all, the last `Throttled` is raised, its
    words saying how long was waited."""
    tries, waited, default = 0, 0.0, FIRST_WAIT
    while True:
        tries += 1
        try:
            return attempt()
        except Throttled as e:
            wait = min(e.suggested or default, LONGEST_WAIT)
            default *= 2
            if tries >= MAX_TRIES or waited + wait > MAX_WAIT:
                raise Throttled(
                    e.address,
                    f"{e.text}; gave up after {tries} tries and {waited:g}s of waiting",
                ) from e
            warn(f"{what}: {e.message}; trying again in {wait:g}s")
            sleep(wait)
            waited += wait
