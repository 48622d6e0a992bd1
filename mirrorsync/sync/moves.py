"""Moves between folders: found by content, carried out, and folded into the
folders' inputs before each folder is planned, so that a move is one action instead
of a copy and a deletion."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mirrorsync.errors import LocalStoreError, ServerError
from mirrorsync.model import Pair
from mirrorsync.sync.actions import FreeOnServer, MoveLocally, MoveOnServer
from mirrorsync.sync.base import FolderInputs, FolderReport, SyncBase, _guarded, _started_row
from mirrorsync.sync.plan import Moved

if TYPE_CHECKING:
    from mirrorsync.maildir import MaildirFolder
    from mirrorsync.remote import RemoteStore
    from mirrorsync.sync import actions as act
    from mirrorsync.sync.plan import FolderView

log = logging.getLogger(__name__)
Hashes = dict[str, dict[str, str]]  # folder -> key -> content hash


class Moves(SyncBase):
    def _moves(self, changed: dict[str, FolderInputs], reports: dict[str, FolderReport]) -> None:
        """Find moves across folders (hashing only what a move could involve), carry
        them out, and fold them into the folders' inputs as if the messages had
        always been where they are now."""
        from mirrorsync.sync.plan import MIRROR, lost_locally, lost_on_server, plan_moves

        modes = {n: self.account.sync.mode_for(n) for n in changed}
        mirror = {n: i for n, i in changed.items() if modes[n] == MIRROR}
        lost_local = any(lost_locally(i.pairs, i.remote, i.local) for i in changed.values())
        lost_remote = [
            (n, p) for n, i in mirror.items() for p in lost_on_server(i.pairs, i.remote, i.local)
        ]
        local_hashes, local_loose = self._hash_new_files(mirror) if lost_local else ({}, {})
        remote_hashes = (
            self._hash_arrivals(changed, mirror, lost_remote, reports) if lost_remote else {}
        )
        archives, archives_loose = self._archived_candidates(changed) if lost_local else ({}, {})
        if not any(local_hashes.values()) and not any(remote_hashes.values()) and not archives:
            if self._oracle:
                self._oracle.check_moves(reports, [])
            return
        views = move_views(changed, local_hashes, remote_hashes, local_loose)
        moves = plan_moves(views, archives, archives_loose, modes)
        if self._oracle:
            self._oracle.check_moves(reports, moves)
        self._carry_out_moves(moves, changed, reports)

    def _carry_out_moves(
        self,
        moves: list[act.MessageMove],
        changed: dict[str, FolderInputs],
        reports: dict[str, FolderReport],
    ) -> None:
        """Carry out each move (a dry run only pretends to), then fold them all into
        the folders' inputs (`apply_moves`), so each folder is planned as if its
        messages had always been where they are now. A move that failed is left out:
        the next run finds it again."""
        from mirrorsync.sync.plan import Sides, apply_moves

        done: list[Moved] = []
        arrived: dict[str, list[Pair]] = defaultdict(list)  # pairs moved in so far
        for move in moves:
            if self.options.dry_run:
                # The folders' plans are then made as if the move had been done, so a
                # move shows as one line, not also as an upload and a deletion.
                self.emit(f"[{self.account.name}] {move.describe()}")
            moved = _guarded(reports[move.src], self._execute_move, move, changed, arrived)
            if moved is None:
                continue
            done.append(moved)
            if moved.pair is not None and not isinstance(move, FreeOnServer):
                arrived[move.dst].append(moved.pair)
            if not self.options.dry_run:
                _count(reports, move)
        sides = {
            n: Sides(
                i.pairs, i.remote, dict(i.local.items()), frozenset(i.moved_in), i.pending_match
            )
            for n, i in changed.items()
        }
        for n, after in apply_moves(sides, done).items():
            i = changed[n]
            i.pairs, i.remote = list(after.pairs), dict(after.remote)
            i.local = i.local.holding(dict(after.local))
            i.moved_in, i.pending_match = set(after.moved_in), after.pending_match

    def _hash_new_files(self, mirror: dict[str, FolderInputs]) -> tuple[Hashes, Hashes]:
        """Each folder's `hash_files`."""
        hashes: Hashes = {}
        loose: Hashes = {}
        for n, i in mirror.items():
            hashes[n], loose[n] = hash_files(self.maildir.folder(n), i)
        return hashes, loose

    def _hash_arrivals(
        self,
        changed: dict[str, FolderInputs],
        mirror: dict[str, FolderInputs],
        lost: list[tuple[str, Pair]],
        reports: dict[str, FolderReport],
    ) -> dict[str, dict[int, str]]:
        """The content hashes of the new server messages that could be one the server
        lost elsewhere: only those with its Message-ID and size are fetched. A read
        refused here fails that folder alone (its plan is then skipped), not the run."""
        from mirrorsync.content import crlf_size, message_id, to_lf

        wanted: set[tuple[str | None, int]] = set()
        for n, p in lost:
            try:
                data = to_lf(self.maildir.folder(n).read(changed[n].local.file(p.key)))
            except LocalStoreError:
                continue
            wanted.add((message_id(data), crlf_size(data)))
        hashes: dict[str, dict[int, str]] = {}
        for n, i in mirror.items():
            fresh = unpaired_uids(i)
            if not fresh or not wanted:
                continue
            try:
                self._select(n, i.status)
                hashes[n] = hash_messages(self.remote, fresh, wanted)
            except ServerError as e:
                reports[n].error = str(e)
        return hashes

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
        arrived: dict[str, list[Pair]],
    ) -> Moved:
        """Carry out one move (a dry run only pretends to); `arrived` holds the pairs
        moved into each folder so far this run."""
        if isinstance(move, FreeOnServer):
            self._free(move, changed[move.src])
            return Moved(move)
        src, dst = changed[move.src], changed[move.dst]
        if not self.options.dry_run:
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
                    self.state.put_pairs(move.dst, [*dst.pairs, *arrived[move.dst]])
        if isinstance(move, MoveOnServer):
            return self._move_on_server(move, src, dst, arrived[move.dst])
        return self._move_locally(move, src, dst)

    def _free(self, move: FreeOnServer, src: FolderInputs) -> None:
        """The content is safe in the local-only folder (its hash is the state's), so
        the server copy goes; the file there is never touched."""
        if not self.options.dry_run:
            self._select(move.src, src.status)
            self.remote.expunge([move.uid])
            with self.state.transaction():
                self.state.delete_pairs(move.src, [move.uid])

    def _move_on_server(
        self, move: MoveOnServer, src: FolderInputs, dst: FolderInputs, arrived: list[Pair]
    ) -> Moved:
        """A file moved between local folders: UID MOVE, then the pair in its new home."""
        if self.options.dry_run:
            # The UID the move will most likely get (the target's next): a dry run
            # cannot know it, and without one a flag change the reader made while
            # moving the file would not show as the flag change it will be.
            assert dst.status is not None
            last = max((p.uid for p in arrived), default=0)
            new_uid: int | None = max(dst.status.uidnext, last + 1)
        else:
            new_uid = self._server_move(move, src, dst)
        if new_uid is None:
            return Moved(move)  # linked by content on the next run
        return Moved(move, Pair(new_uid, move.key, move.hash, move.flags, move.flags))

    def _server_move(self, move: MoveOnServer, src: FolderInputs, dst: FolderInputs) -> int | None:
        """UID MOVE on the server, recorded; the new UID where the server told it."""
        self._select(move.src, src.status)
        if move.replace:  # the file takes the server's bytes, before the move
            from mirrorsync.matching import take_server_bytes

            item = (move.uid, move.key, move.hash)
            take_server_bytes(self.remote, self.maildir.folder(move.dst), dst.local, [item])
        new_uid = self.remote.move([move.uid], move.dst).get(move.uid)
        with self.state.transaction():
            self.state.delete_pairs(move.src, [move.uid])
            if new_uid is not None:
                pair = Pair(new_uid, move.key, move.hash, move.flags, move.flags)
                self.state.put_pairs(move.dst, [pair])
        return new_uid

    def _move_locally(self, move: MoveLocally, src: FolderInputs, dst: FolderInputs) -> Moved:
        """A message moved between server folders: rename the file to its new home."""
        # Only the moved file is looked for: the source's view may hold just the
        # pairs a server delta named, and a listing of the whole folder there
        # would make every other file look new (and be uploaded again).
        msg = src.local.file(move.key)
        if self.options.dry_run:
            moved = msg
        else:
            mfolder = self.maildir.folder(move.src)
            moved = mfolder.move_to(msg, self.maildir.folder(move.dst))
        # The pair keeps the flags as last synced, so the folder's plan then merges
        # what either side changed meanwhile (a reader's flag while another client
        # moved the message) instead of taking both sides as they are.
        old = next((p for p in src.pairs if p.uid == move.uid), None)
        if old is None:
            pair = Pair(move.new_uid, move.key, move.hash, dst.remote[move.new_uid], moved.flags)
        else:
            pair = Pair(move.new_uid, move.key, move.hash, old.remote_flags, old.local_flags)
        if not self.options.dry_run:
            with self.state.transaction():
                self.state.delete_pairs(move.src, [move.uid])
                self.state.put_pairs(move.dst, [pair])
        return Moved(move, pair, moved)


def _count(reports: dict[str, FolderReport], move: act.MessageMove) -> None:
    if isinstance(move, FreeOnServer):
        reports[move.src].counts["freed on server (archived locally)"] += 1
    else:
        reports[move.src].counts["moved out"] += 1
        reports[move.dst].counts["moved in"] += 1


def move_views(
    folders: Mapping[str, FolderInputs],
    local_hashes: Hashes,
    remote_hashes: dict[str, dict[int, str]],
    local_loose: Hashes,
) -> dict[str, FolderView]:
    """The folders as `plan_moves` sees them, with the hashes computed for them."""
    from mirrorsync.sync.plan import move_view

    views = {}
    for n, i in folders.items():
        hashes = (local_hashes.get(n, {}), remote_hashes.get(n, {}), local_loose.get(n, {}))
        views[n] = move_view(i.pairs, i.remote, i.local, i.matches, *hashes)
    return views


def hash_files(mfolder: MaildirFolder, i: FolderInputs) -> tuple[dict[str, str], dict[str, str]]:
    """The content hashes of the files no pair or match accounts for (a file lost
    elsewhere could be one of them) and, for those with tracking fields a reader's
    save added, the hashes without them. The engine and the plan oracle both hash
    by this."""
    from mirrorsync.content import content_hash, loose_hash, to_lf

    hashes: dict[str, str] = {}
    loose: dict[str, str] = {}
    for key in _unpaired_keys(i):
        try:
            data = to_lf(mfolder.read(i.local[key]))
        except LocalStoreError:
            continue
        hashes[key] = content_hash(data)
        if h := loose_hash(data):
            loose[key] = h
    return hashes, loose


def hash_messages(
    store: RemoteStore, uids: list[int], wanted: set[tuple[str | None, int]] | None
) -> dict[int, str]:
    """The content hashes of the messages `uids` of the selected folder: those whose
    Message-ID and size are `wanted`, or every one (None: the plan oracle, which
    trusts no preselection)."""
    from mirrorsync.content import content_hash, to_lf

    if wanted is not None:
        ids = store.identities(uids)
        uids = [u for u, x in ids.items() if (x.message_id, x.size) in wanted]
    return {u: content_hash(to_lf(d)) for u, d, _f, _t in store.fetch(uids)}


def _unpaired_keys(i: FolderInputs) -> list[str]:
    taken = {p.key for p in i.pairs} | {m.key for m in i.matches}
    return [k for k in i.local if k not in taken]


def unpaired_uids(i: FolderInputs) -> list[int]:
    taken = {p.uid for p in i.pairs} | {m.uid for m in i.matches}
    return [u for u in i.remote if u not in taken]
