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
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from mirrorsync.errors import (
    ConnectionFailed,
    GuardError,
    LocalRootMissing,
    MirrorsyncError,
    StateError,
)
from mirrorsync.maildir import (
    Maildir,
)
from mirrorsync.model import FolderStatus
from mirrorsync.names import DELIMITER_META, SPECIAL_USE_META, stored_delimiter
from mirrorsync.naming import kept_local, settle_prefix
from mirrorsync.progress import Reporter
from mirrorsync.state import FolderState, State
from mirrorsync.sync import actions as act
from mirrorsync.sync.base import (
    AccountReport,
    FolderInputs,
    FolderReport,
    SyncOptions,
    _guarded,
    _of,
)
from mirrorsync.sync.execute import Executor
from mirrorsync.sync.gather import Gather
from mirrorsync.sync.moves import Moves
from mirrorsync.xdg import private_makedirs

# What only a changed folder needs is imported when one is met, so that a run that
# finds nothing to do does not spend its time importing (see also cli.py).
if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig
    from mirrorsync.remote import RemoteStore
    from mirrorsync.sync.oracle import Oracle

log = logging.getLogger(__name__)


class AccountSync(Gather, Moves, Executor):
    def __init__(
        self,
        account: AccountConfig,
        remote: RemoteStore,
        maildir: Maildir,
        state: State,
        options: SyncOptions,
        emit: Callable[[str], None],
        reporter: Reporter | None = None,
    ) -> None:
        self.account = account
        self.remote = remote
        self.maildir = maildir
        self.state = state
        self.options = options
        self.emit = emit
        self.reporter = reporter or Reporter()  # progress and timings (mirrorsync/progress.py)
        self.statuses: dict[str, FolderStatus] = {}
        self.prior: dict[str, FolderState] = {}
        self._selected: str | None = None
        self._selected_status: FolderStatus | None = None
        self._local_names_all: list[str] = []
        self._pair_counts: dict[str, int] | None = None
        self._first_run = False
        self._server_names: set[str] = set()
        # the server's special-use folders (name -> "\\Junk"), for `folders:` patterns
        self._special: dict[str, str] = {}
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
        self._prepare()
        before, names, after, unknown = self._folder_plan()
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
        if not self.prior:
            self._recover(names, reports)
        elif self.options.recover:
            log.warning(
                "--recover=%s has nothing to do: the account has a state (it is for a "
                "sync without one)",
                self.options.recover,
            )
        self._sync_folders(names, reports)
        report.folders += [reports[n] for n in names]
        report.folders += [FolderReport(n, error=why) for n, why in sorted(unknown.items())]
        for action in after:
            self._folder_action(action, report)
        if not self.options.dry_run and not report.failed and not self.options.folders:
            from mirrorsync import proof

            with self.state.transaction():
                self.state.set_meta("last_sync", str(time.time()))
                # what this run proved, for the next run's quick check (see `proof`)
                proof.record(
                    self.account,
                    self.state,
                    self._server_names,
                    self._local_names_all,
                    self._wanted,
                )
        return report

    def _recover(self, names: list[str], reports: dict[str, FolderReport]) -> None:
        """No folder in the state: when both sides hold mail, say what pairing by
        content cannot know and apply the chosen reading, before anything else is
        done (see `recovery`). An empty server costs nothing here."""
        remote_names = [n for n in names if n in self.statuses and self.statuses[n].messages]
        if not remote_names:
            return
        from mirrorsync.recovery import recover
        from mirrorsync.state import DB_NAME

        counts = recover(
            self.account.name,
            self.remote,
            self.maildir,
            names,
            remote_names,
            self.options.recover,
            self.options.dry_run,
            self.emit,
            lost=any(self.state.path.parent.glob(f"{DB_NAME}.corrupt-*")),
        )
        self._selected = None  # the survey selected folders behind our back
        for name, done in counts.items():
            for what, n in done.items():
                reports[name].counts[what] += n

    def _prepare(self) -> None:
        """Make sure the local root is there (or refuse, when the state remembers mail
        in it), finish a killed `archive`, and learn how the server names folders."""
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

    def _folder_plan(
        self,
    ) -> tuple[list[act.FolderAction], list[str], list[act.FolderAction], dict[str, str]]:
        """The folder actions to take before the folders are synced, the folders to
        sync, the actions to take after, and the folders left out as unknown (the
        server would not give their numbers) with why."""
        every = self.remote.statuses()
        self._server_names = set(every)  # excluded ones too: their directories stay theirs
        self._special = self.remote.special_use()
        self.statuses = {n: s for n, s in every.items() if n in self._wanted([n])}
        # A folder the server lists but will not give the numbers of is there, in an
        # unknown state: it must not look deleted (that would delete it here), nor
        # new; it is left out of this run entirely and reported as failed.
        unknown = {
            n: why for n, why in self.remote.status_failures().items() if n in self._wanted([n])
        }
        known = self._wanted(self.prior) - set(unknown)
        remote_names = set(self.statuses)
        self._record_delimiter()
        self._record_special_use()
        local_names = self._local_names(known, remote_names, set(unknown))
        before: list[act.FolderAction] = []
        after: list[act.FolderAction] = []
        if known == local_names == remote_names:
            # The usual case: the same folders everywhere, so only their contents matter.
            names = sorted(known)
        else:
            from mirrorsync.sync.plan import plan_folders, split_folder_plan

            counts = self._counts(known, local_names, remote_names)
            plan = plan_folders(known, local_names, remote_names, counts)
            before, names, after = split_folder_plan(plan)
        if self._oracle:
            self._oracle.check_folders(before, names, after)
        return before, names, after, unknown

    def _local_names(self, known: set[str], remote_names: set[str], unknown: set[str]) -> set[str]:
        """The local folders this run syncs: directories another tool made for server
        folders adopted (see `_adopt`), and those the server cannot hold left out."""
        self._local_names_all = self.maildir.list_folders() if self.maildir.exists() else []
        local_names = self._wanted(self._local_names_all) - unknown
        if remote_names - local_names - known:
            local_names = self._adopt(remote_names, local_names, known)
        # A local folder the server cannot hold stays local, like a local-only one.
        record = not self.options.dry_run and not self.options.folders  # --folder sees some
        return local_names - kept_local(self.remote, self.state, local_names - remote_names, record)

    def _counts(self, known: set[str], local: set[str], remote: set[str]) -> dict[str, int]:
        """How many messages each synced folder that one side lost holds on the other."""
        counts: dict[str, int] = {}
        for name in known:
            if name in remote and name not in local:
                counts[name] = self.statuses[name].messages
            elif name in local and name not in remote:
                counts[name] = len(self.maildir.folder(name).scan())
        return counts

    def _sync_folders(self, names: list[str], reports: dict[str, FolderReport]) -> None:
        """Gather, plan and carry out each folder. A folder that lost nothing and gained
        nothing cannot be either end of a move: it is planned and done at once, so that
        only the folders a move could touch are held in memory together."""
        from mirrorsync.sync.plan import may_move

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
            if inputs.status is not None and may_move(inputs.pairs, inputs.remote, inputs.local):
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

    def _record_special_use(self) -> None:
        """Remember which folders are the server's special-use ones, for `status`,
        which works offline."""
        value = "\n".join(f"{n}\t{a}" for n, a in sorted(self._special.items()))
        if not self.options.dry_run and (self.state.get_meta(SPECIAL_USE_META) or "") != value:
            with self.state.transaction():
                self.state.set_meta(SPECIAL_USE_META, value)

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
        matches, special = self.account.folders.matches, self._special
        chosen = {n for n in names if matches(n, special.get(n, "")) and not local_only(n)}
        if self.options.folders:
            chosen &= set(self.options.folders)
        return chosen

    def _folder_action(self, action: act.FolderAction, report: AccountReport) -> bool:
        """Do `action`; False when it failed (and is reported)."""
        if self.options.dry_run:
            self.emit(f"[{self.account.name}] {action.describe()}")
            return True
        self._selected = None  # a DELETE leaves its folder first (see ImapStore)
        try:
            self._do_folder_action(action)
        except (ConnectionFailed, StateError):
            raise
        except MirrorsyncError as e:
            report.folders.append(FolderReport(action.name, error=str(e)))
            return False
        return True

    def _do_folder_action(self, action: act.FolderAction) -> None:
        if isinstance(action, (act.ResetFolder, act.ForgetFolder)):
            if isinstance(action, act.ResetFolder):
                log.warning("%s: %s", action.name, action.reason)
            with self.state.transaction():
                self.state.delete_folder(action.name)
            self.prior.pop(action.name, None)
            return
        if isinstance(action, act.CreateLocalFolder):
            self.maildir.create_folder(action.name)
        elif isinstance(action, act.CreateRemoteFolder):
            self.remote.create_folder(action.name)
        elif isinstance(action, act.DeleteLocalFolder):
            self.maildir.delete_folder(action.name)
        elif isinstance(action, act.DeleteRemoteFolder):
            self.remote.delete_folder(action.name)
        log.info("%s", action.describe())

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
        # A --recover choice is made knowing that copies on one side only are kept.
        if uploads > self.account.sync.guard_min and not (
            self.options.force or self.options.recover
        ):
            raise FirstSyncGuard(name, uploads, matched, downloads)
