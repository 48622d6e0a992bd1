"""Learning what each side of a folder holds now, as cheaply as the state allows."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from mirrorsync import flags as flagmod
from mirrorsync.errors import (
    LocalStoreError,
    ServerError,
)
from mirrorsync.maildir import Entry as ListedFile
from mirrorsync.maildir import MaildirFolder, Stamp
from mirrorsync.model import Flags, FolderChanges, FolderStatus, LocalMessage, Pair
from mirrorsync.state import FolderState, PairRow
from mirrorsync.sync.base import FolderInputs, SyncBase
from mirrorsync.sync.views import LocalView

if TYPE_CHECKING:
    from mirrorsync.remote import RemoteStore
    from mirrorsync.sync.plan import Match

log = logging.getLogger(__name__)
A = TypeVar("A")


@dataclass(frozen=True)
class _Server:
    """A server folder as gathered: its status (None: not there yet, in a dry run),
    its messages' flags (None: as the state last saw them) and the sizes known."""

    status: FolderStatus | None
    flags: dict[int, Flags] | None
    sizes: dict[int, int]


class Gather(SyncBase):
    def gather(self, name: str) -> FolderInputs | None:
        """What each side holds now, learned as cheaply as the state allows; None when
        neither side changed since the last sync."""
        mfolder = self.maildir.folder(name)
        prior = self.prior.get(name)
        stamp = mfolder.stamp()
        remote_same, local_same = self._unchanged(prior, self.statuses.get(name), stamp)
        if remote_same and local_same:
            return None
        # Only the server changed and it may say exactly what: then just the pairs of
        # the UIDs it names are loaded, so the cost follows the change, not the folder.
        changes = self._delta(name, prior) if local_same else None
        if changes is not None and prior is not None and _is_delta(changes, prior):
            return self._from_delta(name, prior, changes, stamp)
        rows = self.state.pair_rows(name) if prior else []
        listing = None if local_same else _listing(mfolder, {})
        server = self._server_now(name, prior, rows, changes, remote_same)
        changed = _validity_changed(prior, server.status)
        if changed:
            _warn_validity(name, prior, server.status)
            rows = []
            if listing is None:
                listing = _listing(mfolder, None)  # every file is a candidate now
        return self._inputs(name, prior, stamp, rows, server, listing, changed)

    def _unchanged(
        self, prior: FolderState | None, now: FolderStatus | None, stamp: Stamp | None
    ) -> tuple[bool, bool]:
        """Whether the server folder and the Maildir are each as the last sync left
        them, by their numbers and stamp alone; never when the state is not trusted
        (a match is pending, or `--verify`)."""
        if prior is None or prior.needs_match or self.options.verify:
            return False, False
        numbers = (prior.uidvalidity, prior.uidnext, prior.highestmodseq)
        remote_same = bool(now and prior.highestmodseq and _numbers(now) == numbers)
        local_same = bool(prior.local_stamp and stamp and stamp.value == prior.local_stamp)
        return remote_same, local_same

    def _delta(self, name: str, prior: FolderState | None) -> FolderChanges | None:
        """What changed on the server since the last sync, where QRESYNC can say."""
        if prior is None or not prior.highestmodseq or not self._qresync:
            return None
        return self._select_changes(name, prior, None)

    def _from_delta(
        self, name: str, prior: FolderState, changes: FolderChanges, stamp: Stamp | None
    ) -> FolderInputs:
        """A folder only the server changed, from the delta it named: its pairs only,
        and the local side as the state knows it."""
        pairs = self.state.pairs_for(name, set(changes.changed) | set(changes.vanished))
        return FolderInputs(
            name,
            changes.status,
            prior,
            pairs,
            _server_view(((p.uid, p.remote_flags) for p in pairs), changes),
            LocalView(self.maildir.folder(name), _local_view(pairs), False, self._located()),
            [],
            stamp=stamp,
            known=self._pair_count(name),
        )

    def _server_now(
        self,
        name: str,
        prior: FolderState | None,
        rows: Sequence[PairRow],
        changes: FolderChanges | None,
        same: bool,
    ) -> _Server:
        """The server folder now: as the state last saw it when it is `same`, a delta
        on the state's flags where the server can give one (already asked for:
        `changes`), else a full listing."""
        now = self.statuses.get(name)
        if same:
            return _Server(now, None, {})
        trusted = prior is not None and not prior.needs_match and not self.options.verify
        try:
            if changes is None and trusted and prior and prior.highestmodseq:
                changes = self._select_changes(name, prior, [r[0] for r in rows])
            if changes is not None:
                full = changes.full
                sizes = {u: m.size for u, m in changes.changed.items() if m.size} if full else {}
                return _Server(changes.status, _server_view(_remote_letters(rows), changes), sizes)
            status = self._select(name)
            messages = self.remote.list_messages()
            flags = {u: flagmod.normalize(m.flags) for u, m in messages.items()}
            return _Server(status, flags, {u: m.size for u, m in messages.items() if m.size})
        except ServerError:
            if not self.options.dry_run or now is not None:
                raise
            return _Server(None, {}, {})  # dry-run: the folder would be created first

    def _inputs(
        self,
        name: str,
        prior: FolderState | None,
        stamp: Stamp | None,
        rows: list[PairRow],
        server: _Server,
        listing: dict[str, ListedFile] | None,
        changed: bool,
    ) -> FolderInputs:
        """The folder's inputs from the messages that differ from the state: most of a
        changed folder is as the state left it on both sides, needs no action, and is
        never made into objects, planned or held while moves are looked for, so memory
        and planning follow the change."""
        keep, remote, local = _differing(rows, server.flags, listing)
        pairs = self.state.pairs_for(name, [r[0] for r in keep]) if keep else []
        mfolder = self.maildir.folder(name)
        matches = content_matches(self.remote, mfolder, server.status, pairs, remote, local)
        found: dict[str, int] = {}
        if self.options.verify and rows and prior and not changed:
            found = self._drop_duplicates(prior, mfolder, pairs, remote, local, matches)
        return FolderInputs(
            name,
            server.status,
            prior,
            pairs,
            remote,
            LocalView(mfolder, local, listing is not None, self._located()),
            matches,
            uidvalidity_changed=changed,
            stamp=stamp,
            sizes=server.sizes,
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
        name = prior.name
        paired_u = {p.uid for p in differing} | {m.uid for m in matches}
        paired_k = {p.key for p in differing} | {m.key for m in matches}
        unknown_u = [u for u in remote if u not in paired_u and u < prior.uidnext]
        unknown_k = [
            k for k in local if k not in paired_k and _older(mfolder, local[k], prior.last_sync)
        ]
        if not unknown_u and not unknown_k:
            return {}
        synced = self._synced(name, differing, remote, local)
        found: dict[str, int] = {}
        if unknown_u:
            on_server = self._server_twins(name, unknown_u, synced)
            for uid in on_server:
                del remote[uid]
            if on_server:
                found["duplicates on server (not downloaded)"] = len(on_server)
        on_disk = _local_twins(name, mfolder, [local[k] for k in unknown_k], synced)
        for key in on_disk:
            del local[key]
        if on_disk:
            found["duplicates in the Maildir (not uploaded)"] = len(on_disk)
        return found

    def _synced(
        self,
        name: str,
        differing: list[Pair],
        remote: dict[int, Flags],
        local: dict[str, LocalMessage],
    ) -> dict[str, Pair]:
        """The folder's pairs still on both sides, by content hash. A pair in
        `differing` may be gone from one side; any other pair is steady, so present on
        both."""
        gone_u = {p.uid for p in differing if p.uid not in remote}
        gone_k = {p.key for p in differing if p.key not in local}
        synced: dict[str, Pair] = {}
        for p in self.state.pairs(name):
            if p.hash and p.uid not in gone_u and p.key not in gone_k:
                synced.setdefault(p.hash, p)
        return synced

    def _server_twins(self, name: str, uids: list[int], synced: dict[str, Pair]) -> list[int]:
        """The UIDs among `uids` whose content is a synced message's, each named."""
        from mirrorsync.content import content_hash, message_id, to_lf

        self._select(name)
        twins = []
        for uid, data, _flags, _date in self.remote.fetch(uids):
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
            twins.append(uid)
        return twins

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


def _older(mfolder: MaildirFolder, msg: LocalMessage, than: float) -> bool:
    """Whether the file was last renamed or changed before `than` (its ctime)."""
    try:
        return mfolder.path_of(msg).stat().st_ctime < than
    except OSError:
        return False


def _warn_validity(name: str, prior: FolderState | None, status: FolderStatus | None) -> None:
    assert prior is not None and status is not None
    log.warning(
        "%s: the server's UIDVALIDITY changed (%s -> %s); matching messages by content, "
        "uploading local ones the server lacks",
        name,
        prior.uidvalidity,
        status.uidvalidity,
    )


def _numbers(status: FolderStatus) -> tuple[int, int, int]:
    return (status.uidvalidity, status.uidnext, status.highestmodseq)


def _is_delta(changes: FolderChanges, prior: FolderState) -> bool:
    """Whether `changes` is a delta on what the state knows (not a full listing, nor
    under another UIDVALIDITY)."""
    return not changes.full and changes.status.uidvalidity == prior.uidvalidity


def _validity_changed(prior: FolderState | None, status: FolderStatus | None) -> bool:
    return bool(prior and status and prior.uidvalidity != status.uidvalidity)


def _listing(mfolder: MaildirFolder, absent: A) -> dict[str, ListedFile] | A:
    """The folder's files, or `absent` when its directory is not there."""
    return mfolder.listing() if mfolder.exists() else absent


def _local_twins(
    name: str, mfolder: MaildirFolder, files: list[LocalMessage], synced: dict[str, Pair]
) -> list[str]:
    """The keys among `files` whose content is a synced message's, each named."""
    from mirrorsync.content import content_hash, message_id, to_lf

    twins = []
    for msg in files:
        try:
            lf = to_lf(mfolder.read(msg))
        except LocalStoreError:
            continue
        if content_hash(lf) not in synced:
            continue
        log.warning(
            "%s: %s is a second copy of a message already synced (Message-ID %s); "
            "it is not uploaded",
            name,
            mfolder.path_of(msg),
            message_id(lf) or "none",
        )
        twins.append(msg.key)
    return twins


def content_matches(
    store: RemoteStore,
    mfolder: MaildirFolder,
    status: FolderStatus | None,
    pairs: Sequence[Pair],
    remote: dict[int, Flags],
    local: dict[str, LocalMessage],
) -> list[Match]:
    """New on both sides: after a crash, a UIDVALIDITY change or a first sync these
    may be copies of each other; and when a message was moved into this folder on
    both sides (a reader here, another client there), the two arrivals are one
    message. Linked by content, they are never uploaded and downloaded. The engine
    and the plan oracle (on its own reader) both match by this."""
    paired_u = {p.uid for p in pairs}
    paired_k = {p.key for p in pairs}
    new_remote = [u for u in remote if u not in paired_u]
    new_local = [m for k, m in local.items() if k not in paired_k]
    if not (status and new_remote and new_local):
        return []
    from mirrorsync.matching import match_by_content

    return match_by_content(store, mfolder, new_remote, new_local)
