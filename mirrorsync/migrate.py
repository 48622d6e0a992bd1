"""`mirrorsync migrate`: take over from mbsync or offlineimap, with their memory.

A Maildir another tool kept in sync holds, besides the mail, that tool's record of
which server UID each file was and which flags both sides had at its last run
(mbsync's ``.mbsyncstate``, offlineimap's ``LocalStatus-sqlite``). Without it a
deletion made since that run cannot be told from a message never downloaded, so
the first sync would undo it. This module turns that record into mirrorsync's
state (a pair per message: UID, Maildir key, content hash, flags as of the tool's
last run), and the first sync then applies exactly what changed since: a file
deleted locally is expunged, a message expunged on the server is deleted locally,
flags merge three ways, and a file moved to another folder is moved on the server.
A message another client moved on the server since then is found by content in its
new folder, and `migrate --yes` moves the file there.

What is checked before anything is written:

* the folder's UIDVALIDITY recorded by the tool must be the server's now, else the
  recorded UIDs mean other messages: that folder gets no pairs and is matched by
  content (marked `needs_match`);
* mbsync's state must not be mid-run (a ``.journal`` beside it) and the Maildir's
  ``.uidvalidity`` must be the one its state was written against;
* a file is tied to a record by the UID the tool put in its name (``,U=N``); where
  that is ambiguous (two files claim it, as after a file was moved in from another
  folder) or the file is gone, the server's copy is fetched and compared with the
  files by content, so a moved file is found and only a deleted one is deleted.

The other tool's files are only read, never changed, so the user can go back. The
changes to the Maildir are the renaming of folder directories (see `adopt`) and the
moves of files whose message was moved on the server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mirrorsync import adopt
from mirrorsync import flags as flagmod
from mirrorsync.content import content_hash, to_lf
from mirrorsync.errors import LocalStoreError, UsageError
from mirrorsync.maildir import Maildir, MaildirFolder
from mirrorsync.model import Flags, LocalMessage, Pair
from mirrorsync.names import SEP
from mirrorsync.remote import RemoteStore
from mirrorsync.state import FolderState, State

log = logging.getLogger(__name__)

TOOLS = ("mbsync", "offlineimap")
_UID_RE = re.compile(r",U=(\d+)")
_FMD5_RE = re.compile(r",FMD5=([0-9a-f]{32})")
# Headers the tools add to their local copies and never to the server's: mbsync
# 1.4 writes X-TUID into nearly every message it downloads.
_TRACKING_RE = re.compile(rb"^x-tuid:[^\n]*\n", re.IGNORECASE | re.MULTILINE)


@dataclass
class ToolFolder:
    """One folder as the other tool recorded it."""

    name: str  # canonical server folder
    path: Path  # its directory now
    # (server UID, the tool's number in the file name, flag letters) as of its last run
    entries: list[tuple[int, int, str]] = field(default_factory=list)
    uidvalidity: int | None = None  # the server's, as the tool recorded it
    problem: str = ""  # why the record cannot be trusted ("" if it can)
    source: str = ""  # where the record was read
    dir_name: str = ""  # the directory's path under the root as the tool named it
    # offlineimap records a UIDVALIDITY per repository, without saying which is the
    # server's: the one equal to the server's now is, if any
    validities: list[int] = field(default_factory=list)


@dataclass
class FolderPlan:
    """What migrating one folder writes, and what the first sync will then do."""

    folder: ToolFolder
    pairs: list[Pair] = field(default_factory=list)
    uidvalidity: int = 0
    needs_match: bool = False
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    moved_in: dict[str, str] = field(default_factory=dict)  # key -> folder it left
    # Files whose message another client moved on the server to another folder since
    # the tool's last run: (the file, the folder it goes to). `migrate --yes` moves
    # them there; their pairs are already in that folder's plan.
    server_moves: list[tuple[LocalMessage, str]] = field(default_factory=list)


def strip_tracking(lf: bytes) -> bytes:
    """The message without the tracking headers the tools add locally, to compare a
    file with the server's copy."""
    end = lf.find(b"\n\n")
    head, body = (lf, b"") if end < 0 else (lf[: end + 1], lf[end + 1 :])
    return _TRACKING_RE.sub(b"", head) + body


# -- where each server folder is on disk ---------------------------------------------


def locate_folders(
    maildir: Maildir, server: Iterable[str], every: Iterable[str] = ()
) -> dict[str, Path]:
    """Server folder -> the directory that holds it: mirrorsync's own place, or one
    the other tools use (see `adopt.candidates`); only Maildirs, one each. The own
    directory of any server folder in `every` (excluded ones too) is never another
    folder's."""
    root = os.fspath(maildir.root)
    out: dict[str, Path] = {}
    names = sorted(server)
    used: set[str] = set()
    for other in every:
        try:
            used.add(os.fspath(maildir.folder(other).path))
        except LocalStoreError:
            continue
    for name in names:
        try:
            own = os.fspath(maildir.folder(name).path)
        except LocalStoreError:
            own = ""
        found = [own] if own and _is_maildir(own) else []
        used.discard(own)
        if not found:
            found = [p for p, _ in adopt.candidates(root, name) if _is_maildir(p)]
        found = [p for p in dict.fromkeys(found) if p not in used]
        if len(found) == 1:
            out[name] = Path(found[0])
            used.add(found[0])
        elif len(found) > 1:
            log.warning("folder %r: several directories could be it (%s)", name, ", ".join(found))
    return out


def _is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) and os.path.isdir(os.path.join(path, "new"))


def _spellings(name: str) -> set[str]:
    """How the tools may have written server folder `name` in their state."""
    parts = name.split(SEP)
    utf7 = [adopt.encode_mutf7(p) for p in parts]
    return {j.join(p) for p in (parts, utf7) for j in (SEP, ".")}


# -- mbsync -------------------------------------------------------------------------


def _parse_mbsync(text: str) -> tuple[dict[str, str], list[tuple[int, int, str]]]:
    """Header (FarUidValidity, NearUidValidity, MaxPulledUid, ...) and records
    ``far near [status]flags``. A record with a status mark (``^`` skipped, ``!``
    pending, ``~``/``X`` expired) or a zero UID on either side is not a message both
    sides held, so it is no pair: left to content matching, it is never deleted."""
    header: dict[str, str] = {}
    records: list[tuple[int, int, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines) and lines[i].strip():
        key, _, value = lines[i].partition(" ")
        header[key] = value.strip()
        i += 1
    if header and all(k[0].isdigit() for k in header):
        # isync before 1.3 wrote the two UIDVALIDITYs on one line: not read here.
        raise ValueError("state file too old (isync before 1.3)")
    for line in lines[i + 1 :]:
        if not line.strip():
            continue
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise ValueError(f"unreadable record {line!r}")
        far, near = int(parts[0]), int(parts[1])
        flags = parts[2] if len(parts) > 2 else ""
        if flags[:1] in ("^", "!", "~", "X", "<", ">") or far <= 0 or near <= 0:
            continue
        records.append((far, near, flags))
    return header, records


def _mbsync_state_files(state: Path | None) -> dict[str, Path]:
    """Folder spelling -> state file, from a SyncState directory ('/' is written
    '!' in these names): the global SyncState (and its default ``~/.mbsync/``) names
    a file ``:FAR-STORE:BOX_:NEAR-STORE:BOX``, a Channel's SyncState just the
    mailbox (its local name, which is the server's unless the Channel renames it)."""
    out: dict[str, Path] = {}
    if state is None or not state.is_dir():
        return out
    for f in sorted(state.iterdir()):
        if not f.is_file() or f.name.endswith((".journal", ".new", ".lock")):
            continue
        m = re.fullmatch(r":[^:]*:(.*)_:[^:]*:.*", f.name)
        out.setdefault((m.group(1) if m else f.name).replace("!", "/"), f)
    return out


def read_mbsync(located: dict[str, Path], root: Path, state: Path | None) -> dict[str, ToolFolder]:
    """mbsync's record of each located folder: ``.mbsyncstate`` in the Maildir
    (``SyncState *``), else the file for it in `state` (default ``~/.mbsync/``)."""
    shared = _mbsync_state_files(state)
    out: dict[str, ToolFolder] = {}
    for name, path in located.items():
        tf = ToolFolder(name, path, dir_name=os.path.relpath(path, root))
        own = path / ".mbsyncstate"
        found = (
            own
            if own.is_file()
            else next((shared[s] for s in _spellings(name) if s in shared), None)
        )
        if found is None:
            tf.problem = "no mbsync state for it"
            out[name] = tf
            continue
        tf.source = str(found)
        if Path(f"{found}.journal").exists():
            tf.problem = f"mbsync was interrupted ({found}.journal exists); run mbsync once more"
            out[name] = tf
            continue
        try:
            header, tf.entries = _parse_mbsync(found.read_text("utf-8", "replace"))
            tf.uidvalidity = int(header["FarUidValidity"])
            near_validity = int(header["NearUidValidity"])
        except (OSError, ValueError, KeyError) as e:
            tf.problem = f"cannot read {found}: {e}"
            tf.entries = []
            out[name] = tf
            continue
        try:
            recorded = int((path / ".uidvalidity").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            recorded = None
        if recorded is not None and recorded != near_validity:
            tf.problem = "the Maildir's .uidvalidity changed since mbsync's last run"
            tf.entries = []
        out[name] = tf
    return out


# -- offlineimap ---------------------------------------------------------------------


def _offlineimap_dirs(state: Path) -> tuple[Path, list[Path]]:
    """The account's LocalStatus-sqlite directory and the repositories' FolderValidity
    directories, from offlineimap's metadata directory (or one account's in it)."""
    if (state / "LocalStatus-sqlite").is_dir():
        account, meta = state, state.parent
    else:
        accounts = sorted(p for p in state.glob("Account-*") if (p / "LocalStatus-sqlite").is_dir())
        if len(accounts) != 1:
            raise UsageError(
                f"found {len(accounts)} offlineimap accounts in {state}",
                "give --state the Account-NAME directory of the account to migrate",
            )
        account, meta = accounts[0], state
    return account / "LocalStatus-sqlite", sorted(meta.glob("Repository-*/FolderValidity"))


def read_offlineimap(located: dict[str, Path], root: Path, state: Path) -> dict[str, ToolFolder]:
    status_dir, validity_dirs = _offlineimap_dirs(state)
    files = {f.name: f for f in status_dir.iterdir() if f.is_file()}
    out: dict[str, ToolFolder] = {}
    for name, path in located.items():
        tf = ToolFolder(name, path, dir_name=os.path.relpath(path, root))
        spelling = next((s for s in sorted(_spellings(name)) if s in files), None)
        if spelling is None:
            tf.problem = "no offlineimap status for it"
            out[name] = tf
            continue
        found = files[spelling]
        tf.source = str(found)
        try:
            db = sqlite3.connect(f"file:{found}?mode=ro", uri=True)
            try:
                rows = db.execute("SELECT id, flags FROM status").fetchall()
            finally:
                db.close()
        except sqlite3.Error as e:
            tf.problem = f"cannot read {found}: {e}"
            out[name] = tf
            continue
        tf.entries = [(int(uid), int(uid), flags or "") for uid, flags in rows if int(uid) > 0]
        # The remote repository's record is the one that can equal the server's.
        values = []
        for d in validity_dirs:
            try:
                values.append(int((d / spelling).read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
        tf.validities = values
        out[name] = tf
    return out


# -- building the state ---------------------------------------------------------------


def _near_id(key: str) -> int | None:
    m = _UID_RE.search(key)
    return int(m.group(1)) if m else None


def build(
    tool: str,
    folders: dict[str, ToolFolder],
    remote: RemoteStore,
    uidvalidity_now: dict[str, int],
) -> list[FolderPlan]:
    """The pairs of every folder, and the plan of the first sync after them."""
    from mirrorsync.sync.plan import plan_messages

    plans: dict[str, FolderPlan] = {}
    listings: dict[str, dict[str, LocalMessage]] = {}
    server: dict[str, dict[int, Flags]] = {}
    bound: dict[str, set[str]] = {}  # folder -> keys tied to a record
    pending: dict[str, list[tuple[int, list[str], str]]] = {}  # unresolved records
    for name, tf in sorted(folders.items()):
        fp = FolderPlan(tf, uidvalidity=uidvalidity_now[name])
        plans[name] = fp
        mfolder = MaildirFolder(tf.path, name)
        listings[name] = mfolder.scan()
        bound[name] = set()
        if tf.uidvalidity is None and tf.validities:
            known = fp.uidvalidity in tf.validities
            tf.uidvalidity = fp.uidvalidity if known else max(tf.validities)
        if not tf.problem and tf.uidvalidity is None:
            tf.problem = f"{tool} recorded no UIDVALIDITY for it"
        if not tf.problem and tf.uidvalidity != fp.uidvalidity:
            tf.problem = (
                f"the server's UIDVALIDITY changed since {tool}'s last run "
                f"({tf.uidvalidity} -> {fp.uidvalidity})"
            )
        if tf.problem:
            fp.needs_match, fp.reason = True, tf.problem
            continue
        remote.select(name)
        server[name] = {u: flagmod.normalize(m.flags) for u, m in remote.list_messages().items()}
        own_md5 = hashlib.md5(tf.dir_name.encode()).hexdigest()
        by_near: dict[int, list[str]] = {}
        for key in listings[name]:
            n = _near_id(key)
            m = _FMD5_RE.search(key)
            if n is None or (tool == "offlineimap" and m and m.group(1) != own_md5):
                continue  # new since, or moved in from another folder
            by_near.setdefault(n, []).append(key)
        for far, near, letters in tf.entries:
            keys = by_near.get(near, [])
            if len(keys) == 1:
                fp.pairs.append(_pair(far, keys[0], mfolder, listings[name][keys[0]], letters))
                bound[name].add(keys[0])
            else:
                pending.setdefault(name, []).append((far, keys, letters))
    # Records without exactly one file: compare the server's copy with the files by
    # content (X-TUID aside). Cost follows what changed since the tool's last run.
    unbound = {
        n: [k for k in listings[n] if k not in bound[n]] for n in plans if not plans[n].needs_match
    }
    stripped: dict[tuple[str, str], str] = {}

    def stripped_hash(n: str, key: str) -> str:
        if (n, key) not in stripped:
            try:
                data = to_lf(MaildirFolder(plans[n].folder.path, n).read(listings[n][key]))
                stripped[(n, key)] = content_hash(strip_tracking(data))
            except LocalStoreError:
                stripped[(n, key)] = ""
        return stripped[(n, key)]

    # Expunged on the server while two files claim the record: decided after the
    # others, when the file moved in from elsewhere has found its own record.
    deferred: list[tuple[str, int, list[str], str]] = []
    for name, items in sorted(pending.items()):
        fp = plans[name]
        wanted = [far for far, _k, _l in items if far in server[name]]
        remote.select(name)
        hashes = {uid: content_hash(to_lf(data)) for uid, data, _f, _d in remote.fetch(wanted)}
        mfolder = MaildirFolder(fp.folder.path, name)
        for far, keys, letters in items:
            h = hashes.get(far)
            if h is None:
                if keys:
                    deferred.append((name, far, keys, letters))
                continue  # expunged on the server and the file is gone too: nothing left
            same = [k for k in keys if k not in bound[name] and stripped_hash(name, k) == h]
            if same:
                fp.pairs.append(_pair(far, same[0], mfolder, listings[name][same[0]], letters))
                bound[name].add(same[0])
                continue
            # Gone from here: moved to another folder (found by content there), or
            # deleted. Moved, the pair carries the file's key, and the first sync
            # moves the message on the server (UID MOVE) as for any local move.
            moved = next(
                (
                    (n, k)
                    for n in sorted(unbound)
                    if n != name
                    for k in unbound[n]
                    if k not in bound[n] and stripped_hash(n, k) == h
                ),
                None,
            )
            if moved is not None:
                dest, k = moved
                bound[dest].add(k)
                mf = MaildirFolder(plans[dest].folder.path, dest)
                fp.pairs.append(_pair(far, k, mf, listings[dest][k], letters))
                fp.moved_in[k] = dest
                continue
            fp.pairs.append(Pair(far, f"{tool}-gone-U{far}", h, _flags(letters), _flags(letters)))
    for name, far, keys, letters in deferred:
        left = [k for k in keys if k not in bound[name]]
        if len(left) == 1:  # the first sync deletes it, as the server expunged it
            mf = MaildirFolder(plans[name].folder.path, name)
            plans[name].pairs.append(_pair(far, left[0], mf, listings[name][left[0]], letters))
            bound[name].add(left[0])
    _server_moves(plans, listings, server, remote, stripped_hash)
    for name, fp in plans.items():
        if fp.needs_match:
            continue
        actions = plan_messages(fp.pairs, server[name], listings[name])
        counts: dict[str, int] = {}
        for a in actions:
            kind = type(a).__name__
            counts[kind] = counts.get(kind, 0) + 1
        counts["moved"] = len(fp.moved_in)
        counts["server moves"] = len(fp.server_moves)
        # A moved file shows as a deletion here and an upload there; the sync's move
        # detection turns the pair into one UID MOVE.
        counts["DeleteRemote"] = counts.get("DeleteRemote", 0) - len(fp.moved_in)
        fp.counts = counts
    for fp in plans.values():
        for dest in fp.moved_in.values():
            plans[dest].counts["Upload"] = plans[dest].counts.get("Upload", 0) - 1
    return [plans[n] for n in sorted(plans)]


def _server_moves(
    plans: dict[str, FolderPlan],
    listings: dict[str, dict[str, LocalMessage]],
    server: dict[str, dict[int, Flags]],
    remote: RemoteStore,
    stripped_hash: Callable[[str, str], str],
) -> None:
    """Messages another client moved on the server since the tool's last run: the
    file's UID is gone from its folder, and a UID no record knows holds the same
    content (X-TUID aside) in another. The pair and the file go to that folder, so
    the first sync neither deletes the file nor downloads the message again. The
    server's new messages are compared by Message-ID and size first, and only the
    candidates are fetched."""
    from mirrorsync.content import crlf_size, message_id

    lost: dict[tuple[str | None, int], list[tuple[str, Pair]]] = {}
    for name, fp in plans.items():
        for p in fp.pairs:
            if fp.needs_match or p.uid in server[name] or p.key not in listings[name]:
                continue
            try:
                data = to_lf(MaildirFolder(fp.folder.path, name).read(listings[name][p.key]))
            except LocalStoreError:
                continue
            clean = strip_tracking(data)
            lost.setdefault((message_id(clean), crlf_size(clean)), []).append((name, p))
    if not lost:
        return
    taken: set[tuple[str, str]] = set()
    for dst, fp in sorted(plans.items()):
        if fp.needs_match:
            continue
        known = {p.uid for p in fp.pairs}
        fresh = [u for u in server[dst] if u not in known]
        if not fresh:
            continue
        remote.select(dst)
        ids = remote.identities(fresh)
        maybe = [u for u, i in ids.items() if (i.message_id, i.size) in lost]
        for uid, data, _f, _d in remote.fetch(maybe):
            h = content_hash(to_lf(data))
            i = ids[uid]
            for src, p in lost[(i.message_id, i.size)]:
                if src == dst or (src, p.key) in taken or stripped_hash(src, p.key) != h:
                    continue
                taken.add((src, p.key))
                msg = listings[src].pop(p.key)
                plans[src].pairs.remove(p)
                plans[src].server_moves.append((msg, dst))
                listings[dst][p.key] = msg
                fp.pairs.append(Pair(uid, p.key, p.hash, p.remote_flags, p.local_flags))
                break


def _flags(letters: str) -> Flags:
    return flagmod.from_letters("".join(c for c in letters if c.isupper()))


def _pair(far: int, key: str, folder: MaildirFolder, msg: LocalMessage, letters: str) -> Pair:
    """A pair as the tool left it: its flags on both sides; the hash of the file as
    it is (what the sync hashes a file to when it looks for moves)."""
    try:
        h = content_hash(to_lf(folder.read(msg)))
    except LocalStoreError:
        h = ""
    return Pair(far, key, h, _flags(letters), _flags(letters))


# -- the command ----------------------------------------------------------------------


_WORDS = (
    ("UpdateFlags", "flag changes to merge"),
    ("DeleteRemote", "deleted locally (to expunge on the server)"),
    ("DeleteLocal", "expunged on the server (to delete locally)"),
    ("moved", "moved locally to another folder (to move on the server)"),
    ("server moves", "moved on the server to another folder (to move locally)"),
    ("Download", "new on the server (to download)"),
    ("Upload", "new locally (to upload)"),
)


def describe(tool: str, plan: FolderPlan) -> str:
    tf = plan.folder
    if plan.needs_match:
        return f"{tf.name}: {plan.reason}; its messages will be matched by content"
    done = [f"{plan.counts.get(k, 0)} {w}" for k, w in _WORDS if plan.counts.get(k, 0) > 0]
    since = "; since its last run: " + ", ".join(done) if done else "; nothing changed since"
    return f"{tf.name}: {len(tf.entries)} messages known to {tool}{since}"


def migrate_account(
    account_name: str,
    tool: str,
    state_path: Path | None,
    remote: RemoteStore,
    maildir: Maildir,
    state: State,
    *,
    write: bool,
    force: bool,
    emit: Callable[[str], None],
    wanted: Callable[[str], bool],
) -> list[FolderPlan]:
    """Read, check, print; with `write`, rename the folders' directories and write
    the state in one transaction."""
    if state.folders() and not force:
        raise UsageError(
            f"mirrorsync already has a state for account {account_name} ({state.path})",
            "migrate only replaces it with --force",
        )
    if tool == "offlineimap" and state_path is None:
        state_path = Path(os.path.expanduser("~/.offlineimap"))
    if tool == "mbsync" and state_path is None:
        state_path = Path(os.path.expanduser("~/.mbsync"))
    if tool == "offlineimap" and (state_path is None or not state_path.is_dir()):
        raise UsageError(
            f"no offlineimap metadata directory at {state_path}",
            "give it with --state (offlineimap's 'metadata' setting)",
        )
    every = remote.statuses()
    statuses = {n: s for n, s in every.items() if wanted(n)}
    located = locate_folders(maildir, statuses, every)
    if not located:
        raise UsageError(
            f"none of the server's folders has a Maildir under {maildir.root}",
            "check local.path (and local.layout) in the configuration",
        )
    root = maildir.root
    assert state_path is not None
    if tool == "mbsync":
        folders = read_mbsync(located, root, state_path)
    else:
        folders = read_offlineimap(located, root, state_path)
    plans = build(tool, folders, remote, {n: s.uidvalidity for n, s in statuses.items()})
    adoptions = []
    for fp in plans:
        dst = maildir.folder(fp.folder.name).path
        if dst != fp.folder.path:
            src = os.fspath(fp.folder.path)
            scheme = next(
                (s for p, s in adopt.candidates(os.fspath(root), fp.folder.name) if p == src),
                "another tool's directory",
            )
            adoptions.append(adopt.Adoption(fp.folder.name, fp.folder.path, dst, scheme))
    # Parents first (a nested parent carries its children along), then the paths of
    # those children as they will be when their turn comes.
    adoptions = _ordered(adoptions)
    for a in adoptions:
        emit(f"[{account_name}] {a.describe()}")
    for fp in plans:
        emit(f"[{account_name}] {describe(tool, fp)}")
    missing = sorted(set(statuses) - set(located))
    if "INBOX" in missing and maildir.layout != "maildir++" and _is_maildir(os.fspath(root)):
        emit(
            f"[{account_name}] {root} is itself a Maildir (a maildir++ INBOX?): "
            "if so, set local.layout: maildir++ before going on"
        )
    if missing:
        emit(f"[{account_name}] not found locally (will be downloaded): {', '.join(missing)}")
    if not write:
        emit(f"{account_name}: nothing changed; re-run with --yes to write mirrorsync's state")
        return plans
    adopt.apply(adoptions)
    # Files first, then the state: a state that put a file's pair in a folder the
    # file is not in yet would make the sync move the message back on the server.
    for fp in plans:
        for msg, to in fp.server_moves:
            maildir.folder(fp.folder.name).move_to(msg, maildir.folder(to))
    with state.transaction():
        for name in state.folders():
            state.delete_folder(name)
        for fp in plans:
            state.put_folder(
                FolderState(fp.folder.name, fp.uidvalidity, needs_match=fp.needs_match)
            )
            state.put_pairs(fp.folder.name, fp.pairs)
        state.set_meta("migrated_from", tool)
    n = sum(len(fp.pairs) for fp in plans)
    emit(
        f"{account_name}: state written: {len(plans)} folders, {n} messages; "
        f"{tool}'s files were not changed. Run 'mirrorsync sync {account_name}' next"
    )
    return plans


def _ordered(adoptions: list[adopt.Adoption]) -> list[adopt.Adoption]:
    out: list[adopt.Adoption] = []
    done: list[tuple[str, str]] = []
    for a in sorted(adoptions, key=lambda a: len(a.src.parts)):
        src = os.fspath(a.src)
        for s, d in done:
            if src.startswith(s + os.sep):
                src = d + src[len(s) :]
        if src == os.fspath(a.dst):
            continue  # carried there with its parent
        done.append((os.fspath(a.src), os.fspath(a.dst)))
        out.append(adopt.Adoption(a.name, Path(src), a.dst, a.scheme))
    return out
