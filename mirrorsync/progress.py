"""What the engine tells about its work as it goes, and how people get to see it.

The engine calls a `Reporter` at a few points (a folder's work starts, a download or
upload of so many messages begins, messages arrive or go up, the folder is done)
and never prints progress itself. The base class only times the folders (for
`sync --json`); `ProgressReporter` shows the work:

* on a terminal, a live bar (tqdm) for long work: messages and bytes done of the
  total, rate, ETA, and the folder in hand. tqdm is imported only then, so a run
  with little to do (the no-op above all) never pays for it;
* off a terminal (cron, a log), one line per folder with long work, at most every
  `LINE_EVERY` seconds, and none for work that finishes sooner.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO

# Work this large gets a live bar on a terminal; less finishes before one helps.
LONG_MESSAGES = 200
LONG_BYTES = 20 * 1024 * 1024
LINE_EVERY = 5.0  # seconds between progress lines off a terminal
BAR_EVERY = 0.2  # seconds between redraws of the bar


class Reporter:
    """Told by the engine what it does; by itself it only times each folder's work."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}  # folder -> seconds its work took
        self._folder = ""
        self._started = 0.0

    def folder(self, name: str) -> None:
        """The engine starts carrying out `name`'s plan."""
        self._folder = name
        self._started = self.clock()

    def begin(self, what: str, messages: int, size: int | None) -> None:
        """`what` ("download", "upload") of `messages` messages, `size` bytes in all
        (None: not known beforehand) starts in the folder in hand."""

    def advance(self, messages: int, size: int) -> None:
        """So many more messages and bytes of the work begun are done."""

    def folder_done(self, name: str) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - self._started

    def close(self) -> None:
        """The account's run ended (also by an error): take any display away."""


class ProgressReporter(Reporter):
    def __init__(
        self,
        account: str,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        terminal: bool | None = None,
    ) -> None:
        super().__init__(clock)
        self.account = account
        self.stream = stream
        self.terminal = is_terminal(stream) if terminal is None else terminal
        self._bar: Any = None
        self._what = ""
        self._total = (0, 0)  # messages, bytes (0: unknown)
        self._done = [0, 0]
        self._began = 0.0
        self._last_line = 0.0
        self._long = False

    def begin(self, what: str, messages: int, size: int | None) -> None:
        self._end_bar()
        self._what = what
        self._total = (messages, size or 0)
        self._done = [0, 0]
        self._began = self._last_line = self.clock()
        self._long = messages >= LONG_MESSAGES or (size or 0) >= LONG_BYTES
        if self.terminal and self._long:
            try:
                from tqdm import tqdm  # only now: see the module's text
            except ImportError:  # installed without its dependencies: lines instead
                self.terminal = False
                return
            self._bar = tqdm(
                total=size or None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"{self.account} {self._folder}: {what}",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=BAR_EVERY,
            )
            self._bar.set_postfix_str(f"0/{messages} messages", refresh=False)

    def advance(self, messages: int, size: int) -> None:
        self._done[0] += messages
        self._done[1] += size
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self._done[0]}/{self._total[0]} messages", refresh=False)
            self._bar.update(size)
            return
        if self.terminal:
            return
        now = self.clock()
        if now - self._last_line >= LINE_EVERY:
            self._last_line = now
            self.stream.write(f"mirrorsync: {self.line(now)}\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        """The work in hand in words: done of total, rate, ETA."""
        (n, size), (total_n, total_size) = self._done, self._total
        took = max(now - self._began, 1e-9)
        rate = size / took
        text = f"[{self.account}] {self._folder}: {self._what} {n}/{total_n} messages"
        if total_size:
            text += f", {_mb(size)}/{_mb(total_size)}"
            if rate > 0:
                left = int((total_size - size) / rate)
                text += f", {_mb(rate)}/s, ETA {left // 60}:{left % 60:02d}"
        else:
            text += f", {_mb(size)}, {_mb(rate)}/s"
        return text

    def folder_done(self, name: str) -> None:
        super().folder_done(name)
        self._end_bar()

    def close(self) -> None:
        self._end_bar()

    def _end_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _mb(size: float) -> str:
    return f"{size / 1_048_576:.1f} MB"


def is_terminal(stream: object) -> bool:
    """Whether `stream` is a terminal (not a closed one)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed
        return False
