"""One account's sync: gather both sides and the state, plan, execute.

The executor applies the plan in an order chosen so that a kill at any instant is
recoverable: changes are made on a side first and recorded in the state after, and
a folder that copies messages is marked `needs_match` before the first copy and
unmarked only after the last state commit. A marked folder is reconciled by content
on the next run (see `matching`), so a copy whose state row was lost is linked, not
copied again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TypeVar

from mirrorsync import actions as act
from mirrorsync import flags as flagmod
from mirrorsync.config import AccountConfig
from mirrorsync.content import content_hash, to_crlf, to_lf
from mirrorsync.errors import (
    ConnectionFailed,
    GuardError,
    LocalRootMissing,
    LocalStoreError,
    MirrorsyncError,
)
from mirrorsync.maildir import Maildir, MaildirFolder, MessageVanished
from mirrorsync.matching import match_by_content
from mirrorsync.model import Flags, FolderStatus, LocalMessage
from mirrorsync.planner import Match, guard_violation, plan_folders, plan_messages
from mirrorsync.remote import RemoteStore
from mirrorsync.state import FolderState, Pair, State

log = logging.getLogger(__name__)
A = TypeVar("A")

DOWNLOAD_BATCH = 200  # messages per group commit (files fsynced, one dir fsync, one txn)
DOWNLOAD_BATCH_BYTES = 16 * 1024 * 1024
UPLOAD_BATCH = 50


@dataclass(frozen=True)
class SyncOptions:
    dry_run: bool = False
    force: bool = False
    folders: tuple[str, ...] = ()  # --folder: only these (canonical names)


@dataclass
class FolderReport:
    name: str
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.error:
            return f"{self.name}: FAILED: {self.error}"
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
    """Everything the planner needs for one folder, gathered in one place."""

    name: str
    status: FolderStatus | None  # None: no server folder yet (dry-run of a create)
    prior: FolderState | None
    pairs: list[Pair]
    remote: dict[int, Flags]
    local: dict[str, LocalMessage]
    matches: list[Match]
    uidvalidity_changed: bool = False


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

    # -- the whole account

    def run(self) -> AccountReport:
        report = AccountReport(self.account.name)
        known = self._wanted(self.state.folders())
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
                self.maildir.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        remote_names = self._wanted(f.name for f in self.remote.list_folders() if f.selectable)
        local_names = self._wanted(self.maildir.list_folders()) if self.maildir.exists() else set()
        counts: dict[str, int] = {}
        for name in known:
            if name in remote_names and name not in local_names:
                counts[name] = self.remote.status(name).messages
            elif name in local_names and name not in remote_names:
                counts[name] = len(self.maildir.folder(name).scan())
        plan = plan_folders(set(known), local_names, remote_names, counts)
        for action in plan:
            if isinstance(action, act.SyncFolder):
                report.folders.append(self._sync_folder_guarded(action.name))
            else:
                self._folder_action(action, report)
        return report

    def _wanted(self, names: Iterable[str]) -> set[str]:
        chosen = {n for n in names if self.account.folders.matches(n)}
        if self.options.folders:
            chosen &= set(self.options.folders)
        return chosen

    def _folder_action(self, action: act.FolderAction, report: AccountReport) -> None:
        if self.options.dry_run:
            self.emit(f"[{self.account.name}] {action.describe()}")
            return
        try:
            if isinstance(action, act.CreateLocalFolder):
                self.maildir.create_folder(action.name)
            elif isinstance(action, act.CreateRemoteFolder):
                self.remote.create_folder(action.name)
            elif isinstance(action, act.DeleteLocalFolder):
                self.maildir.delete_folder(action.name)
            elif isinstance(action, act.DeleteRemoteFolder):
                self.remote.delete_folder(action.name)
            elif isinstance(action, act.ResetFolder):
                log.warning("%s: %s", action.name, action.reason)
                with self.state.transaction():
                    self.state.delete_folder(action.name)
            elif isinstance(action, act.ForgetFolder):
                with self.state.transaction():
                    self.state.delete_folder(action.name)
            if not isinstance(action, (act.ForgetFolder, act.ResetFolder)):
                log.info("%s", action.describe())
        except ConnectionFailed:
            raise
        except MirrorsyncError as e:
            report.folders.append(FolderReport(action.name, error=str(e)))

    # -- one folder

    def _sync_folder_guarded(self, name: str) -> FolderReport:
        rep = FolderReport(name)
        try:
            self._sync_folder(name, rep)
        except ConnectionFailed:
            raise
        except MirrorsyncError as e:
            rep.error = str(e)
        return rep

    def _sync_folder(self, name: str, rep: FolderReport) -> None:
        inputs = self.gather(name)
        plan = plan_messages(inputs.pairs, inputs.remote, inputs.local, inputs.matches)
        if not self.options.force:
            why = guard_violation(
                plan,
                len(inputs.pairs),
                self.account.sync.max_delete_share,
                self.account.sync.guard_min,
            )
            if why:
                raise GuardError(why)
        if self.options.dry_run:
            for a in plan:
                self.emit(f"[{self.account.name}] {name}: {a.describe()}")
            return
        self.execute(inputs, plan, rep)

    def gather(self, name: str) -> FolderInputs:
        mfolder = self.maildir.folder(name)
        local = mfolder.scan() if mfolder.exists() else {}
        prior = self.state.folder(name)
        try:
            status: FolderStatus | None = self.remote.select(name)
        except MirrorsyncError:
            if not self.options.dry_run:
                raise
            status = None  # dry-run: the folder would be created first
        remote = (
            {u: flagmod.normalize(m.flags) for u, m in self.remote.list_messages().items()}
            if status
            else {}
        )
        pairs = self.state.pairs(name) if prior else []
        changed = bool(prior and status and prior.uidvalidity != status.uidvalidity)
        if changed:
            log.warning(
                "%s: the server's UIDVALIDITY changed (%s -> %s); matching messages by content, "
                "uploading local ones the server lacks",
                name,
                prior.uidvalidity if prior else "?",
                status.uidvalidity if status else "?",
            )
            pairs = []
        needs_match = changed or prior is None or prior.needs_match
        matches: list[Match] = []
        if needs_match and status:
            paired_u = {p.uid for p in pairs}
            paired_k = {p.key for p in pairs}
            matches = match_by_content(
                self.remote,
                mfolder,
                [u for u in remote if u not in paired_u],
                [m for k, m in local.items() if k not in paired_k],
            )
        return FolderInputs(name, status, prior, pairs, remote, local, matches, changed)

    # -- execution

    def execute(
        self, inputs: FolderInputs, plan: Sequence[act.MessageAction], rep: FolderReport
    ) -> None:
        name = inputs.name
        assert inputs.status is not None
        mfolder = self.maildir.folder(name)
        copies = any(isinstance(a, (act.Download, act.Upload)) for a in plan)
        folder_state = FolderState(
            name,
            inputs.status.uidvalidity,
            inputs.status.uidnext,
            inputs.status.highestmodseq,
            needs_match=copies or bool(inputs.prior and inputs.prior.needs_match),
            local_stamp=inputs.prior.local_stamp if inputs.prior else "",
            last_sync=inputs.prior.last_sync if inputs.prior else 0.0,
        )
        with self.state.transaction():
            if inputs.uidvalidity_changed:
                self.state.clear_pairs(name)
            self.state.put_folder(folder_state)

        hashes = {p.uid: p.hash for p in inputs.pairs}
        self._apply_flags(
            name,
            mfolder,
            inputs.local,
            _of(plan, act.UpdateFlags) + _of(plan, act.Link),
            hashes,
            rep,
        )
        deletes = _of(plan, act.DeleteRemote)
        if deletes:
            # A directory listing is not atomic against a reader's renames, so a file
            # being re-flagged during the scan can be missed. Look again before a
            # "deleted locally" becomes an expunge on the server.
            present = mfolder.scan()
            deletes = [a for a in deletes if a.key not in present]
        self._delete_remote(name, deletes, rep)
        self._delete_local(name, mfolder, inputs.local, _of(plan, act.DeleteLocal), rep)
        forget = [a.uid for a in _of(plan, act.Forget)]
        if forget:
            with self.state.transaction():
                self.state.delete_pairs(name, forget)
        self._download(name, mfolder, [a.uid for a in _of(plan, act.Download)], rep)
        uploads = [inputs.local[a.key] for a in _of(plan, act.Upload)]
        unresolved = self._upload(name, mfolder, uploads, rep)
        with self.state.transaction():
            self.state.put_folder(
                replace(folder_state, needs_match=unresolved > 0, last_sync=time.time())
            )

    def _apply_flags(
        self,
        name: str,
        mfolder: MaildirFolder,
        local: dict[str, LocalMessage],
        items: Sequence[act.UpdateFlags | act.Link],
        hashes: dict[int, str],
        rep: FolderReport,
    ) -> None:
        if not items:
            return
        adds: dict[Flags, list[int]] = defaultdict(list)
        removes: dict[Flags, list[int]] = defaultdict(list)
        for a in items:
            if a.change.remote_add:
                adds[a.change.remote_add].append(a.uid)
            if a.change.remote_remove:
                removes[a.change.remote_remove].append(a.uid)
        for flags, uids in adds.items():
            self.remote.add_flags(uids, flags)
        for flags, uids in removes.items():
            self.remote.remove_flags(uids, flags)
        done: list[Pair] = []
        for a in items:
            if a.change.local is not None:
                try:
                    mfolder.set_flags(local[a.key], a.change.local)
                except MessageVanished:
                    # The reader moved or deleted it meanwhile; the next run sees the new
                    # truth and merges again from the old base.
                    continue
            if isinstance(a, act.Link):
                h = a.hash
                rep.counts["linked"] += 1
            else:
                h = hashes.get(a.uid, "")
                rep.counts["flags"] += 1
            done.append(Pair(a.uid, a.key, h, a.change.result, a.change.result))
        with self.state.transaction():
            self.state.put_pairs(name, done)

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
    ) -> None:
        if not items:
            return
        for a in items:
            mfolder.remove(local[a.key])
        with self.state.transaction():
            self.state.delete_pairs(name, [a.uid for a in items])
        rep.counts["deleted locally"] += len(items)

    def _download(
        self, name: str, mfolder: MaildirFolder, uids: list[int], rep: FolderReport
    ) -> None:
        batch: list[tuple[int, str, bytes, Flags, float | None]] = []
        size = 0

        def flush() -> None:
            nonlocal size
            if not batch:
                return
            mfolder.deliver_many([(key, data, fl, mt) for _u, key, data, fl, mt in batch])
            with self.state.transaction():
                self.state.put_pairs(
                    name,
                    [Pair(u, key, content_hash(data), fl, fl) for u, key, data, fl, _ in batch],
                )
            rep.counts["downloaded"] += len(batch)
            batch.clear()
            size = 0

        for uid, data, flags, date in self.remote.fetch(uids):
            lf = to_lf(data)
            batch.append(
                (
                    uid,
                    mfolder.new_key(),
                    lf,
                    flagmod.normalize(flags),
                    date.timestamp() if date else None,
                )
            )
            size += len(lf)
            if len(batch) >= DOWNLOAD_BATCH or size >= DOWNLOAD_BATCH_BYTES:
                flush()
        flush()

    def _upload(
        self, name: str, mfolder: MaildirFolder, items: list[LocalMessage], rep: FolderReport
    ) -> int:
        """Upload new local messages; returns how many got no UID (left for matching)."""
        pending: list[Pair] = []
        unresolved = 0

        def flush() -> None:
            if pending:
                with self.state.transaction():
                    self.state.put_pairs(name, pending)
                rep.counts["uploaded"] += len(pending)
                pending.clear()

        for lm in items:
            try:
                data = to_lf(mfolder.read(lm))
                mtime: float | None = mfolder.path_of(lm).stat().st_mtime
            except (LocalStoreError, OSError):
                continue  # vanished between scan and read: nothing to upload
            date = datetime.fromtimestamp(mtime, timezone.utc) if mtime else None
            uid = self.remote.append(name, to_crlf(data), lm.flags, date)
            if uid is None:
                unresolved += 1
                log.warning(
                    "%s: the server did not tell the UID of an upload; it will be "
                    "matched by content on the next run",
                    name,
                )
                continue
            pending.append(Pair(uid, lm.key, content_hash(data), lm.flags, lm.flags))
            if len(pending) >= UPLOAD_BATCH:
                flush()
        flush()
        return unresolved


def _of(plan: Sequence[act.MessageAction], kind: type[A]) -> list[A]:
    return [a for a in plan if isinstance(a, kind)]
