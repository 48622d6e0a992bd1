"""What every part of one account's sync shares: its options, its reports, one
folder's gathered inputs, and the server selection the parts take turns with."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from mirrorsync.errors import (
    ConnectionFailed,
    MirrorsyncError,
    ServerError,
    StateError,
    abridged,
)
from mirrorsync.maildir import (
    Maildir,
    Stamp,
)
from mirrorsync.model import Flags, FolderStatus, Pair
from mirrorsync.state import FolderState, State

if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig
    from mirrorsync.progress import Reporter
    from mirrorsync.remote import RemoteStore
    from mirrorsync.sync import actions as act
    from mirrorsync.sync.oracle import Oracle
    from mirrorsync.sync.plan import Match
    from mirrorsync.sync.views import LocalView, Located

log = logging.getLogger(__name__)
A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    force: bool = False
    folders: tuple[str, ...] = ()  # --folder: only these (canonical names)
    # Trust no recorded position or stamp: list every folder on both sides and compare
    # with the state (`sync --verify`, the daemon's periodic check), so a drift that
    # counts and MODSEQs cannot show is found and healed.
    verify: bool = False
    # `sync --recover`: how a sync without a state reads what it cannot know (see
    # `recovery`); None: not chosen, every copy is kept and the warning says so.
    recover: str | None = None


@dataclass
class FolderReport:
    name: str
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"{abridged(self.name)}: FAILED: {self.error}"
        parts = [f"{n} {k}" for k, n in sorted(self.counts.items()) if n]
        return f"{self.name}: " + (", ".join(parts) if parts else "in sync")


@dataclass
class AccountReport:
    account: str
    folders: list[FolderReport] = field(default_factory=list)

    @property
    def failed(self) -> list[FolderReport]:
        return [f for f in self.folders if f.error]


@dataclass
class FolderInputs:
    """Everything the planner needs for one folder, and what the executor must know
    to carry its plan out safely (the positions and stamp to record)."""

    name: str
    status: FolderStatus | None  # None: no server folder yet (dry-run of a create)
    prior: FolderState | None
    pairs: list[Pair]
    remote: dict[int, Flags]
    local: LocalView  # answers where each file is, listing the folder only on a miss
    matches: list[Match]
    uidvalidity_changed: bool = False
    stamp: Stamp | None = None  # taken before the scan
    sizes: dict[int, int] = field(default_factory=dict)  # RFC822.SIZE where known
    pending_match: bool = False  # a move whose new UID is unknown: match next run
    known: int | None = None  # pairs in the state; None: `pairs` holds all of them
    # UIDs this run moved in: their server flags are known exactly (we just moved
    # them), so their stores need no UNCHANGEDSINCE, whose MODSEQ our move outdated.
    moved_in: set[int] = field(default_factory=set)
    # What a verifying run found and left alone (see `_drop_duplicates`): counts for
    # the folder's report.
    found: dict[str, int] = field(default_factory=dict)


class SyncBase:
    """The account's stores, state and options, which every part of the sync reads;
    `AccountSync` sets them."""

    account: AccountConfig
    remote: RemoteStore
    maildir: Maildir
    state: State
    options: SyncOptions
    emit: Callable[[str], None]
    reporter: Reporter
    statuses: dict[str, FolderStatus]
    prior: dict[str, FolderState]
    _selected: str | None
    _selected_status: FolderStatus | None
    _local_names_all: list[str]
    _pair_counts: dict[str, int] | None
    _oracle: Oracle | None

    def _select(self, name: str, expected: FolderStatus | None = None) -> FolderStatus:
        """Select `name` unless it already is; a UIDVALIDITY that moved since the
        folder was gathered voids the plan."""
        if self._selected == name and self._selected_status is not None:
            return self._selected_status
        # A SELECT that fails leaves no folder selected (RFC 3501 6.3.1): forget the
        # old one first, or the next folder would count on a selection that is gone.
        self._selected = None
        status = self.remote.select(name)
        self._selected, self._selected_status = name, status
        if expected is not None and status.uidvalidity != expected.uidvalidity:
            raise ServerError(
                f"{name}: UIDVALIDITY changed during the sync; nothing was lost",
                "run the sync again",
            )
        return status

    def _located(self) -> Located | None:
        """The oracle's check of files found by their likely names (tests only)."""
        return self._oracle.check_located if self._oracle else None

    @property
    def _qresync(self) -> bool:
        return "QRESYNC" in self.remote.capabilities


def _of(plan: Sequence[act.MessageAction], kind: type[A]) -> list[A]:
    return [a for a in plan if isinstance(a, kind)]


def _started_row(inputs: FolderInputs, needs_match: bool) -> FolderState:
    """The folder's state row while its sync is under way: the old server position
    (an interrupted run must leave the next one a full picture), no local stamp, and
    `needs_match` when a copy or move could be cut off before its state commit."""
    prior, status = inputs.prior, inputs.status
    assert status is not None
    keep = prior is not None and not inputs.uidvalidity_changed
    return FolderState(
        inputs.name,
        status.uidvalidity,
        prior.uidnext if prior and keep else 0,
        prior.highestmodseq if prior and keep else 0,
        needs_match=needs_match or bool(prior and prior.needs_match),
        local_stamp="",
        last_sync=prior.last_sync if prior else 0.0,
    )


def _guarded(rep: FolderReport, fn: Callable[..., R], *args: object) -> R | None:
    """Run one folder's step; its failure is the folder's (named in the report), a
    lost connection is the account's."""
    try:
        return fn(*args)
    except (ConnectionFailed, StateError):
        raise  # the connection and the state are the whole account's
    except MirrorsyncError as e:
        rep.error = str(e)
        return None
    except OSError as e:
        # The local stores word their OS errors; one they did not foresee (the file
        # system refusing a path, say) is still this folder's, not a crash of the run.
        # Only a file's: an error without a file name (a socket's) is not the folder's.
        if e.filename is None:
            raise
        rep.error = f"{e.strerror or e}: {e.filename}"
        return None
