"""One account's sync: gather both sides and the state, plan, execute.

Cost follows what changed. One LIST-STATUS (or STATUS per folder) tells which server
folders moved since the last sync (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ); two stat
calls tell which Maildirs did. A folder unchanged on both sides is neither selected
nor listed. A changed server folder costs a QRESYNC/CONDSTORE delta where the server
has one (a full UID/FLAGS listing where it does not); a changed Maildir costs one
listdir of cur/ and new/, never a file open.

The executor applies the plan in an order chosen so that a kill at any instant is
recoverable: changes are made on a side first and recorded in the state after, and
a folder that copies messages is marked `needs_match` before the first copy and
unmarked only after the last state commit. A marked folder is reconciled by content
on the next run (see `matching`), so a copy whose state row was lost is linked, not
copied again. The server's new HIGHESTMODSEQ and the Maildir's stamp are recorded
only when the folder's sync completed, so an interrupted run never hides a change
from the next one.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from mirrorsync import flags as flagmod
from mirrorsync.errors import (
    ConnectionFailed,
    GuardError,
    LocalRootMissing,
    LocalStoreError,
    MirrorsyncError,
    ServerError,
    StateError,
    abridged,
)
from mirrorsync.maildir import Entry as ListedFile
from mirrorsync.maildir import (
    Maildir,
    MaildirFolder,
    MessageVanished,
    PendingDelivery,
    Stamp,
)
from mirrorsync.model import Flags, FolderChanges, FolderStatus, LocalMessage, Pair
from mirrorsync.names import DELIMITER_META, stored_delimiter
from mirrorsync.naming import kept_local, settle_prefix
from mirrorsync.state import FolderState, PairRow, State
from mirrorsync.xdg import private_makedirs

# What only a changed folder needs is imported when one is met, so that a run that
# finds nothing to do does not spend its time importing (see also cli.py).
if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig
    from mirrorsync.content import LfWriter
    from mirrorsync.remote import RemoteStore
    from mirrorsync.sync import actions as act
    from mirrorsync.sync.oracle import Oracle
    from mirrorsync.sync.plan import Match

log = logging.getLogger(__name__)
A = TypeVar("A")

DOWNLOAD_BATCH = 500  # messages per group commit (files fsynced together, one txn)
DOWNLOAD_BATCH_BYTES = 8 * 1024 * 1024  # bounds memory: a batch is held until it is fsynced
LARGE_MESSAGE = 8 * 1024 * 1024  # streamed to disk in chunks, never held whole
UPLOAD_BATCH = 50  # files per append_many and per group commit
UPLOAD_BATCH_BYTES = 8 * 1024 * 1024  # bounds memory: a batch is held until it is sent
NOT_UPLOADED = "not uploaded"


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    force: bool = False
    folders: tuple[str, ...] = ()  # --folder: only these (canonical names)
    # Trust no recorded position or stamp: list every folder on both sides and compare
    # with the state (`sync --verify`, the daemon's periodic check), so a drift that
    # counts and MODSEQs cannot show is found and healed.
    verify: bool = False


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
    """Everything the planner needs for one folder, and how it was learned."""

    name: str
    status: FolderStatus | None  # None: no server folder yet (dry-run of a create)
    prior: FolderState | None
    pairs: list[Pair]
    remote: dict[int, Flags]
    local: dict[str, LocalMessage]
    matches: list[Match]
    uidvalidity_changed: bool = False
    local_scanned: bool = True  # False: `local` was rebuilt from the state (unchanged)
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


class AccountSync:
    def __init__(
        self,
        account: AccountConfig,
        remote: RemoteStore,
        maildir: Maildir,
        state: State,
        options: SyncOptions,
        emit: Callable[[str], None],
    ) -> None:
        self.account = account
        self.remote = remote
        self.maildir = maildir
        self.state = state
        self.options = options
        self.emit = emit
        self.statuses: dict[str, FolderStatus] = {}
        self.prior: dict[str, FolderState] = {}
        self._selected: str | None = None
        self._selected_status: FolderStatus | None = None
        self._local_names_all: list[str] = []
        self._pair_counts: dict[str, int] | None = None
        self._first_run = False
        self._server_names: set[str] = set()
        # Tests only: every fast path checked against the full path before its plan is
        # carried out (mirrorsync/sync/oracle.py). Off, this lookup is all it costs.
        self._oracle: Oracle | None = None
        # A dry run changes nothing, so it has no after-the-moves state to compare with;
        # its plan is held equal to the real run's by tests of its own.
        if os.environ.get("MIRRORSYNC_PLAN_ORACLE") == "1" and not options.dry_run:
            from mirrorsync.sync.oracle import Oracle

            self._oracle = Oracle(self)

    # -- the whole account

    def run(self) -> AccountReport:
        if self._oracle is None:
            return self._run()
        try:
            return self._run()
        finally:
            self._oracle.close()

    def _run(self) -> AccountReport:
        report = AccountReport(self.account.name)
        self.prior = self.state.folders()
        # Until a sync of the whole account has completed, a folder without pairs is
        # met for the first time: its sync is careful (see `_first_sync_check`).
        self._first_run = self.state.get_meta("last_sync") is None
        known = self._wanted(self.prior)
        if not self.maildir.exists():
            remembered = sum(self.state.count_pairs().values())
            if remembered:
                raise LocalRootMissing(
                    f"local Maildir {self.maildir.root} is missing but the state remembers "
                    f"{remembered} synced messages; nothing was changed",
                    "if the disk is not mounted, mount it; to download everything again, "
                    f"move the state directory {self.account.state_dir} aside",
                )
            if not self.options.dry_run:
                private_makedirs(self.maildir.root)
        if not self.options.dry_run and self.state.journal_count():
            # A killed `archive` left work half done: finish or undo it before the
            # sync reads either side, or a file moved into a local-only folder could
            # look deleted (and, in pull mode, be downloaded again).
            from mirrorsync.archive import recover_archive

            recover_archive(self.remote, self.maildir, self.state)
        record = not self.options.dry_run
        settle_prefix(self.account, self.remote, self.state, record, self._local_listing)
        every = self.remote.statuses()
        self._server_names = set(every)  # excluded ones too: their directories stay theirs
        self.statuses = {n: s for n, s in every.items() if n in self._wanted([n])}
        # A folder the server lists but will not give the numbers of is there, in an
        # unknown state: it must not look deleted (that would delete it here), nor
        # new; it is left out of this run entirely and reported as failed.
        unknown = {
            n: why for n, why in self.remote.status_failures().items() if n in self._wanted([n])
        }
        known -= set(unknown)
        remote_names = set(self.statuses)
        self._record_delimiter()
        self._local_names_all = self.maildir.list_folders() if self.maildir.exists() else []
        local_names = self._wanted(self._local_names_all) - set(unknown)
        if remote_names - local_names - set(known):
            local_names = self._adopt(remote_names, local_names, known)
        # A local folder the server cannot hold stays local, like a local-only one.
        local_names -= kept_local(
            self.remote,
            self.state,
            local_names - remote_names,
            record and not self.options.folders,  # --folder sees only some of them
        )
        counts: dict[str, int] = {}
        for name in known:
            if name in remote_names and name not in local_names:
                counts[name] = self.statuses[name].messages
            elif name in local_names and name not in remote_names:
                counts[name] = len(self.maildir.folder(name).scan())
        before: list[act.FolderAction] = []
        after: list[act.FolderAction] = []
        if set(known) == local_names == remote_names:
            # The usual case: the same folders everywhere, so only their contents matter.
            names = sorted(known)
        else:
            from mirrorsync.sync import actions as act
            from mirrorsync.sync.plan import plan_folders

            names = []
            for action in plan_folders(set(known), local_names, remote_names, counts):
                if isinstance(action, act.SyncFolder):
                    names.append(action.name)
                elif isinstance(action, (act.DeleteLocalFolder, act.DeleteRemoteFolder)) or (
                    isinstance(action, act.ForgetFolder) and after
                ):
                    after.append(action)
                else:
                    before.append(action)
        if self._oracle:
            self._oracle.check_folders(before, names, after)
        # A folder that could not be created fails alone, reported once: syncing it
        # would only fail again for the same reason.
        uncreated = {
            a.name
            for a in before
            if not self._folder_action(a, report)
            and isinstance(a, (act.CreateLocalFolder, act.CreateRemoteFolder))
        }
        names = [n for n in names if n not in uncreated]
        reports = {n: FolderReport(n) for n in names}
        # A folder that lost nothing and gained nothing cannot be either end of a move:
        # it is planned and done at once, so that only the folders a move could touch
        # are held in memory together.
        held: dict[str, FolderInputs] = {}
        for n in self._gather_order(names):
            rep = reports[n]
            inputs = _guarded(rep, self.gather, n)
            if rep.error is not None:
                continue
            if inputs is None:
                if self._oracle:
                    self._oracle.check_unchanged(n)
                continue  # unchanged on both sides: not even selected
            if inputs.status is not None and _may_move(inputs):
                held[n] = inputs
            else:
                _guarded(rep, self._plan_and_execute, inputs, rep)
        if held:
            self._moves(held, reports)
        elif self._oracle:
            self._oracle.check_moves(reports, [])
        for n in reversed(list(held)):  # the folder selected last goes first
            inputs = held.pop(n)
            if reports[n].error is None:
                _guarded(reports[n], self._plan_and_execute, inputs, reports[n])
        report.folders += [reports[n] for n in names]
        report.folders += [FolderReport(n, error=why) for n, why in sorted(unknown.items())]
        for action in after:
            self._folder_action(action, report)
        if not self.options.dry_run and not report.failed and not self.options.folders:
            with self.state.transaction():
                self.state.set_meta("last_sync", str(time.time()))
        return report

    def _adopt(self, remote_names: set[str], local_names: set[str], known: set[str]) -> set[str]:
        """Rename the directories another tool (mbsync, offlineimap) wrote for server
        folders we have none for yet (see `adopt`); the local folders afterwards. A
        dry run prints the renames and reads those folders where they are now."""
        from mirrorsync import adopt

        local_only = {n for n in self._local_names_all if self.account.local.is_local_only(n)}
        plans = adopt.plan(
            self.maildir.root,
            self.maildir.layout,
            remote_names - local_names - known,
            self._server_names | known | local_only | set(self.prior),
            spell=self.maildir.dir_name,
        )
        if not plans:
            return local_names
        for a in plans:
            self.emit(f"[{self.account.name}] {a.describe()}")
        if not self.options.dry_run:
            adopt.apply(plans)
            self._local_names_all = self.maildir.list_folders()
            return self._wanted(self._local_names_all)
        moved = [str(a.src) for a in plans]

        def gone(n: str) -> bool:
            d = str(self.maildir.folder(n).path)
            return any(d == m or d.startswith(m + os.sep) for m in moved)

        for a in plans:
            self.maildir.aliases[a.name] = a.src
        self._local_names_all = [n for n in self._local_names_all if not gone(n)] + [
            a.name for a in plans
        ]
        return self._wanted(self._local_names_all)

    def _local_listing(self) -> list[str]:
        return self.maildir.list_folders() if self.maildir.exists() else []

    def _record_delimiter(self) -> None:
        """Remember the server's delimiter for the quick check, which must tell the
        local folders kept local (`naming.kept_local`) as this run does."""
        if self.options.dry_run:
            return
        value = stored_delimiter(self.remote.delimiter())
        if self.state.get_meta(DELIMITER_META) != value:
            with self.state.transaction():
                self.state.set_meta(DELIMITER_META, value)

    def _gather_order(self, names: list[str]) -> list[str]:
        """Folders that received mail on the server (their UIDNEXT moved) last: move
        detection and the downloads then find the last of them still selected. On
        Dovecot, selecting a folder again after new mail was first seen in it cost a
        re-read of the whole folder (74 ms for 28,000 messages)."""

        def arrived(n: str) -> bool:
            prior, now = self.prior.get(n), self.statuses.get(n)
            return bool(prior and now and now.uidnext != prior.uidnext)

        return sorted(names, key=arrived)  # stable: otherwise in the usual order

    def _wanted(self, names: Iterable[str]) -> set[str]:
        """The folders this run syncs: those the config includes, never a local-only
        one (it exists only on disk), and with --folder only those named."""
        local_only = self.account.local.is_local_only
        chosen = {n for n in names if self.account.folders.matches(n) and not local_only(n)}
        if self.options.folders:
            chosen &= set(self.options.folders)
        return chosen

    def _folder_action(self, action: act.FolderAction, report: AccountReport) -> bool:
        """Do `action`; False when it failed (and is reported)."""
        from mirrorsync.sync import actions as act

        if self.options.dry_run:
            self.emit(f"[{self.account.name}] {action.describe()}")
            return True
        self._selected = None  # a DELETE leaves its folder first (see ImapStore)
        try:
            if isinstance(action, act.CreateLocalFolder):
                self.maildir.create_folder(action.name)
            elif isinstance(action, act.CreateRemoteFolder):
                self.remote.create_folder(action.name)
            elif isinstance(action, act.DeleteLocalFolder):
                self.maildir.delete_folder(action.name)
            elif isinstance(action, act.DeleteRemoteFolder):
                self.remote.delete_folder(action.name)
            elif isinstance(action, (act.ResetFolder, act.ForgetFolder)):
                if isinstance(action, act.ResetFolder):
                    log.warning("%s: %s", action.name, action.reason)
                with self.state.transaction():
                    self.state.delete_folder(action.name)
                self.prior.pop(action.name, None)
            if not isinstance(action, (act.ForgetFolder, act.ResetFolder)):
                log.info("%s", action.describe())
        except (ConnectionFailed, StateError):
            raise
        except MirrorsyncError as e:
            report.folders.append(FolderReport(action.name, error=str(e)))
            return False
        return True

    # -- one folder

    def _plan_and_execute(self, inputs: FolderInputs, rep: FolderReport) -> None:
        from mirrorsync.sync.plan import guard_violation, plan_messages

        for what, n in inputs.found.items():
            rep.counts[what] += n
        mode = self.account.sync.mode_for(inputs.name)
        plan = plan_messages(inputs.pairs, inputs.remote, inputs.local, inputs.matches, mode)
        if self._oracle:
            self._oracle.check_folder(inputs, plan)
        known = len(inputs.pairs) if inputs.known is None else inputs.known
        if self._first_run and not known and (inputs.remote or inputs.local):
            self._first_sync_check(inputs.name, plan)
        if not self.options.force:
            why = guard_violation(
                plan,
                len(inputs.pairs) if inputs.known is None else inputs.known,
                self.account.sync.max_delete_share,
                self.account.sync.guard_min,
            )
            if why:
                raise GuardError(why)
        if self.options.dry_run:
            for a in plan:
                self.emit(f"[{self.account.name}] {inputs.name}: {a.describe()}")
            return
        self.execute(inputs, plan, rep)

    def _first_sync_check(self, name: str, plan: Sequence[act.MessageAction]) -> None:
        """A folder's first sync (no pair known, and the account never completed a
        sync) says what it matched and will copy, and stops before uploading more
        than `guard_min` unmatched files: a Maildir another tool made holds copies
        of server mail that may fail to match (see `FirstSyncGuard`)."""
        from mirrorsync.errors import FirstSyncGuard
        from mirrorsync.sync import actions as act

        matched = len(_of(plan, act.Link))
        uploads = len(_of(plan, act.Upload))
        downloads = len(_of(plan, act.Download))
        self.emit(
            f"[{self.account.name}] {name}: first sync: {matched} matched, "
            f"{uploads} to upload, {downloads} to download"
        )
        if uploads > self.account.sync.guard_min and not self.options.force:
            raise FirstSyncGuard(name, uploads, matched, downloads)

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

    # -- moves between folders

    def _moves(self, changed: dict[str, FolderInputs], reports: dict[str, FolderReport]) -> None:
        """Find moves across folders (hashing only what a move could involve), carry
        them out, and rewrite the folders' inputs as if they had always been there."""
        from mirrorsync.content import content_hash, crlf_size, loose_hash, message_id, to_lf
        from mirrorsync.sync.actions import FreeOnServer
        from mirrorsync.sync.plan import FolderView, plan_moves

        def unpaired_local(i: FolderInputs) -> list[str]:
            taken = {p.key for p in i.pairs} | {m.key for m in i.matches}
            return [k for k in i.local if k not in taken]

        def unpaired_remote(i: FolderInputs) -> list[int]:
            taken = {p.uid for p in i.pairs} | {m.uid for m in i.matches}
            return [u for u in i.remote if u not in taken]

        mirror = {n: i for n, i in changed.items() if self.account.sync.mode_for(n) == "mirror"}
        lost_local = any(
            p.key not in i.local and p.uid in i.remote for i in changed.values() for p in i.pairs
        )
        lost_remote = [
            (n, p)
            for n, i in mirror.items()
            for p in i.pairs
            if p.uid not in i.remote and p.key in i.local
        ]
        local_hashes: dict[str, dict[str, str]] = {n: {} for n in changed}
        local_loose: dict[str, dict[str, str]] = {n: {} for n in changed}
        remote_hashes: dict[str, dict[int, str]] = {n: {} for n in changed}
        if lost_local:
            for n, i in mirror.items():
                mfolder = self.maildir.folder(n)
                for key in unpaired_local(i):
                    try:
                        data = to_lf(mfolder.read(i.local[key]))
                    except LocalStoreError:
                        continue
                    local_hashes[n][key] = content_hash(data)
                    if loose := loose_hash(data):  # a reader's save added fields
                        local_loose[n][key] = loose
        if lost_remote:
            wanted: set[tuple[str | None, int]] = set()
            for n, p in lost_remote:
                try:
                    data = to_lf(self.maildir.folder(n).read(self._local_file(changed[n], p.key)))
                except LocalStoreError:
                    continue
                wanted.add((message_id(data), crlf_size(data)))
            for n, i in mirror.items():
                fresh = unpaired_remote(i)
                if not fresh or not wanted:
                    continue
                self._select(n, i.status)
                ids = self.remote.identities(fresh)
                maybe = [u for u, x in ids.items() if (x.message_id, x.size) in wanted]
                for uid, data, _f, _d in self.remote.fetch(maybe):
                    remote_hashes[n][uid] = content_hash(to_lf(data))
        archives, archives_loose = self._archived_candidates(changed) if lost_local else ({}, {})
        if not any(local_hashes.values()) and not any(remote_hashes.values()) and not archives:
            if self._oracle:
                self._oracle.check_moves(reports, [])
            return
        views = {}
        for n, i in changed.items():
            matched_uids = {m.uid for m in i.matches}
            matched_keys = {m.key for m in i.matches}
            views[n] = FolderView(
                i.pairs,
                {u: f for u, f in i.remote.items() if u not in matched_uids},
                {k: m for k, m in i.local.items() if k not in matched_keys},
                local_hashes[n],
                remote_hashes[n],
                local_loose[n],
            )
        moves = plan_moves(views, archives, archives_loose)
        if self._oracle:
            self._oracle.check_moves(reports, moves)
        for move in moves:
            # Moves between folders are two-way business; freeing a message whose
            # content is safe in a local-only folder is right in every mode.
            if not isinstance(move, FreeOnServer) and not {move.src, move.dst} <= set(mirror):
                continue
            if self.options.dry_run:
                # The folders' plans are then made as if the move had been done, so a
                # move shows as one line, not also as an upload and a deletion.
                self.emit(f"[{self.account.name}] {move.describe()}")
            _guarded(reports[move.src], self._execute_move, move, changed, reports)

    def _archived_candidates(
        self, changed: dict[str, FolderInputs]
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        """Hashes of the files in local-only folders that could be a synced message
        moved there: the same key as a message gone from a synced folder (a rename),
        or written since the last sync (a copy). Older files cannot be either. Then
        the loose hashes of those with tracking fields (a mutt save adds some)."""
        from mirrorsync.content import content_hash, loose_hash, to_lf

        lost = {p.key for i in changed.values() for p in i.pairs if p.key not in i.local}
        since = float(self.state.get_meta("last_sync") or 0) - 5.0
        out: dict[str, dict[str, str]] = {}
        loose: dict[str, dict[str, str]] = defaultdict(dict)
        for name in self._local_names_all:
            if not self.account.local.is_local_only(name):
                continue
            folder = self.maildir.folder(name)
            hashes: dict[str, str] = {}
            for key, msg in folder.scan().items():
                try:
                    path = folder.path_of(msg)
                    if key in lost or path.stat().st_mtime >= since:
                        data = to_lf(folder.read(msg))
                        hashes[key] = content_hash(data)
                        if h := loose_hash(data):
                            loose[name][key] = h
                except (OSError, LocalStoreError):
                    continue
            if hashes:
                out[name] = hashes
        return out, dict(loose)

    def _execute_move(
        self,
        move: act.MessageMove,
        changed: dict[str, FolderInputs],
        reports: dict[str, FolderReport],
    ) -> None:
        """Carry out one move (a dry run only pretends to) and rewrite both folders'
        inputs as if the message had always been where it is now."""
        from mirrorsync.sync.actions import FreeOnServer, MoveOnServer

        dry = self.options.dry_run
        if isinstance(move, FreeOnServer):
            # The content is safe in the local-only folder (its hash is the state's),
            # so the server copy goes; the file there is never touched.
            src = changed[move.src]
            if not dry:
                self._select(move.src, src.status)
                self.remote.expunge([move.uid])
                with self.state.transaction():
                    self.state.delete_pairs(move.src, [move.uid])
                reports[move.src].counts["freed on server (archived locally)"] += 1
            src.remote.pop(move.uid, None)
            src.pairs = [p for p in src.pairs if p.uid != move.uid]
            return
        src, dst = changed[move.src], changed[move.dst]
        if not dry:
            # Until the move is recorded, the destination is matched by content on the
            # next run, so a kill right after the server or the file system moved the
            # message links it there instead of copying it back.
            with self.state.transaction():
                self.state.put_folder(_started_row(dst, needs_match=True))
                if dst.uidvalidity_changed:
                    # The started row has the new UIDVALIDITY: the old UIDs must go with
                    # it, or a kill now would leave them to be read as new ones. What
                    # this run moved in already has UIDs of the new validity.
                    self.state.clear_pairs(move.dst)
                    self.state.put_pairs(move.dst, dst.pairs)
        if isinstance(move, MoveOnServer):
            if dry:
                # The UID the move will most likely get (the target's next): a dry run
                # cannot know it, and without one a flag change the reader made while
                # moving the file would not show as the flag change it will be.
                assert dst.status is not None
                new_uid: int | None = max(dst.status.uidnext, max(dst.moved_in, default=0) + 1)
            else:
                self._select(move.src, src.status)
                if move.replace:  # the file takes the server's bytes, before the move
                    from mirrorsync.matching import take_server_bytes

                    item = (move.uid, move.key, move.hash)
                    dst_folder = self.maildir.folder(move.dst)
                    take_server_bytes(self.remote, dst_folder, dst.local, [item])
                new_uid = self.remote.move([move.uid], move.dst).get(move.uid)
                with self.state.transaction():
                    self.state.delete_pairs(move.src, [move.uid])
                    if new_uid is not None:
                        pair = Pair(new_uid, move.key, move.hash, move.flags, move.flags)
                        self.state.put_pairs(move.dst, [pair])
            server_flags = src.remote.pop(move.uid)
            src.pairs = [p for p in src.pairs if p.uid != move.uid]
            if new_uid is None:
                dst.local.pop(move.key, None)  # linked by content on the next run
                dst.pending_match = True
            else:
                dst.pairs.append(Pair(new_uid, move.key, move.hash, move.flags, move.flags))
                dst.remote[new_uid] = server_flags
                dst.moved_in.add(new_uid)
        else:
            # Only the moved file is looked for: the source's view may hold just the
            # pairs a server delta named, and a listing of the whole folder there
            # would make every other file look new (and be uploaded again).
            msg = self._local_file(src, move.key)
            if dry:
                moved = msg
            else:
                mfolder = self.maildir.folder(move.src)
                moved = mfolder.move_to(msg, self.maildir.folder(move.dst))
            # The pair keeps the flags as last synced, so the folder's plan then merges
            # what either side changed meanwhile (a reader's flag while another client
            # moved the message) instead of taking both sides as they are.
            old = next((p for p in src.pairs if p.uid == move.uid), None)
            base = (
                (old.remote_flags, old.local_flags)
                if old
                else (dst.remote[move.new_uid], moved.flags)
            )
            pair = Pair(move.new_uid, move.key, move.hash, *base)
            if not dry:
                with self.state.transaction():
                    self.state.delete_pairs(move.src, [move.uid])
                    self.state.put_pairs(move.dst, [pair])
            src.local.pop(move.key)
            src.pairs = [p for p in src.pairs if p.uid != move.uid]
            dst.local[move.key] = moved
            dst.pairs.append(pair)
            dst.moved_in.add(move.new_uid)
        if not dry:
            reports[move.src].counts["moved out"] += 1
            reports[move.dst].counts["moved in"] += 1

    def _local_file(self, inputs: FolderInputs, key: str) -> LocalMessage:
        """The file of `key` in a gathered folder. A folder that was not listed holds
        messages rebuilt from the state (key and flags, no file name, `cur/` assumed),
        so the file is looked for under its likely names (an unflagged one is in
        `new/`), and the folder listed only if it is not there. The view is never
        swapped for a listing, whose other files would have no pair loaded and look
        new: a listing only names the files of the keys the view already holds (so
        a folder is listed once however many of its messages moved)."""
        msg = inputs.local[key]
        if inputs.local_scanned or msg.filename:
            return msg
        mfolder = self.maildir.folder(inputs.name)
        found = mfolder.locate(key, msg.flags)
        if found is None:
            listed = mfolder.scan()
            for k in inputs.local.keys() & listed.keys():
                inputs.local[k] = listed[k]
            found = listed.get(key)
            if found is None:
                raise MessageVanished(mfolder.path_of(msg), "find")
        inputs.local[key] = found
        return found

    def gather(self, name: str) -> FolderInputs | None:
        """What each side holds now, learned as cheaply as the state allows; None when
        neither side changed since the last sync."""
        mfolder = self.maildir.folder(name)
        prior = self.prior.get(name)
        now = self.statuses.get(name)
        stamp = mfolder.stamp()
        trusted = prior is not None and not prior.needs_match and not self.options.verify
        remote_same = bool(
            trusted
            and prior
            and now
            and prior.highestmodseq
            and (now.uidvalidity, now.uidnext, now.highestmodseq)
            == (prior.uidvalidity, prior.uidnext, prior.highestmodseq)
        )
        local_same = bool(
            trusted and prior and prior.local_stamp and stamp and stamp.value == prior.local_stamp
        )
        if remote_same and local_same:
            return None
        changes: FolderChanges | None = None
        if local_same and trusted and prior and prior.highestmodseq and self._qresync:
            # Only the server changed and it can say exactly what: load just the pairs
            # of the UIDs it names, so the cost follows the change, not the folder.
            changes = self._select_changes(name, prior, None)
            if not changes.full and changes.status.uidvalidity == prior.uidvalidity:
                pairs = self.state.pairs_for(name, set(changes.changed) | set(changes.vanished))
                return FolderInputs(
                    name,
                    changes.status,
                    prior,
                    pairs,
                    _server_view(((p.uid, p.remote_flags) for p in pairs), changes),
                    _local_view(pairs),
                    [],
                    local_scanned=False,
                    stamp=stamp,
                    known=self._pair_count(name),
                )
        rows = self.state.pair_rows(name) if prior else []
        listing = None if local_same else mfolder.listing() if mfolder.exists() else {}

        status: FolderStatus | None = now
        sizes: dict[int, int] = {}
        server: dict[int, Flags] | None = None  # None: as the state last saw it
        if not remote_same:
            try:
                if changes is None and trusted and prior and prior.highestmodseq:
                    changes = self._select_changes(name, prior, [r[0] for r in rows])
                if changes is not None:
                    status = changes.status
                    server = _server_view(_remote_letters(rows), changes)
                    if changes.full:
                        sizes = {u: m.size for u, m in changes.changed.items() if m.size}
                else:
                    status = self._select(name)
                    messages = self.remote.list_messages()
                    server = {u: flagmod.normalize(m.flags) for u, m in messages.items()}
                    sizes = {u: m.size for u, m in messages.items() if m.size}
            except ServerError:
                if not self.options.dry_run or now is not None:
                    raise
                status, server = None, {}  # dry-run: the folder would be created first

        changed = bool(prior and status and prior.uidvalidity != status.uidvalidity)
        if changed:
            assert prior is not None and status is not None
            log.warning(
                "%s: the server's UIDVALIDITY changed (%s -> %s); matching messages by content, "
                "uploading local ones the server lacks",
                name,
                prior.uidvalidity,
                status.uidvalidity,
            )
            rows = []
            if listing is None and mfolder.exists():
                listing = mfolder.listing()  # every file is a candidate now
        # Most messages of a changed folder are as the state left them on both sides;
        # they need no action, so only the others are made into objects, planned and
        # held while moves are looked for: memory and planning follow the change.
        keep, remote, local = _differing(rows, server, listing)
        pairs = self.state.pairs_for(name, [r[0] for r in keep]) if keep else []
        matches: list[Match] = []
        paired_u = {p.uid for p in pairs}
        paired_k = {p.key for p in pairs}
        new_remote = [u for u in remote if u not in paired_u]
        new_local = [m for k, m in local.items() if k not in paired_k]
        # New on both sides: after a crash, a UIDVALIDITY change or a first sync these
        # may be copies of each other; and when a message was moved into this folder
        # on both sides (a reader here, another client there), the two arrivals are
        # one message. Linked by content, they are never uploaded and downloaded.
        if status and new_remote and new_local:
            from mirrorsync.matching import match_by_content

            matches = match_by_content(self.remote, mfolder, new_remote, new_local)
        found: dict[str, int] = {}
        if self.options.verify and rows and prior and not changed:
            found = self._drop_duplicates(prior, mfolder, pairs, remote, local, matches)
        return FolderInputs(
            name,
            status,
            prior,
            pairs,
            remote,
            local,
            matches,
            uidvalidity_changed=changed,
            local_scanned=listing is not None,
            stamp=stamp,
            sizes=sizes,
            known=len(rows),
            found=found,
        )

    def _drop_duplicates(
        self,
        prior: FolderState,
        mfolder: MaildirFolder,
        differing: list[Pair],
        remote: dict[int, Flags],
        local: dict[str, LocalMessage],
        matches: list[Match],
    ) -> dict[str, int]:
        """A verifying run's check of what the state should know but does not: a
        server message below the UIDNEXT of the last sync, or a file that was there
        before it, whose content is that of a message already synced and still there
        is a second copy left by a drift. It is reported with its Message-ID and taken
        out of the plan, never copied to the other side, where it would be a duplicate
        too; `remote` and `local` lose those entries. Copies made since the last sync
        are another client's or the reader's doing, and are synced as usual."""
        from mirrorsync.content import content_hash, message_id, to_lf

        name = prior.name
        paired_u = {p.uid for p in differing} | {m.uid for m in matches}
        paired_k = {p.key for p in differing} | {m.key for m in matches}
        unknown_u = [u for u in remote if u not in paired_u and u < prior.uidnext]
        unknown_k = [
            k for k in local if k not in paired_k and _older(mfolder, local[k], prior.last_sync)
        ]
        if not unknown_u and not unknown_k:
            return {}
        # A pair in `differing` may be gone from one side; any other pair is steady,
        # so present on both.
        gone_u = {p.uid for p in differing if p.uid not in remote}
        gone_k = {p.key for p in differing if p.key not in local}
        synced: dict[str, Pair] = {}
        for p in self.state.pairs(name):
            if p.hash and p.uid not in gone_u and p.key not in gone_k:
                synced.setdefault(p.hash, p)
        found: dict[str, int] = defaultdict(int)
        if unknown_u:
            self._select(name)
            for uid, data, _flags, _date in self.remote.fetch(unknown_u):
                lf = to_lf(data)
                twin = synced.get(content_hash(lf))
                if twin is None:
                    continue
                log.warning(
                    "%s: the server holds a second copy of a message already synced "
                    "(UID %d, a copy of UID %d, Message-ID %s); it is left on the server "
                    "and not downloaded",
                    name,
                    uid,
                    twin.uid,
                    message_id(lf) or "none",
                )
                del remote[uid]
                found["duplicates on server (not downloaded)"] += 1
        for key in unknown_k:
            try:
                lf = to_lf(mfolder.read(local[key]))
            except LocalStoreError:
                continue
            twin = synced.get(content_hash(lf))
            if twin is None:
                continue
            log.warning(
                "%s: %s is a second copy of a message already synced (Message-ID %s); "
                "it is not uploaded",
                name,
                mfolder.path_of(local[key]),
                message_id(lf) or "none",
            )
            del local[key]
            found["duplicates in the Maildir (not uploaded)"] += 1
        return dict(found)

    @property
    def _qresync(self) -> bool:
        return "QRESYNC" in self.remote.capabilities

    def _select_changes(
        self, name: str, prior: FolderState, known: list[int] | None
    ) -> FolderChanges:
        self._selected = None  # as in `_select`: a failure leaves nothing selected
        changes = self.remote.select_changes(name, prior.uidvalidity, prior.highestmodseq, known)
        self._selected, self._selected_status = name, changes.status
        return changes

    def _pair_count(self, name: str) -> int:
        if self._pair_counts is None:
            self._pair_counts = self.state.count_pairs()
        return self._pair_counts.get(name, 0)

    # -- execution

    def execute(
        self, inputs: FolderInputs, plan: Sequence[act.MessageAction], rep: FolderReport
    ) -> None:
        from mirrorsync.sync import actions as act

        name = inputs.name
        status = inputs.status
        assert status is not None
        mfolder = self.maildir.folder(name)
        prior = inputs.prior
        copies = any(isinstance(a, (act.Download, act.Upload)) for a in plan)
        started = _started_row(inputs, needs_match=copies or inputs.pending_match)
        if plan or prior is None or inputs.uidvalidity_changed:
            with self.state.transaction():
                if inputs.uidvalidity_changed:
                    # The old UIDs mean nothing now; the pairs of messages moved in by
                    # this run (`inputs.pairs`, already under the new UIDVALIDITY) stay.
                    self.state.clear_pairs(name)
                    self.state.put_pairs(name, inputs.pairs)
                self.state.put_folder(started)

        touched_local = False
        if plan:
            local = inputs.local
            needs_local = _of(plan, act.DeleteLocal) or any(
                a.change.local is not None for a in _of(plan, act.UpdateFlags)
            )
            if needs_local and not inputs.local_scanned:
                # The state knew keys and flags, not file names: look for the files a
                # plan touches under the names they most likely have, and list the
                # folder only if one is not there.
                local = self._locate(mfolder, plan, inputs.local)
            # Select only for what is done to the server folder itself (a SELECT of a
            # large folder costs the server real work); appends need no selection.
            remote_ops = any(
                isinstance(a, (act.DeleteRemote, act.Download))
                or (
                    isinstance(a, (act.UpdateFlags, act.Link))
                    and bool(a.change.remote_add or a.change.remote_remove)
                )
                or (isinstance(a, act.Link) and a.replace)
                for a in plan
            )
            if remote_ops:
                self._select(name, status)
            hashes = {p.uid: p.hash for p in inputs.pairs}
            modseq = status.highestmodseq
            links = _of(plan, act.Link)
            refill_skipped = False
            refill = [(a.uid, a.key, a.hash) for a in links if a.replace]
            if refill:
                # Files equal to the server's messages apart from a tool's tracking
                # fields take the server's bytes first; one a reader renamed meanwhile
                # is not linked now, the next run matches it afresh.
                from mirrorsync.matching import take_server_bytes

                filled = take_server_bytes(self.remote, mfolder, local, refill)
                kept = [a for a in links if not a.replace or a.key in filled]
                # a link left for the next run keeps the folder's old position, so the
                # server names that message again then (see `_apply_flags`)
                refill_skipped = len(kept) < len(links)
                links = kept
                touched_local = True
            flagged, unapplied = self._apply_flags(
                name,
                mfolder,
                local,
                [*_of(plan, act.UpdateFlags), *links],
                inputs.local,
                hashes,
                modseq,
                inputs.moved_in,
                rep,
            )
            touched_local |= flagged
            unapplied |= refill_skipped
            deletes = _of(plan, act.DeleteRemote)
            if deletes and not _still(mfolder, inputs.stamp):
                # A directory listing is not atomic against a reader's renames, so a
                # file being re-flagged during the scan can be missed. Look again
                # before a "deleted locally" becomes an expunge on the server, unless
                # the directories provably did not change since before the scan.
                present = mfolder.scan()
                deletes = [a for a in deletes if a.key not in present]
            self._delete_remote(name, deletes, rep)
            touched_local |= self._delete_local(
                name, mfolder, local, _of(plan, act.DeleteLocal), rep
            )
            forget = [a.uid for a in _of(plan, act.Forget)]
            released = [a.uid for a in _of(plan, act.Release)]
            if forget or released:
                with self.state.transaction():
                    self.state.delete_pairs(name, forget + released)
                rep.counts["kept locally (backup)"] += len(released)
            downloads = _of(plan, act.Download)
            touched_local |= bool(downloads)
            self._download(name, mfolder, downloads, inputs.sizes, rep)
            uploads = [inputs.local[a.key] for a in _of(plan, act.Upload)]
            unresolved = self._upload(name, mfolder, uploads, rep)
            if rep.counts.get(NOT_UPLOADED):
                rep.error = f"{rep.counts[NOT_UPLOADED]} messages could not be uploaded (see above)"
        else:
            unresolved, unapplied = 0, False

        settled = inputs.stamp is not None and inputs.stamp.settled
        # The recorded position never passes a server change that was not applied: a
        # flag change left for the next run keeps the old one (as `started` has it),
        # so the server reports that change again.
        position = started if unapplied else status
        done = FolderState(
            name,
            status.uidvalidity,
            position.uidnext,
            position.highestmodseq,
            needs_match=unresolved > 0 or inputs.pending_match,
            local_stamp=inputs.stamp.value
            if settled and not touched_local and inputs.stamp
            else "",
            last_sync=time.time(),
        )
        if done != replace(prior or done, last_sync=done.last_sync) or plan:
            with self.state.transaction():
                self.state.put_folder(done)
        self.prior[name] = done

    def _locate(
        self,
        mfolder: MaildirFolder,
        plan: Sequence[act.MessageAction],
        known: dict[str, LocalMessage],
    ) -> dict[str, LocalMessage]:
        """The files the plan renames or deletes, in a folder that was not listed:
        each where it was found this run (a moved-in file) or under its likely name,
        else from one listing. Only the planned keys are returned, never the whole
        listing, whose other files have no pair loaded."""
        from mirrorsync.sync import actions as act

        keys = [a.key for a in plan if isinstance(a, (act.DeleteLocal, act.UpdateFlags))]
        found: dict[str, LocalMessage] = {}
        for key in keys:
            msg = known.get(key)
            if msg is not None and not msg.filename:
                msg = mfolder.locate(key, msg.flags)
            if msg is None:
                listed = mfolder.scan()
                return {k: listed[k] for k in keys if k in listed}
            found[key] = msg
        if self._oracle:
            self._oracle.check_located(mfolder, found)
        return found

    def _apply_flags(
        self,
        name: str,
        mfolder: MaildirFolder,
        local: dict[str, LocalMessage],
        items: Sequence[act.UpdateFlags | act.Link],
        assumed: dict[str, LocalMessage],
        hashes: dict[int, str],
        modseq: int,
        exact: set[int],
        rep: FolderReport,
    ) -> tuple[bool, bool]:
        """Server first (with UNCHANGEDSINCE where the server has CONDSTORE, so a flag
        another client changed meanwhile is merged next run, not overwritten), then
        the files, then the state. Returns whether a file was renamed, and whether a
        change was left for the next run (then the caller must not record the
        server's new HIGHESTMODSEQ, which would hide that change from the next run)."""
        if not items:
            return False, False
        from mirrorsync.sync.actions import Link

        # One conditional STORE per distinct change: the store adds, then removes with
        # the MODSEQ its own add produced, so our first half never reads as a conflict.
        changes: dict[tuple[Flags, Flags], list[int]] = defaultdict(list)
        for a in items:
            if a.change.remote_add or a.change.remote_remove:
                changes[(a.change.remote_add, a.change.remote_remove)].append(a.uid)
        modified: set[int] = set()
        for (add, remove), uids in changes.items():
            modified |= self._store(uids, add, remove, modseq, exact)
        done: list[Pair] = []
        renamed = False
        for a in items:
            if a.uid in modified:
                continue  # changed on the server meanwhile: merged on the next run
            if a.change.local is not None:
                msg = local.get(a.key)
                planned = assumed.get(a.key)
                if msg is None or (planned is not None and msg.flags != planned.flags):
                    # Gone, or a reader changed its flags since the plan was made: the
                    # plan is stale for this file, and the next run merges afresh.
                    continue
                try:
                    mfolder.set_flags(msg, a.change.local, durable=False)
                    renamed = True
                except MessageVanished:
                    # The reader moved or deleted it meanwhile; the next run sees the new
                    # truth and merges again from the old base.
                    continue
            if isinstance(a, Link):
                h = a.hash
                rep.counts["linked"] += 1
            else:
                h = hashes.get(a.uid, "")
                rep.counts["flags"] += 1
            done.append(Pair(a.uid, a.key, h, a.change.result, a.change.result))
        if renamed:
            mfolder.flush()  # every rename durable before the state records it
        with self.state.transaction():
            self.state.put_pairs(name, done)
        return renamed, len(done) < len(items)

    def _store(
        self, uids: list[int], add: Flags, remove: Flags, modseq: int, exact: set[int]
    ) -> set[int]:
        """Store a flag change; returns the UIDs the server refused as changed since
        `modseq` (another client got there first: merged on the next run)."""
        sure = [u for u in uids if u in exact]
        rest = [u for u in uids if u not in exact]
        if sure:
            self.remote.store_flags(sure, add, remove, 0)
        return self.remote.store_flags(rest, add, remove, modseq) if rest else set()

    def _delete_remote(self, name: str, items: list[act.DeleteRemote], rep: FolderReport) -> None:
        if not items:
            return
        uids = [a.uid for a in items]
        self.remote.expunge(uids)
        with self.state.transaction():
            self.state.delete_pairs(name, uids)
        rep.counts["deleted on server"] += len(uids)

    def _delete_local(
        self,
        name: str,
        mfolder: MaildirFolder,
        local: dict[str, LocalMessage],
        items: list[act.DeleteLocal],
        rep: FolderReport,
    ) -> bool:
        if not items:
            return False
        for a in items:
            msg = local.get(a.key)
            if msg is not None:
                mfolder.remove(msg, durable=False)
        mfolder.flush()
        with self.state.transaction():
            self.state.delete_pairs(name, [a.uid for a in items])
        rep.counts["deleted locally"] += len(items)
        return True

    def _download(
        self,
        name: str,
        mfolder: MaildirFolder,
        items: list[act.Download],
        sizes: dict[int, int],
        rep: FolderReport,
    ) -> None:
        if not items:
            return
        from mirrorsync.content import content_hash, to_lf

        unknown = [a.uid for a in items if a.uid not in sizes]
        if unknown:
            sizes = {**sizes, **{u: i.size for u, i in self.remote.identities(unknown).items()}}
        small = [a.uid for a in items if sizes.get(a.uid, 0) <= LARGE_MESSAGE]
        batch: list[tuple[int, str, bytes, Flags, float | None]] = []
        size = 0
        # One batch is on its way to disk while the next is fetched: the I/O threads
        # write and fsync it meanwhile, and its pairs are recorded only once it is
        # placed, so a kill at any point leaves no pair without its file.
        pending: tuple[PendingDelivery, list[Pair]] | None = None

        def finish_pending() -> None:
            nonlocal pending
            if pending is None:
                return
            delivery, pairs = pending
            pending = None
            delivery.finish()
            with self.state.transaction():
                self.state.put_pairs(name, pairs)
            rep.counts["downloaded"] += len(pairs)

        def flush() -> None:
            nonlocal size, pending
            if not batch:
                return
            delivery = mfolder.deliver_start([(k, data, fl, mt) for _u, k, data, fl, mt in batch])
            try:
                pairs = [Pair(u, k, content_hash(data), fl, fl) for u, k, data, fl, _ in batch]
                batch.clear()
                size = 0
                finish_pending()
            except BaseException:
                delivery.abandon()
                raise
            pending = delivery, pairs

        try:
            try:
                for uid, data, flags, date in self.remote.fetch(small):
                    lf = to_lf(data)
                    batch.append((uid, mfolder.new_key(), lf, flagmod.normalize(flags), _ts(date)))
                    size += len(lf)
                    if len(batch) >= DOWNLOAD_BATCH or size >= DOWNLOAD_BATCH_BYTES:
                        flush()
            except ServerError:
                # the server misanswered some message (see RemoteStore.fetch): what it
                # answered right is stored before the folder fails
                flush()
                finish_pending()
                raise
            flush()
            finish_pending()
        except BaseException:
            if pending is not None:
                pending[0].abandon()
            raise
        flags_of = {a.uid: a.flags for a in items}
        for uid in (a.uid for a in items if sizes.get(a.uid, 0) > LARGE_MESSAGE):
            self._download_large(name, mfolder, uid, sizes[uid], flags_of[uid], rep)

    def _download_large(
        self,
        name: str,
        mfolder: MaildirFolder,
        uid: int,
        size: int,
        flags: Flags,
        rep: FolderReport,
    ) -> None:
        """Stream one big message to disk in chunks, so memory stays bounded."""
        from mirrorsync.content import LfWriter

        writer: LfWriter | None = None
        found = True

        def write(f: BinaryIO) -> None:
            nonlocal writer, found
            writer = LfWriter(f)
            found = self.remote.fetch_to_file(uid, size, writer)
            writer.close()

        key = mfolder.new_key()
        msg = mfolder.deliver_stream(key, write, flags)
        if not found or writer is None:
            mfolder.remove(msg)  # vanished meanwhile: nothing to keep
            return
        with self.state.transaction():
            self.state.put_pairs(name, [Pair(uid, key, writer.hexdigest(), flags, flags)])
        rep.counts["downloaded"] += 1

    def _upload(
        self, name: str, mfolder: MaildirFolder, items: list[LocalMessage], rep: FolderReport
    ) -> int:
        """Upload new local messages; returns how many got no UID (left for matching).

        Files are read in batches (UPLOAD_BATCH files or UPLOAD_BATCH_BYTES, a bigger
        file alone, so memory stays bounded), each sent with one `append_many` (one
        MULTIAPPEND command where the server has it) and its pairs recorded in one
        transaction. A kill before that commit leaves the folder `needs_match`, so
        the next run links the uploads by content instead of sending them again."""
        from mirrorsync.content import content_hash, to_crlf, to_lf
        from mirrorsync.errors import AppendRefused
        from mirrorsync.stored import adopt_server_copies

        Upload = tuple[LocalMessage, str, bytes, datetime | None]  # file, hash, CRLF, date
        batch: list[Upload] = []
        size = 0
        unresolved = 0

        def refused(entry: Upload, e: ServerError) -> None:
            nonlocal unresolved
            log.warning("%s: could not upload %s: %s", name, mfolder.path_of(entry[0]), e)
            rep.counts[NOT_UPLOADED] += 1
            # The error may have come after the server stored it (without UIDPLUS the
            # UID is looked for after the APPEND, and that look can fail): the folder
            # stays matched by content next run, so a stored copy is linked, never
            # sent a second time.
            unresolved += 1

        def send() -> None:
            nonlocal size, unresolved
            done: list[tuple[Upload, int | None]] = []
            queue = batch[:]
            while queue:
                messages = [(data, lm.flags, date) for lm, _, data, date in queue]
                try:
                    uids = self.remote.append_many(name, messages)
                except ServerError as e:
                    # One bad file must not block the rest: name it, keep it, go on. A
                    # refused MULTIAPPEND stores none of its messages (RFC 3502), so
                    # they are sent again one by one; a message refused alone is named.
                    ok = e.uids if isinstance(e, AppendRefused) else []
                    held = max(1, e.refused if isinstance(e, AppendRefused) else len(queue))
                    done += zip(queue, ok, strict=False)
                    again, queue = queue[len(ok) : len(ok) + held], queue[len(ok) + held :]
                    if len(again) == 1:
                        refused(again[0], e)
                        continue
                    log.debug("%s: %d uploads refused together (%s)", name, len(again), e)
                    for entry in again:
                        lm, _, data, date = entry
                        try:
                            done.append((entry, self.remote.append(name, data, lm.flags, date)))
                        except ServerError as e1:
                            refused(entry, e1)
                    continue
                done += zip(queue, uids, strict=True)
                break
            # The server may have stored something else than was sent (see `stored`):
            # then the file takes the server's bytes before the pair is recorded.
            # A failed check still records the uploads (as sent): a changed copy left to
            # the next run's match by content would be missed and uploaded again.
            sent = [(lm, digest, data, uid) for (lm, digest, data, _), uid in done if uid]
            adopted: dict[int, str] = {}
            unchecked: MirrorsyncError | None = None
            try:
                if sent:
                    self._select(name)
                adopted = adopt_server_copies(self.remote, name, mfolder, sent)
            except (ServerError, ConnectionFailed) as e:
                unchecked = e
            pairs = []
            for (lm, digest, _, _), uid in done:
                if uid is None:
                    unresolved += 1
                    log.warning(
                        "%s: the server did not tell the UID of an upload; it will be "
                        "matched by content on the next run",
                        name,
                    )
                    continue
                pairs.append(Pair(uid, lm.key, adopted.get(uid, digest), lm.flags, lm.flags))
            if pairs:
                with self.state.transaction():
                    self.state.put_pairs(name, pairs)
                rep.counts["uploaded"] += len(pairs)
            if unchecked is not None:
                raise unchecked
            batch.clear()
            size = 0

        for lm in items:
            try:
                lf = to_lf(mfolder.read(lm))
                mtime: float | None = mfolder.path_of(lm).stat().st_mtime
            except (LocalStoreError, OSError):
                continue  # vanished between scan and read: nothing to upload
            date = datetime.fromtimestamp(mtime, timezone.utc) if mtime else None
            data = to_crlf(lf)
            if batch and size + len(data) > UPLOAD_BATCH_BYTES:
                send()
            batch.append((lm, content_hash(lf), data, date))
            size += len(data)
            if len(batch) >= UPLOAD_BATCH or size >= UPLOAD_BATCH_BYTES:
                send()
        send()
        return unresolved


def _older(mfolder: MaildirFolder, msg: LocalMessage, than: float) -> bool:
    """Whether the file was last renamed or changed before `than` (its ctime)."""
    try:
        return mfolder.path_of(msg).stat().st_ctime < than
    except OSError:
        return False


def _ts(date: datetime | None) -> float | None:
    return date.timestamp() if date else None


def _of(plan: Sequence[act.MessageAction], kind: type[A]) -> list[A]:
    return [a for a in plan if isinstance(a, kind)]


def _server_view(known: Iterable[tuple[int, Flags]], changes: FolderChanges) -> dict[int, Flags]:
    """The server's flags now: a full listing as it is, or a delta applied to the
    flags the state last saw on the server (`known`: UID and flags)."""
    if changes.full:
        return {u: flagmod.normalize(m.flags) for u, m in changes.changed.items()}
    view = dict(known)
    for uid in changes.vanished:
        view.pop(uid, None)
    for uid, m in changes.changed.items():
        view[uid] = flagmod.normalize(m.flags)
    return view


def _local_view(pairs: Sequence[Pair]) -> dict[str, LocalMessage]:
    """The Maildir as the state knows it (keys and flags, no file names), for a folder
    whose directories have not changed since."""
    return {p.key: LocalMessage(p.key, p.local_flags, "cur") for p in pairs}


def _differing(
    rows: Sequence[PairRow],
    server: dict[int, Flags] | None,
    listing: dict[str, ListedFile] | None,
) -> tuple[list[PairRow], dict[int, Flags], dict[str, LocalMessage]]:
    """The rows, server flags and files of the messages that are not exactly as the
    state remembers them on both sides: a message that is needs no action in any mode
    and cannot be either end of a move. `server` None means the server is as the
    state last saw it, `listing` None the same of the Maildir. Most rows are decided
    by comparing letters, without making an object of them. `server` and `listing`
    are consumed: what is steady is taken out of them (a copy of each would double a
    large folder's memory), and what is left there is what differs or is new."""
    from_letters = flagmod.from_letters
    keep: list[PairRow] = []
    for row in rows:
        uid, key, remote_letters, local_letters = row
        if remote_letters != local_letters and (
            from_letters(remote_letters) != from_letters(local_letters)
        ):
            # Recorded with the two sides apart (a move made the pair from each side's
            # flags, and the run ended before the flags were merged): not steady.
            keep.append(row)
            continue
        if listing is not None:
            entry = listing.get(key)
            if entry is None or (
                entry[2] != local_letters and from_letters(entry[2]) != from_letters(local_letters)
            ):
                keep.append(row)
                continue
        if server is not None and server.get(uid) != from_letters(remote_letters):
            keep.append(row)
            continue
        if listing is not None:
            del listing[key]
        if server is not None:
            del server[uid]
    remote = {r[0]: from_letters(r[2]) for r in keep} if server is None else server
    if listing is None:
        local = {r[1]: LocalMessage(r[1], from_letters(r[3]), "cur") for r in keep}
    else:
        message = MaildirFolder.message
        local = {k: message(k, e) for k, e in listing.items()}
    return keep, remote, local


def _remote_letters(rows: Sequence[PairRow]) -> Iterator[tuple[int, Flags]]:
    from_letters = flagmod.from_letters
    return ((r[0], from_letters(r[2])) for r in rows)


def _still(mfolder: MaildirFolder, stamp: Stamp | None) -> bool:
    """Whether the folder's directories are provably unchanged since `stamp` was taken
    (before the scan): then the scan saw a consistent picture."""
    if stamp is None or not stamp.settled:
        return False
    now = mfolder.stamp()
    return now is not None and now.value == stamp.value


def _may_move(i: FolderInputs) -> bool:
    """Whether this folder could be one end of a move: it lost a message on one side,
    or holds one that no pair accounts for."""
    paired_keys = {p.key for p in i.pairs}
    paired_uids = {p.uid for p in i.pairs}
    return (
        any(p.key not in i.local or p.uid not in i.remote for p in i.pairs)
        or any(k not in paired_keys for k in i.local)
        or any(u not in paired_uids for u in i.remote)
    )


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


R = TypeVar("R")


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
