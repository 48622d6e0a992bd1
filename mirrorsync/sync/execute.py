"""Carrying out one folder's plan, in an order that a kill at any instant leaves
recoverable: each change made on a side first and recorded in the state after."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from mirrorsync.maildir import (
    MaildirFolder,
    MessageVanished,
    Stamp,
)
from mirrorsync.model import Flags, LocalMessage, Pair
from mirrorsync.state import FolderState
from mirrorsync.sync.base import FolderInputs, FolderReport, _of, _started_row
from mirrorsync.sync.transfer import NOT_UPLOADED, Transfers

if TYPE_CHECKING:
    from mirrorsync.sync import actions as act

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One folder's plan being carried out, and what carrying it out did so far."""

    inputs: FolderInputs
    plan: Sequence[act.MessageAction]
    mfolder: MaildirFolder
    rep: FolderReport
    local: Mapping[str, LocalMessage]  # the files the plan touches, where they are now
    touched_local: bool = False  # a file was written, renamed or removed
    unapplied: bool = False  # a server change was left for the next run
    unresolved: int = 0  # uploads whose UID is unknown: matched by content next run


class Executor(Transfers):
    def execute(
        self, inputs: FolderInputs, plan: Sequence[act.MessageAction], rep: FolderReport
    ) -> None:
        """Carry out one folder's plan between two state rows: a started one (the old
        server position, `needs_match` when a copy could be cut off before its state
        commit) and, once every action is done, the new position and Maildir stamp."""
        from mirrorsync.sync import actions as act

        copies = any(isinstance(a, (act.Download, act.Upload)) for a in plan)
        started = _started_row(inputs, needs_match=copies or inputs.pending_match)
        if plan or inputs.prior is None or inputs.uidvalidity_changed:
            with self.state.transaction():
                if inputs.uidvalidity_changed:
                    # The old UIDs mean nothing now; the pairs of messages moved in by
                    # this run (`inputs.pairs`, already under the new UIDVALIDITY) stay.
                    self.state.clear_pairs(inputs.name)
                    self.state.put_pairs(inputs.name, inputs.pairs)
                self.state.put_folder(started)
        job = _Job(inputs, plan, self.maildir.folder(inputs.name), rep, inputs.local)
        self.reporter.folder(inputs.name)
        if plan:
            self._carry_out(job)
        self._record_done(job, started)
        self.reporter.folder_done(inputs.name)

    def _carry_out(self, job: _Job) -> None:
        """Each kind of action by its handler, in an order that keeps every step
        recoverable: flags, then what leaves either side, then the copies."""
        from mirrorsync.sync import actions as act

        inputs, plan = job.inputs, job.plan
        needs_local = _of(plan, act.DeleteLocal) or any(
            a.change.local is not None for a in _of(plan, act.UpdateFlags)
        )
        if needs_local:
            keys = [a.key for a in plan if isinstance(a, (act.DeleteLocal, act.UpdateFlags))]
            job.local = inputs.local.files(keys)
        if _selects(plan):
            self._select(inputs.name, inputs.status)
        self._flags(job, _of(plan, act.UpdateFlags), _of(plan, act.Link))
        self._delete_remote(inputs.name, self._still_deleted(job), job.rep)
        job.touched_local |= self._delete_local(
            inputs.name, job.mfolder, job.local, _of(plan, act.DeleteLocal), job.rep
        )
        self._forget(job, _of(plan, act.Forget), _of(plan, act.Release))
        downloads = _of(plan, act.Download)
        job.touched_local |= bool(downloads)
        self._download(inputs.name, job.mfolder, downloads, inputs.sizes, job.rep)
        uploads = [inputs.local[a.key] for a in _of(plan, act.Upload)]
        job.unresolved = self._upload(inputs.name, job.mfolder, uploads, job.rep)
        if job.rep.counts.get(NOT_UPLOADED):
            job.rep.error = (
                f"{job.rep.counts[NOT_UPLOADED]} messages could not be uploaded (see above)"
            )

    def _flags(self, job: _Job, updates: list[act.UpdateFlags], links: list[act.Link]) -> None:
        """Flag changes and links. Files equal to the server's messages apart from a
        tool's tracking fields take the server's bytes first; one a reader renamed
        meanwhile is not linked now, the next run matches it afresh."""
        inputs = job.inputs
        assert inputs.status is not None
        refill = [(a.uid, a.key, a.hash) for a in links if a.replace]
        if refill:
            from mirrorsync.matching import take_server_bytes

            filled = take_server_bytes(self.remote, job.mfolder, job.local, refill)
            kept = [a for a in links if not a.replace or a.key in filled]
            # a link left for the next run keeps the folder's old position, so the
            # server names that message again then (see `_apply_flags`)
            job.unapplied |= len(kept) < len(links)
            links = kept
            job.touched_local = True
        flagged, unapplied = self._apply_flags(
            inputs.name,
            job.mfolder,
            job.local,
            [*updates, *links],
            inputs.local,
            {p.uid: p.hash for p in inputs.pairs},
            inputs.status.highestmodseq,
            inputs.moved_in,
            job.rep,
        )
        job.touched_local |= flagged
        job.unapplied |= unapplied

    def _still_deleted(self, job: _Job) -> list[act.DeleteRemote]:
        """The files deleted locally, looked for again: a directory listing is not
        atomic against a reader's renames, so a file being re-flagged during the scan
        can be missed. Unless the directories provably did not change since before
        the scan, a "deleted locally" is confirmed before it becomes an expunge."""
        from mirrorsync.sync import actions as act

        deletes = _of(job.plan, act.DeleteRemote)
        if deletes and not _still(job.mfolder, job.inputs.stamp):
            present = job.mfolder.scan()
            deletes = [a for a in deletes if a.key not in present]
        return deletes

    def _forget(self, job: _Job, forget: list[act.Forget], released: list[act.Release]) -> None:
        """Pairs gone on both sides, and (backup mode) pairs the server expunged whose
        file stays: only the state changes."""
        if forget or released:
            with self.state.transaction():
                uids = [a.uid for a in forget] + [a.uid for a in released]
                self.state.delete_pairs(job.inputs.name, uids)
            job.rep.counts["kept locally (backup)"] += len(released)

    def _record_done(self, job: _Job, started: FolderState) -> None:
        """The folder's row once its plan is carried out. The recorded position never
        passes a server change that was not applied: a flag change left for the next
        run keeps the old one (as `started` has it), so the server reports it again;
        the Maildir's stamp only when the scan saw a settled picture we did not touch."""
        inputs = job.inputs
        status = inputs.status
        assert status is not None
        stamp = inputs.stamp
        settled = stamp is not None and stamp.settled and not job.touched_local
        position = started if job.unapplied else status
        done = FolderState(
            inputs.name,
            status.uidvalidity,
            position.uidnext,
            position.highestmodseq,
            needs_match=job.unresolved > 0 or inputs.pending_match,
            local_stamp=stamp.value if settled and stamp else "",
            last_sync=time.time(),
        )
        prior = inputs.prior
        if done != replace(prior or done, last_sync=done.last_sync) or job.plan:
            with self.state.transaction():
                self.state.put_folder(done)
        self.prior[inputs.name] = done

    def _apply_flags(
        self,
        name: str,
        mfolder: MaildirFolder,
        local: Mapping[str, LocalMessage],
        items: Sequence[act.UpdateFlags | act.Link],
        assumed: Mapping[str, LocalMessage],
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

        modified = self._store_all(items, modseq, exact)
        done: list[Pair] = []
        renamed = False
        for a in items:
            if a.uid in modified:
                continue  # changed on the server meanwhile: merged on the next run
            if a.change.local is not None:
                if not _rename(mfolder, local.get(a.key), assumed.get(a.key), a.change.local):
                    continue
                renamed = True
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

    def _store_all(
        self, items: Sequence[act.UpdateFlags | act.Link], modseq: int, exact: set[int]
    ) -> set[int]:
        """One conditional STORE per distinct change: the store adds, then removes with
        the MODSEQ its own add produced, so our first half never reads as a conflict.
        Returns the UIDs changed on the server meanwhile."""
        changes: dict[tuple[Flags, Flags], list[int]] = defaultdict(list)
        for a in items:
            if a.change.remote_add or a.change.remote_remove:
                changes[(a.change.remote_add, a.change.remote_remove)].append(a.uid)
        modified: set[int] = set()
        for (add, remove), uids in changes.items():
            modified |= self._store(uids, add, remove, modseq, exact)
        return modified

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
        local: Mapping[str, LocalMessage],
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


def _rename(
    mfolder: MaildirFolder, msg: LocalMessage | None, planned: LocalMessage | None, flags: Flags
) -> bool:
    """Give a file the flags the plan chose; False when the plan is stale for it: it is
    gone, or a reader changed its flags since the plan was made, or moved or deleted
    it meanwhile. The next run then sees the new truth and merges from the old base."""
    if msg is None or (planned is not None and msg.flags != planned.flags):
        return False
    try:
        mfolder.set_flags(msg, flags, durable=False)
    except MessageVanished:
        return False
    return True


def _selects(plan: Sequence[act.MessageAction]) -> bool:
    """Whether the plan does something to the server folder itself, which must then
    be selected (a SELECT of a large folder costs the server real work); appends
    need no selection."""
    from mirrorsync.sync import actions as act

    return any(
        isinstance(a, (act.DeleteRemote, act.Download))
        or (
            isinstance(a, (act.UpdateFlags, act.Link))
            and bool(a.change.remote_add or a.change.remote_remove)
        )
        or (isinstance(a, act.Link) and a.replace)
        for a in plan
    )


def _still(mfolder: MaildirFolder, stamp: Stamp | None) -> bool:
    """Whether the folder's directories are provably unchanged since `stamp` was taken
    (before the scan): then the scan saw a consistent picture."""
    if stamp is None or not stamp.settled:
        return False
    now = mfolder.stamp()
    return now is not None and now.value == stamp.value
