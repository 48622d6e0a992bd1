"""Free server space: move old or large mail into local-only folders, kill-safely.

`run_archive` takes every server message an `ArchiveRule` selects (found by the
server's own UID SEARCH), makes sure its bytes are in the rule's local-only folder,
fsynced, and only then expunges the server copy and forgets the state's pair. The
local file is verified against the server's bytes (the SHA-256 of the LF form, as
everywhere in mirrorsync) before anything leaves the server:

* a message already synced (a pair whose file is in the source Maildir folder) has
  that file *moved* into the destination (a rename: never two copies, never none),
  after its content hash was found equal to the server's;
* any other message is *delivered* from the server's bytes into the destination.

Kill safety comes from a journal in the state database (`archive_journal`), in the
order every step of mirrorsync follows, "intent first, change, then record":

1. commit a journal row per message: folder, UIDVALIDITY, UID, destination, the key
   the file will have there (chosen before the file exists) and its content hash;
2. move or deliver the file (durably: both directories fsynced);
3. expunge exactly those UIDs on the server;
4. in one transaction, delete the journal rows and the pairs.

`recover_archive` runs before anything else in every run (here and, through the
engine, in every sync) and settles each leftover row by looking at the one thing that
decides: is the file in the destination with the journaled hash? If so the archive
is completed (the UID expunged if it is still there under the same UIDVALIDITY, row
and pair dropped); if not it is rolled back (the row dropped: the message is still on
the server and, if it had one, its file is still in the source folder). Either way
nothing is lost and nothing exists twice.

A folder whose last sync left work undone (a pending content match, a UIDVALIDITY the
state has not seen, local messages never synced) is skipped with a word to sync
first: archiving from it could let that sync copy a message back. So is a message
whose file was deleted or moved locally since the last sync (the sync will carry that
out) and one whose local file differs from the server's bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, BinaryIO

from mirrorsync import flags as flagmod
from mirrorsync.archive_rules import format_size, imap_search_criteria, messages
from mirrorsync.config import FolderFilter
from mirrorsync.content import LfWriter, content_hash, to_lf
from mirrorsync.errors import (
    ConnectionFailed,
    LocalStoreError,
    MirrorsyncError,
    ServerError,
    UsageError,
)
from mirrorsync.maildir import MaildirFolder, MessageVanished, new_key
from mirrorsync.model import NO_FLAGS, Flags, FolderStatus, LocalMessage, Pair
from mirrorsync.state import JournalEntry

if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig, ArchiveRule
    from mirrorsync.maildir import Maildir
    from mirrorsync.remote import RemoteStore
    from mirrorsync.state import State

log = logging.getLogger(__name__)

# Messages and bytes per journal batch (two state commits and one expunge each).
BATCH = 200
BATCH_BYTES = 16 * 1024 * 1024
# Bigger messages are streamed to disk (and to the hash) in pieces, one at a time.
LARGE_MESSAGE = 8 * 1024 * 1024
_HASH_CHUNK = 1024 * 1024
# The flags a Maildir can hold, by the SEARCH key that finds them (for messages too
# big to fetch with their flags; see `_server_flags`).
_FLAG_SEARCH = (
    (("SEEN",), "\\Seen"),
    (("ANSWERED",), "\\Answered"),
    (("FLAGGED",), "\\Flagged"),
    (("DELETED",), "\\Deleted"),
    (("DRAFT",), "\\Draft"),
    (("KEYWORD", "$Forwarded"), "$Forwarded"),
)


@dataclass
class ArchiveReport:
    """What a run archived (or, with dry_run, would archive). `bytes` are the
    server's RFC822.SIZEs: what the quota gains."""

    messages: int = 0
    bytes: int = 0
    per_folder: dict[str, tuple[int, int]] = field(default_factory=dict)
    # source folder -> why it was left alone, or why it failed
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    kept: int = 0  # selected messages left on the server (see the module docstring)

    def add(self, folder: str, messages: int, size: int) -> None:
        if not messages:
            return
        n, b = self.per_folder.get(folder, (0, 0))
        self.per_folder[folder] = (n + messages, b + size)
        self.messages += messages
        self.bytes += size


@dataclass(frozen=True)
class Target:
    """One rule applied to one server folder."""

    rule: ArchiveRule
    folder: str
    dest: str


def targets(
    account: AccountConfig, folders: Sequence[str], rules: Sequence[ArchiveRule]
) -> list[Target]:
    """Every (rule, server folder) pair to search, in rule order then name order.
    Local-only names on the server are no sources (they are not synced); a
    destination that is not local-only is refused, because syncing it would upload
    the archive right back."""
    out = []
    for rule in rules:
        match = FolderFilter(include=(rule.folder,))
        for name in sorted(folders):
            if not match.matches(name) or account.local.is_local_only(name):
                continue
            dest = rule.destination(name)
            if not account.local.is_local_only(dest):
                raise UsageError(
                    f"archive destination {dest!r} (for {name!r}) is not a local-only folder",
                    f"add it to accounts.{account.name}.local.local_only",
                )
            out.append(Target(rule, name, dest))
    return out


def candidates(remote: RemoteStore, criteria: Sequence[str]) -> dict[int, int]:
    """UID -> RFC822.SIZE of the messages of the selected folder matching `criteria`.
    The sizes also weed out UIDs that vanished (or that a server's compact SEARCH
    ranges named without their existing)."""
    uids = remote.search(criteria)
    return remote.sizes(uids) if uids else {}


def estimate(
    account: AccountConfig,
    remote: RemoteStore,
    rules: Sequence[ArchiveRule],
    now: datetime | None = None,
) -> list[tuple[Target, int, int]]:
    """(target, messages, bytes) the rules would archive now, from SEARCH and
    RFC822.SIZE alone (nothing is fetched); a message two rules select counts once."""
    now = now or _now()
    folders = [f.name for f in remote.list_folders() if f.selectable]
    seen: set[tuple[str, int]] = set()
    out = []
    for t in targets(account, folders, rules):
        remote.select(t.folder)
        sizes = {
            u: s
            for u, s in candidates(remote, imap_search_criteria(t.rule, now)).items()
            if (t.folder, u) not in seen
        }
        seen.update((t.folder, u) for u in sizes)
        out.append((t, len(sizes), sum(sizes.values())))
    return out


def run_archive(
    account: AccountConfig,
    remote: RemoteStore,
    maildir: Maildir,
    state: State,
    rules: Sequence[ArchiveRule],
    dry_run: bool,
    emit: Callable[[str], None],
    now: datetime | None = None,
) -> ArchiveReport:
    """Apply `rules`; see the module docstring. The caller holds the account lock.
    Per-folder failures are reported in `ArchiveReport.failed` and the run goes on; a
    lost connection ends it (the journal makes the next run finish the job)."""
    now = now or _now()
    report = ArchiveReport()
    if dry_run:
        pending = state.journal_count()
        if pending:
            emit(
                f"[{account.name}] an interrupted archive of {messages(pending)} would be "
                "completed first"
            )
    else:
        recover_archive(remote, maildir, state)
    folders = [f.name for f in remote.list_folders() if f.selectable]
    archiver = _Archiver(account, remote, maildir, state, emit, report, dry_run)
    for target in targets(account, folders, rules):
        try:
            archiver.folder(target, imap_search_criteria(target.rule, now))
        except ConnectionFailed:
            raise
        except MirrorsyncError as e:
            report.failed[target.folder] = str(e)
            log.warning("%s: archive failed: %s", target.folder, e)
    if not dry_run and state.journal_count():
        # A folder failed half-way: settle its rows now rather than at the next run
        # (which will try again if this cannot be done now either).
        try:
            recover_archive(remote, maildir, state)
        except ConnectionFailed:
            raise
        except MirrorsyncError as e:
            log.warning("an interrupted archive is left for the next run: %s", e)
    return report


def _now() -> datetime:
    return datetime.now(timezone.utc).astimezone()


@dataclass
class _Item:
    """One message of a batch, decided and ready to be placed."""

    uid: int
    key: str  # in the destination
    hash: str
    flags: Flags  # delivered: the server's; moved: the server's as of the fetch
    source: LocalMessage | None = None  # moved from here; None: delivered
    base: Flags = NO_FLAGS  # moved: the pair's local flags (the last sync's)
    data: bytes = b""  # the LF bytes to deliver
    mtime: float | None = None


class _Archiver:
    def __init__(
        self,
        account: AccountConfig,
        remote: RemoteStore,
        maildir: Maildir,
        state: State,
        emit: Callable[[str], None],
        report: ArchiveReport,
        dry_run: bool,
    ) -> None:
        self.account = account
        self.remote = remote
        self.maildir = maildir
        self.state = state
        self.emit = emit
        self.report = report
        self.dry_run = dry_run
        self._seen: set[tuple[str, int]] = set()  # dry run: count a message once

    def folder(self, target: Target, criteria: Sequence[str]) -> None:
        name, dest = target.folder, target.dest
        status = self.remote.select(name)
        sizes = {
            u: s
            for u, s in candidates(self.remote, criteria).items()
            if (name, u) not in self._seen
        }
        if not sizes:
            return
        src = self.maildir.folder(name)
        local = src.scan() if src.exists() else {}
        why = self._unsettled(name, status, local)
        if why:
            self.report.skipped[name] = why
            self.report.kept += len(sizes)
            log.warning("%s: not archived: %s", name, why)
            self.emit(f"[{self.account.name}] {name}: {messages(len(sizes))} not archived: {why}")
            return
        prior = self.state.folder(name)
        pairs = {p.uid: p for p in self.state.pairs(name)} if prior is not None else {}
        # deleted or moved locally since the last sync: the sync carries that out
        pending = sorted(u for u in sizes if u in pairs and pairs[u].key not in local)
        if pending:
            self.report.kept += len(pending)
            log.warning(
                "%s: %d messages not archived: deleted or moved locally since the last "
                "sync; the next sync carries that out",
                name,
                len(pending),
            )
        todo = {u: s for u, s in sizes.items() if u not in pending}
        if self.dry_run:
            self._seen.update((name, u) for u in todo)
            self.report.add(name, len(todo), sum(todo.values()))
            if todo:
                self.emit(
                    f"[{self.account.name}] {name}: would archive {messages(len(todo))} "
                    f"({format_size(sum(todo.values()))}) to {dest}"
                )
            return
        dst = self.maildir.create_folder(dest)  # local only: never created on the server
        before = self.report.per_folder.get(name, (0, 0))
        for batch in _batches(sorted(todo), todo):
            if len(batch) == 1 and todo[batch[0]] > LARGE_MESSAGE:
                self._large(name, status, src, dst, batch[0], todo[batch[0]], pairs, local)
            else:
                self._batch(name, status, src, dst, batch, todo, pairs, local)
        n, b = self.report.per_folder.get(name, (0, 0))
        if n > before[0]:
            self.emit(
                f"[{self.account.name}] {name}: archived {messages(n - before[0])} "
                f"({format_size(b - before[1])}) to {dest}"
            )

    def _unsettled(self, name: str, status: FolderStatus, local: dict[str, LocalMessage]) -> str:
        """Why the folder's last sync must be completed before archiving from it, or ""."""
        prior = self.state.folder(name)
        synced = self.account.folders.matches(name)
        if prior is None:
            if synced and local:
                return "it was never synced; run mirrorsync sync first"
            return ""
        if prior.uidvalidity != status.uidvalidity:
            return "the server renumbered it since the last sync; run mirrorsync sync first"
        if prior.needs_match:
            return "an interrupted sync left it to be matched; run mirrorsync sync first"
        return ""

    # -- one batch of messages

    def _batch(
        self,
        name: str,
        status: FolderStatus,
        src: MaildirFolder,
        dst: MaildirFolder,
        batch: list[int],
        sizes: dict[int, int],
        pairs: dict[int, Pair],
        local: dict[str, LocalMessage],
    ) -> None:
        items: list[_Item] = []
        for uid, body, server_flags, date in self.remote.fetch(batch):
            lf = to_lf(body)
            h = content_hash(lf)
            item = self._decide(name, uid, h, flagmod.normalize(server_flags), src, pairs, local)
            if item is None:
                continue
            if item.source is None:
                item.data = lf
                item.mtime = date.timestamp() if date else None
            items.append(item)
        if not items:
            return
        self._journal(name, status, dst, items)
        placed = self._place(src, dst, items)
        self._complete(name, status.uidvalidity, placed, items, sizes)

    def _large(
        self,
        name: str,
        status: FolderStatus,
        src: MaildirFolder,
        dst: MaildirFolder,
        uid: int,
        size: int,
        pairs: dict[int, Pair],
        local: dict[str, LocalMessage],
    ) -> None:
        """One big message, never held in memory: its hash comes from streaming it
        (into the destination's tmp/ when it is to be delivered)."""
        server_flags = self._server_flags([uid]).get(uid, NO_FLAGS)
        pair = pairs.get(uid)
        if pair is not None and pair.key in local:
            with open(os.devnull, "wb") as null:
                hasher = LfWriter(null)
                if not self.remote.fetch_to_file(uid, size, hasher):
                    return  # expunged meanwhile: nothing to archive
                hasher.close()
            item = self._decide(name, uid, hasher.hexdigest(), server_flags, src, pairs, local)
            if item is None:
                return
            self._journal(name, status, dst, [item])
            self._complete(
                name, status.uidvalidity, self._place(src, dst, [item]), [item], {uid: size}
            )
            return
        key = dst.new_key()
        entry: JournalEntry | None = None

        def write(f: BinaryIO) -> None:
            nonlocal entry
            writer = LfWriter(f)
            if not self.remote.fetch_to_file(uid, size, writer):
                raise _Vanished
            writer.close()
            # The hash is known only now; the file is still in tmp/, so the intent is
            # committed before the file is placed, as for every other message.
            entry = JournalEntry(name, status.uidvalidity, uid, dst.name, key, writer.hexdigest())
            with self.state.transaction():
                self.state.put_journal([entry])

        try:
            dst.deliver_stream(key, write, server_flags)
        except _Vanished:
            return
        assert entry is not None
        item = _Item(uid, key, entry.hash, server_flags)
        self._complete(name, status.uidvalidity, [item], [item], {uid: size})

    def _decide(
        self,
        name: str,
        uid: int,
        server_hash: str,
        server_flags: Flags,
        src: MaildirFolder,
        pairs: dict[int, Pair],
        local: dict[str, LocalMessage],
    ) -> _Item | None:
        """Move the synced file if it holds the server's bytes; deliver when there is
        none; keep the message on the server when the file differs (someone edited
        it: which copy is right is not ours to decide)."""
        pair = pairs.get(uid)
        if pair is None:
            return _Item(uid, new_key(), server_hash, server_flags)
        msg = local.get(pair.key)
        if msg is None:
            return None
        try:
            local_hash = file_hash(src.path_of(msg))
        except MessageVanished:
            fresh = src.scan()  # a reader renamed it (new flags) since the scan
            local.clear()
            local.update(fresh)
            msg = local.get(pair.key)
            if msg is None:
                self.report.kept += 1
                return None
            local_hash = file_hash(src.path_of(msg))
        if local_hash != server_hash:
            self.report.kept += 1
            log.warning(
                "%s: UID %d not archived: the local file %s differs from the server's copy",
                name,
                uid,
                src.path_of(msg),
            )
            return None
        return _Item(uid, pair.key, server_hash, server_flags, source=msg, base=pair.local_flags)

    def _journal(
        self, name: str, status: FolderStatus, dst: MaildirFolder, items: list[_Item]
    ) -> None:
        with self.state.transaction():
            self.state.put_journal(
                JournalEntry(name, status.uidvalidity, i.uid, dst.name, i.key, i.hash)
                for i in items
            )

    def _place(self, src: MaildirFolder, dst: MaildirFolder, items: list[_Item]) -> list[_Item]:
        """Move or deliver each file into `dst`; returns the items whose file is there.
        A file a mail reader renamed meanwhile is looked for once more; one it removed
        stays unarchived (its journal row is dropped by `_complete`)."""
        placed: list[_Item] = []
        deliveries = [i for i in items if i.source is None]
        if deliveries:
            dst.deliver_many([(i.key, i.data, i.flags, i.mtime) for i in deliveries])
            placed += deliveries
        for item in items:
            if item.source is None:
                continue
            try:
                moved = src.move_to(item.source, dst)
            except MessageVanished:
                renamed = src.scan().get(item.key)  # a reader changed its flags
                if renamed is None:
                    self.report.kept += 1
                    continue
                moved = src.move_to(renamed, dst)
            # The file's flags in the archive: the sync's three-way merge, so a flag
            # set on the server since the last sync is not lost with the server copy.
            merged = flagmod.merge(item.base, moved.flags, item.flags)
            if moved.flags != merged:
                dst.set_flags(moved, merged)
            placed.append(item)
        return placed

    def _complete(
        self,
        name: str,
        uidvalidity: int,
        placed: list[_Item],
        journaled: list[_Item],
        sizes: dict[int, int],
    ) -> None:
        gone, remaining = expunge_archived(self.remote, [i.uid for i in placed])
        keys = {i.uid: (i.key, i.hash) for i in placed}
        with self.state.transaction():
            self.state.delete_journal(name, [i.uid for i in journaled])
            _settle_pairs(self.state, name, gone, remaining, keys)
        self.report.add(name, len(gone), sum(sizes.get(u, 0) for u in gone))
        self.report.kept += len(remaining)

    def _server_flags(self, uids: list[int]) -> dict[int, Flags]:
        """The mappable flags of a few UIDs by one SEARCH per flag: `fetch_to_file`
        brings no flags, and a listing of the whole folder would cost more."""
        from mirrorsync.imap.wire import uid_set

        found: dict[int, set[str]] = {u: set() for u in uids}
        for keys, flag in _FLAG_SEARCH:
            for uid in self.remote.search(["UID", uid_set(uids), *keys]):
                if uid in found:
                    found[uid].add(flag)
        return {u: frozenset(f) for u, f in found.items()}


class _Vanished(Exception):
    """The message was expunged on the server while it was being streamed."""


def _batches(uids: list[int], sizes: dict[int, int]) -> Iterator[list[int]]:
    """At most BATCH messages or BATCH_BYTES; a large message travels alone."""
    batch: list[int] = []
    total = 0
    for uid in uids:
        size = sizes[uid]
        if size > LARGE_MESSAGE:
            yield [uid]
            continue
        if batch and (len(batch) >= BATCH or total + size > BATCH_BYTES):
            yield batch
            batch, total = [], 0
        batch.append(uid)
        total += size
    if batch:
        yield batch


def file_hash(path: object) -> str:
    """The content hash of a Maildir file (LF form already), read in pieces."""
    from pathlib import Path

    p = Path(str(path))
    h = hashlib.sha256()
    try:
        with open(p, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except FileNotFoundError as e:
        raise MessageVanished(p, "read") from e
    except OSError as e:
        raise LocalStoreError(f"cannot read {p}: {e.strerror or e}", "re-run") from e
    return h.hexdigest()


def expunge_archived(remote: RemoteStore, uids: list[int]) -> tuple[list[int], list[int]]:
    """Expunge exactly `uids` in the selected folder; returns (gone, still there).

    With UIDPLUS, UID EXPUNGE removes exactly them. Without it `RemoteStore.expunge`
    leaves them flagged \\Deleted when another client's \\Deleted messages would go
    too; those are found by a SEARCH and reported as still there, so their pairs can
    be kept and the next sync expunges them (their files are gone from the source
    folder: to the sync that reads as a local deletion)."""
    if not uids:
        return [], []
    remote.expunge(uids)
    if "UIDPLUS" in remote.capabilities:
        return sorted(uids), []
    from mirrorsync.imap.wire import uid_set

    still = set(remote.search(["UID", uid_set(uids)])) & set(uids)
    return sorted(set(uids) - still), sorted(still)


def _settle_pairs(
    state: State,
    folder: str,
    gone: list[int],
    remaining: list[int],
    keys: dict[int, tuple[str, str]],
) -> None:
    """After an expunge: forget the pairs of the messages that left the server; keep
    (or make) one for a message still there, pointing at its archived key, which
    the source folder no longer has, so the next sync expunges it instead of
    downloading it again."""
    state.delete_pairs(folder, gone)
    if not remaining:
        return
    have = {p.uid for p in state.pairs(folder)}
    state.put_pairs(
        folder,
        [
            Pair(u, keys[u][0], keys[u][1], NO_FLAGS, NO_FLAGS)
            for u in remaining
            if u not in have and u in keys
        ],
    )


# -- recovery --------------------------------------------------------------------------


def recover_archive(remote: RemoteStore, maildir: Maildir, state: State) -> int:
    """Complete or roll back the archive a killed run left in the journal; returns
    how many messages it settled. One COUNT when there is nothing to do.

    Per row: the file is in the destination with the journaled hash -> expunge the
    UID if the folder still has it under the same UIDVALIDITY, drop row and pair;
    the file is not there -> drop the row (the message is still on the server, and
    its file, if it had one, still in the source folder: nothing to undo)."""
    if state.journal_count() == 0:
        return 0
    rows = state.journal()
    by_folder: dict[tuple[str, int], list[JournalEntry]] = defaultdict(list)
    for e in rows:
        by_folder[(e.folder, e.uidvalidity)].append(e)
    scans: dict[str, dict[str, LocalMessage]] = {}
    settled = 0
    for (folder, uidvalidity), entries in sorted(by_folder.items()):
        present: list[JournalEntry] = []
        for e in entries:
            if _archived_file_ok(maildir, scans, e):
                present.append(e)
        gone: list[int] = []
        remaining: list[int] = []
        if present:
            status = _select_if_there(remote, folder)
            if status is None or status.uidvalidity != uidvalidity:
                # The folder is gone, or renumbered: no UID of the journal names a
                # message any more; the archived files are the copies that count.
                if status is not None:
                    log.warning(
                        "%s: the server renumbered the folder during an interrupted archive; "
                        "%d archived messages may still be on the server",
                        folder,
                        len(present),
                    )
                gone = [e.uid for e in present]
            else:
                gone, remaining = expunge_archived(remote, [e.uid for e in present])
        keys = {e.uid: (e.key, e.hash) for e in present}
        with state.transaction():
            state.delete_journal(folder, [e.uid for e in entries])
            _settle_pairs(state, folder, gone, remaining, keys)
        settled += len(entries)
        log.info(
            "%s: finished an interrupted archive: %d completed, %d rolled back",
            folder,
            len(present),
            len(entries) - len(present),
        )
    return settled


def _archived_file_ok(
    maildir: Maildir, scans: dict[str, dict[str, LocalMessage]], e: JournalEntry
) -> bool:
    dest = maildir.folder(e.dest)
    if e.dest not in scans:
        scans[e.dest] = dest.scan() if dest.exists() else {}
    msg = scans[e.dest].get(e.key)
    if msg is None:
        return False
    try:
        ok = file_hash(dest.path_of(msg)) == e.hash
    except MessageVanished:
        return False
    if not ok:
        log.warning(
            "%s: %s does not hold the message archived from %s (UID %d); the server copy is kept",
            e.dest,
            dest.path_of(msg),
            e.folder,
            e.uid,
        )
    return ok


def _select_if_there(remote: RemoteStore, folder: str) -> FolderStatus | None:
    """Select `folder`; None when the server no longer has it. Any other refusal
    raises, leaving the journal for the next run."""
    try:
        return remote.select(folder)
    except ServerError:
        if any(f.name == folder and f.selectable for f in remote.list_folders()):
            raise
        return None
