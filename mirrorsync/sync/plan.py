"""The pure planner: state + what each side holds now -> the actions of one sync.

No I/O happens here. The engine gathers the inputs, this module decides, and the
executor carries the plan out, so `--dry-run` is just "print the plan" and every
decision is testable from a table. `docs/sync-algorithm.md` states the same rules in
prose; keep the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from mirrorsync.model import Flags, LocalMessage, Pair
from mirrorsync.sync.actions import (
    CreateLocalFolder,
    CreateRemoteFolder,
    DeleteLocal,
    DeleteLocalFolder,
    DeleteRemote,
    DeleteRemoteFolder,
    Download,
    FlagChange,
    FolderAction,
    Forget,
    ForgetFolder,
    FreeOnServer,
    Link,
    MessageAction,
    MessageMove,
    MoveLocally,
    MoveOnServer,
    Release,
    ResetFolder,
    SyncFolder,
    UpdateFlags,
    Upload,
)

MIRROR, BACKUP = "mirror", "backup"


@dataclass(frozen=True)
class Match:
    """A server message and a local file shown (by hash) to hold the same content."""

    uid: int
    key: str
    hash: str  # the server's content hash
    replace: bool = False  # equal only apart from tracking fields: the file takes the server's


def plan_folders(
    known: Set[str],
    local: Set[str],
    remote: Set[str],
    counts: Mapping[str, int],
) -> list[FolderAction]:
    """Decide what happens to each folder as a whole.

    `known` are the folders in state, `local`/`remote` those present now (already
    filtered by the config). `counts[name]` is the message count on the side that
    still has a folder the other side lost. Creates and syncs come in name order
    (parents first), deletions in reverse order (children first).
    """
    upkeep: list[FolderAction] = []
    deletes: list[list[FolderAction]] = []
    for name in sorted(known | local | remote):
        in_l, in_r, was = name in local, name in remote, name in known
        if in_l and in_r:
            upkeep.append(SyncFolder(name))
        elif not was:
            # New on one side: create it on the other.
            create: FolderAction = CreateLocalFolder(name) if in_r else CreateRemoteFolder(name)
            upkeep += [create, SyncFolder(name)]
        elif in_r:
            # Was synced, gone locally. Deleted for real only if the server's copy is
            # empty too; otherwise its mail would be lost, so download it again.
            if counts.get(name, 1) == 0 and name != "INBOX":
                deletes.append([DeleteRemoteFolder(name), ForgetFolder(name)])
            else:
                reason = (
                    f"removed locally but the server holds {counts.get(name, '?')} messages;"
                    " downloading them again (empty a folder before deleting it)"
                )
                upkeep += [ResetFolder(name, reason), CreateLocalFolder(name), SyncFolder(name)]
        elif in_l:
            # Was synced, gone on the server: the mirror image of the case above.
            if counts.get(name, 1) == 0:
                deletes.append([DeleteLocalFolder(name), ForgetFolder(name)])
            else:
                reason = (
                    f"deleted on the server but {counts.get(name, '?')} messages are still "
                    "local; uploading them again (empty a folder before deleting it)"
                )
                upkeep += [ResetFolder(name, reason), CreateRemoteFolder(name), SyncFolder(name)]
        else:
            # Gone on both sides.
            deletes.append([ForgetFolder(name)])
    return upkeep + [a for group in reversed(deletes) for a in group]


def split_folder_plan(
    plan: Sequence[FolderAction],
) -> tuple[list[FolderAction], list[str], list[FolderAction]]:
    """The folder plan in the order it is carried out: what comes before the folders
    are synced (creations, resets, forgetting what is gone on both sides), the
    folders to sync, and what comes after them (deletions, and forgetting what they
    deleted), so that no folder is deleted before its messages had their say."""
    before: list[FolderAction] = []
    names: list[str] = []
    after: list[FolderAction] = []
    for action in plan:
        if isinstance(action, SyncFolder):
            names.append(action.name)
        elif isinstance(action, (DeleteLocalFolder, DeleteRemoteFolder)) or (
            isinstance(action, ForgetFolder) and after
        ):
            after.append(action)
        else:
            before.append(action)
    return before, names, after


def may_move(
    pairs: Sequence[Pair], remote: Mapping[int, Flags], local: Mapping[str, LocalMessage]
) -> bool:
    """Whether a folder could be one end of a move: it lost a message on one side, or
    holds one that no pair accounts for."""
    paired_keys = {p.key for p in pairs}
    paired_uids = {p.uid for p in pairs}
    return (
        any(p.key not in local or p.uid not in remote for p in pairs)
        or any(k not in paired_keys for k in local)
        or any(u not in paired_uids for u in remote)
    )


def flag_change(pair: Pair, remote_now: Flags, local_now: Flags) -> FlagChange:
    """Three-way merge: each side's own changes since the last sync are applied to the
    other side's current flags, so edits on both sides combine."""
    local_added = local_now - pair.local_flags
    local_removed = pair.local_flags - local_now
    result = frozenset((remote_now | local_added) - local_removed)
    return _change_to(result, remote_now, local_now)


def _change_to(result: Flags, remote_now: Flags, local_now: Flags) -> FlagChange:
    return FlagChange(
        result=result,
        remote_add=result - remote_now,
        remote_remove=remote_now - result,
        local=None if result == local_now else result,
    )


def plan_messages(
    pairs: Sequence[Pair],
    remote: Mapping[int, Flags],
    local: Mapping[str, LocalMessage],
    matches: Sequence[Match] = (),
    mode: str = MIRROR,
) -> list[MessageAction]:
    """Decide what happens to each message of one folder.

    `remote` maps each server UID to its mappable flags; `local` maps each Maildir key
    to its file. `matches` pairs unpaired messages found to be equal by content.

    `mode` is the folder's sync mode: `mirror` goes both ways; `pull` copies the
    server to disk only (the server's flags win, a local deletion is downloaded
    again, a new local file stays local); `backup` is `pull` where a message expunged
    on the server stays on disk.
    """
    two_way = mode == MIRROR
    actions = [
        a for p in sorted(pairs, key=lambda p: p.uid) if (a := _pair_action(p, remote, local, mode))
    ]
    paired_uids = {p.uid for p in pairs}
    paired_keys = {p.key for p in pairs}
    links = _links(matches, paired_uids, paired_keys, remote, local, two_way)
    actions += links
    linked_uids = {a.uid for a in links}
    linked_keys = {a.key for a in links}
    for uid in sorted(remote):
        if uid not in paired_uids and uid not in linked_uids:
            actions.append(Download(uid, remote[uid]))
    if two_way:
        for key in sorted(local):
            if key not in paired_keys and key not in linked_keys:
                actions.append(Upload(key, local[key].flags))
    return actions


def _pair_action(
    pair: Pair, remote: Mapping[int, Flags], local: Mapping[str, LocalMessage], mode: str
) -> MessageAction | None:
    """What happens to one message the state knows, by where it is now."""
    two_way = mode == MIRROR
    r = remote.get(pair.uid)
    lm = local.get(pair.key)
    if r is not None and lm is not None:
        # On both sides: merge the flags (or, one way, take the server's).
        change = flag_change(pair, r, lm.flags) if two_way else _change_to(r, r, lm.flags)
        # Both sides may already agree on flags the pair does not remember (the same
        # change made on each side, or a run killed after changing both and before
        # recording it): the pair is then brought up to date, or a later merge
        # would take the old base for the last-synced flags and undo a change.
        stale = pair.remote_flags != change.result or pair.local_flags != change.result
        return UpdateFlags(pair.uid, pair.key, change) if not change.is_noop or stale else None
    if lm is not None:
        # Expunged on the server: delete the local file (backup keeps it).
        return Release(pair.uid, pair.key) if mode == BACKUP else DeleteLocal(pair.uid, pair.key)
    if r is not None:
        # Deleted locally: expunge exactly this UID (one way: fetch it again).
        return DeleteRemote(pair.uid, pair.key) if two_way else Download(pair.uid, r)
    return Forget(pair.uid, pair.key)


def _links(
    matches: Sequence[Match],
    paired_uids: Set[int],
    paired_keys: Set[str],
    remote: Mapping[int, Flags],
    local: Mapping[str, LocalMessage],
    two_way: bool,
) -> list[Link]:
    """The matches that pair a new server message with a new file, each message and
    file at most once."""
    links: list[Link] = []
    matched_uids: set[int] = set()
    matched_keys: set[str] = set()
    for m in matches:
        if m.uid in paired_uids or m.key in paired_keys or m.uid not in remote:
            continue
        if m.key not in local or m.uid in matched_uids or m.key in matched_keys:
            continue
        matched_uids.add(m.uid)
        matched_keys.add(m.key)
        # Same content on both sides with no common history: keep every flag either
        # has (one way: the server's).
        r, lf = remote[m.uid], local[m.key].flags
        change = _change_to(r | lf if two_way else r, r, lf)
        links.append(Link(m.uid, m.key, m.hash, change, m.replace))
    return links


def guard_violation(
    actions: Sequence[MessageAction], known: int, max_share: float, minimum: int
) -> str | None:
    """Why this plan deletes too much of a folder at once, or None.

    A vanished or emptied folder must never be read as "delete everything on the other
    side"; a person who really means it passes --force.
    """
    for side, kind in (("server", DeleteRemote), ("local", DeleteLocal)):
        n = sum(1 for a in actions if isinstance(a, kind))
        if n >= max(minimum, 1) and known and n > max_share * known:
            where = "on the server" if side == "server" else "locally"
            return (
                f"would delete {n} of {known} messages {where} "
                f"(more than {max_share:.0%}); nothing was changed in this folder. "
                "If that is intended, re-run with --force"
            )
    return None


@dataclass(frozen=True)
class FolderView:
    """One folder's gathered facts, as `plan_moves` needs them.

    `local_hashes` holds the content hash of unpaired local files and `remote_hashes`
    that of unpaired server messages, where the engine computed them (only when some
    other folder lost a message, so a sync without moves reads nothing extra).
    `local_loose` holds the hash of those files without their tracking fields, for
    the files that have any (`content.loose_hash`: mutt's save adds them)."""

    pairs: Sequence[Pair]
    remote: Mapping[int, Flags]
    local: Mapping[str, LocalMessage]
    local_hashes: Mapping[str, str]
    remote_hashes: Mapping[int, str]
    local_loose: Mapping[str, str] = field(default_factory=dict)


def lost_locally(
    pairs: Sequence[Pair], remote: Mapping[int, Flags], local: Mapping[str, LocalMessage]
) -> list[Pair]:
    """The pairs whose file is gone while the server still holds the message: each
    could have moved to another folder (or into a local-only one)."""
    return [p for p in pairs if p.key not in local and p.uid in remote]


def lost_on_server(
    pairs: Sequence[Pair], remote: Mapping[int, Flags], local: Mapping[str, LocalMessage]
) -> list[Pair]:
    """The pairs whose server message is gone while the file is still here: each
    could have been moved to another folder by another client."""
    return [p for p in pairs if p.uid not in remote and p.key in local]


def move_view(
    pairs: Sequence[Pair],
    remote: Mapping[int, Flags],
    local: Mapping[str, LocalMessage],
    matches: Sequence[Match],
    local_hashes: Mapping[str, str],
    remote_hashes: Mapping[int, str],
    local_loose: Mapping[str, str],
) -> FolderView:
    """A folder as `plan_moves` sees it: what content matching paired within the
    folder is no candidate for a move."""
    matched_uids = {m.uid for m in matches}
    matched_keys = {m.key for m in matches}
    return FolderView(
        pairs,
        {u: f for u, f in remote.items() if u not in matched_uids},
        {k: m for k, m in local.items() if k not in matched_keys},
        local_hashes,
        remote_hashes,
        local_loose,
    )


def plan_moves(
    views: Mapping[str, FolderView],
    archives: Mapping[str, Mapping[str, str]] | None = None,
    archives_loose: Mapping[str, Mapping[str, str]] | None = None,
    modes: Mapping[str, str] | None = None,
) -> list[MessageMove]:
    """Moves between folders, so they stay moves instead of a copy and a deletion.

    - A file gone from folder A whose key (a rename: notmuch, afew, aerc) or whose
      content (mutt's copy then delete) turned up as a new file in folder B is moved
      on the server (UID MOVE), never uploaded again. Content is the exact hash
      first, then the hash without tracking fields (mutt's save adds Content-Length,
      Lines, Status): such a file then takes the server's bytes (`replace`).
    - A server message gone from A while a new one with the same content appeared in
      B (another client moved it) is renamed locally, never downloaded again.

    - A file gone from a synced folder whose content (the state's hash) is found in a
      local-only folder (`archives`: folder -> key -> hash of candidate files) is
      freed on the server: it is safe on disk, so this is no deletion. Failing
      that, a file there equal to it apart from tracking fields (`archives_loose`,
      for the files that have any: mutt's save) is as safe.

    Each message takes part in at most one move; a message gone and new in the same
    folder is no move. Given the folders' sync `modes`, only the moves they allow are
    returned: moves between folders are two-way business, while freeing a message
    whose content is safe in a local-only folder is right in every mode."""
    gone_local: list[tuple[str, Pair]] = []
    gone_remote: list[tuple[str, Pair]] = []
    for name in sorted(views):
        v = views[name]
        for p in sorted(v.pairs, key=lambda p: p.uid):
            if p.key not in v.local and p.uid in v.remote:
                gone_local.append((name, p))
            elif p.uid not in v.remote and p.key in v.local:
                gone_remote.append((name, p))
    moves = _moves_of_files(views, gone_local, archives or {}, archives_loose or {})
    moves += _moves_of_messages(views, gone_remote)
    if modes is None:
        return moves
    return [
        m
        for m in moves
        if isinstance(m, FreeOnServer) or modes.get(m.src) == modes.get(m.dst) == MIRROR
    ]


Candidates = dict[str, list[tuple[str, str]]]  # hash -> (folder, key) of new files
ByKey = dict[str, list[str]]  # key -> folders with a new file of that key


def _new_files(
    views: Mapping[str, FolderView],
) -> tuple[dict[str, list[str]], Candidates, Candidates]:
    """The new files (no pair accounts for them) by key, by hash and by hash without
    tracking fields, in folder and key order."""
    new_local: set[tuple[str, str]] = set()
    for name, v in views.items():
        paired = {p.key for p in v.pairs}
        new_local.update((name, key) for key in v.local if key not in paired)
    by_key: ByKey = {}
    by_hash: Candidates = {}
    by_loose: Candidates = {}
    for name, key in sorted(new_local):
        by_key.setdefault(key, []).append(name)
        h = views[name].local_hashes.get(key)
        if h:
            by_hash.setdefault(h, []).append((name, key))
        loose = views[name].local_loose.get(key)
        if loose:
            by_loose.setdefault(loose, []).append((name, key))
    return by_key, by_hash, by_loose


def _moves_of_files(
    views: Mapping[str, FolderView],
    gone: list[tuple[str, Pair]],
    archives: Mapping[str, Mapping[str, str]],
    archives_loose: Mapping[str, Mapping[str, str]],
) -> list[MessageMove]:
    """Files that left a folder, found again by key or content in another one (moved
    on the server) or in a local-only one (freed on the server), in `gone`'s order."""
    by_key, by_hash, by_loose = _new_files(views)
    taken: set[tuple[str, str]] = set()

    def free(src: str, c: list[tuple[str, str]]) -> tuple[str, str] | None:
        return next((x for x in c if x[0] != src and x not in taken), None)

    # Same key or same bytes first for every lost file, so that a copy with tracking
    # fields never takes the place of an exact one meant for another lost file.
    planned: dict[int, MessageMove] = {}  # by the index in gone, to keep its order
    for n, (src, p) in enumerate(gone):
        dst_key = free(src, [(d, p.key) for d in by_key.get(p.key, [])]) or free(
            src, by_hash.get(p.hash, [])
        )
        if dst_key is not None:
            taken.add(dst_key)
            planned[n] = MoveOnServer(src, p.uid, dst_key[0], dst_key[1], p.hash, p.remote_flags)
    for n, (src, p) in enumerate(gone):
        if n in planned:
            continue
        # The state's hash is the server's bytes: a file equal to them once its
        # tracking fields are gone is the same message, and takes those bytes.
        saved = free(src, by_loose.get(p.hash, []))
        if saved is not None:
            taken.add(saved)
            dst, key = saved
            planned[n] = MoveOnServer(src, p.uid, dst, key, p.hash, p.remote_flags, replace=True)
            continue
        kept = _archived(p, archives, taken)
        if kept is not None:
            taken.add(kept)
            planned[n] = FreeOnServer(src, p.uid, kept[1], kept[0])
    for n, (src, p) in enumerate(gone):
        kept = None if n in planned else _archived(p, archives_loose, taken, False)
        if kept is not None:
            taken.add(kept)
            planned[n] = FreeOnServer(src, p.uid, kept[1], kept[0])
    return [planned[n] for n in sorted(planned)]


def _moves_of_messages(
    views: Mapping[str, FolderView], gone: list[tuple[str, Pair]]
) -> list[MessageMove]:
    """Server messages that left a folder, matched by hash to new UIDs elsewhere."""
    by_remote_hash: dict[str, list[tuple[str, int]]] = {}
    for name in sorted(views):
        v = views[name]
        paired_uids = {p.uid for p in v.pairs}
        for uid, h in sorted(v.remote_hashes.items()):
            if uid not in paired_uids and uid in v.remote:
                by_remote_hash.setdefault(h, []).append((name, uid))
    taken: set[tuple[str, int]] = set()
    moves: list[MessageMove] = []
    for src, p in gone:
        found = next(
            (c for c in by_remote_hash.get(p.hash, []) if c[0] != src and c not in taken),
            None,
        )
        if found is None:
            continue
        taken.add(found)
        dst, new_uid = found
        moves.append(MoveLocally(src, p.key, p.uid, dst, new_uid, p.hash))
    return moves


@dataclass(frozen=True)
class Moved:
    """A move carried out, with what only carrying it out told: the message's pair in
    its new folder (None when the server did not tell the new UID, or for a message
    freed on the server) and, for a file renamed, the file in its new folder."""

    move: MessageMove
    pair: Pair | None = None
    file: LocalMessage | None = None


@dataclass(frozen=True)
class Sides:
    """What moves change of one folder's inputs: its pairs, what each side holds, the
    UIDs moved in this run (their server flags are known exactly), and whether a
    moved-in message is left to the next run's content matching."""

    pairs: Sequence[Pair]
    remote: Mapping[int, Flags]
    local: Mapping[str, LocalMessage]
    moved_in: frozenset[int] = frozenset()
    pending_match: bool = False


def apply_moves(sides: Mapping[str, Sides], done: Sequence[Moved]) -> dict[str, Sides]:
    """The folders the moves `done` touched, as if each moved message had always been
    where it is now: gone from its old folder with its pair, and in the new one with
    its new pair. A message moved on the server whose new UID is unknown is left out
    of its new folder altogether, to be matched by content on the next run. The
    folders given are not changed."""
    touched = {m.move.src for m in done}
    touched |= {m.move.dst for m in done if not isinstance(m.move, FreeOnServer)}
    pairs = {n: list(sides[n].pairs) for n in touched}
    remote = {n: dict(sides[n].remote) for n in touched}
    local = {n: dict(sides[n].local) for n in touched}
    moved_in = {n: set(sides[n].moved_in) for n in touched}
    pending = {n for n in touched if sides[n].pending_match}
    for m in done:
        move = m.move
        pairs[move.src] = [p for p in pairs[move.src] if p.uid != move.uid]
        if isinstance(move, FreeOnServer):
            remote[move.src].pop(move.uid, None)
            continue
        if isinstance(move, MoveOnServer):
            flags = remote[move.src].pop(move.uid)
            if m.pair is None:
                local[move.dst].pop(move.key, None)  # matched by content on the next run
                pending.add(move.dst)
                continue
            remote[move.dst][m.pair.uid] = flags
        else:
            assert m.file is not None and m.pair is not None
            del local[move.src][move.key]
            local[move.dst][move.key] = m.file
        pairs[move.dst].append(m.pair)
        moved_in[move.dst].add(m.pair.uid)
    return {
        n: Sides(pairs[n], remote[n], local[n], frozenset(moved_in[n]), n in pending)
        for n in touched
    }


def _archived(
    p: Pair,
    archives: Mapping[str, Mapping[str, str]],
    taken: set[tuple[str, str]],
    by_key: bool = True,
) -> tuple[str, str] | None:
    """Where in a local-only folder this pair's content is, by the same key first
    (a rename) and then by any key (a copy); None if it is nowhere safe."""
    for name in sorted(archives) if by_key else ():
        if archives[name].get(p.key) == p.hash and (name, p.key) not in taken:
            return (name, p.key)
    for name in sorted(archives):
        for key, h in sorted(archives[name].items()):
            if h == p.hash and (name, key) not in taken:
                return (name, key)
    return None
