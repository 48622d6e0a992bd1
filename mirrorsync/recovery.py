"""A sync without a state while the Maildir and the server both hold mail.

The state was lost, moved aside as damaged, or never made. Messages are then paired
by content, folder by folder, which neither loses nor duplicates a message that is in
the same folder on both sides. What cannot be known is what changed since the last
sync: a message in folder A here and in folder B on the server was moved on one
side, but on which; a message on one side only is new there, or was deleted on the
other. This module finds those cases before anything is done, says so in one
warning (`errors.RecoveryNotice`), and applies the reading the user chose
(`sync --recover`):

- `keep` (the default): every copy is kept, as a sync by content does: a moved
  message ends up in both folders on both sides, a deleted one comes back.
- `local`: the Maildir is right about where each message both sides hold is. A
  server copy in a folder where the Maildir has none of that message is moved on the
  server to a folder where the Maildir has one the server lacks, or, when there is
  no such folder, removed from the server (the message stays on the server in the
  Maildir's folders).
- `server`: the same with the sides swapped.

A message that only one side holds is never removed, whatever the choice: without a
state, new mail and deleted mail look the same. So nothing that exists only on one
side, and no message's last copy on a side, is ever deleted: a copy is removed only
from the untrusted side, and only when that side keeps the message (or will, by the
moves) in each folder where the trusted side has it.

Cost follows the doubt: every local file of the synced folders is read once (a sync
without a state reads them anyway), the server's Message-IDs and sizes are listed,
and only the server bodies of messages whose folders differ between the sides are
fetched, to prove by content that they are the same message.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from mirrorsync.errors import (
    ConnectionFailed,
    LocalStoreError,
    MirrorsyncError,
    RecoveryNotice,
    ServerError,
    StateError,
)

if TYPE_CHECKING:
    from mirrorsync.maildir import Maildir
    from mirrorsync.model import LocalMessage
    from mirrorsync.remote import RemoteStore

log = logging.getLogger(__name__)

KEEP, LOCAL, SERVER = "keep", "local", "server"
CHOICES = (KEEP, LOCAL, SERVER)


# -- the plan (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class MoveServerCopy:
    src: str
    uid: int
    dst: str

    def describe(self) -> str:
        return f"recover: move server message {self.src} UID {self.uid} to {self.dst}"


@dataclass(frozen=True)
class MoveLocalCopy:
    src: str
    key: str
    dst: str

    def describe(self) -> str:
        return f"recover: move local file {self.src}/{self.key} to {self.dst}"


@dataclass(frozen=True)
class DropServerCopy:
    folder: str
    uid: int

    def describe(self) -> str:
        return f"recover: remove server message {self.folder} UID {self.uid} (held elsewhere)"


@dataclass(frozen=True)
class DropLocalCopy:
    folder: str
    key: str

    def describe(self) -> str:
        return f"recover: remove local file {self.folder}/{self.key} (held elsewhere)"


RecoveryAction = MoveServerCopy | MoveLocalCopy | DropServerCopy | DropLocalCopy


@dataclass
class Findings:
    """What a sync by content cannot know, counted per message (one content)."""

    elsewhere: int = 0  # in some folder here and in another on the server
    extra: int = 0  # in more folders on one side than on the other
    one_side: int = 0  # copies of messages only one side holds

    @property
    def doubtful(self) -> bool:
        return bool(self.elsewhere or self.extra)


def plan_recovery(
    local: Mapping[str, Mapping[str, str]],
    remote: Mapping[str, Mapping[int, str]],
    choice: str,
) -> tuple[list[RecoveryAction], Findings]:
    """The actions of `choice` and what is in doubt, from the content hashes of the
    local files (folder -> key -> hash) and of the server messages (folder -> UID ->
    hash) whose folders may differ between the sides.

    Per message (one hash), the copies in the same folder on both sides pair up as
    the sync will pair them; the unpaired rest is what is in doubt. Under `local`
    the server's unpaired copies are moved, one by one, to the folders of the
    Maildir's unpaired copies, and any left over are removed; `server` is the same
    the other way round; `keep` does nothing. The trusted side's leftovers are
    copied by the sync, as ever."""
    by_hash: dict[str, tuple[list[tuple[str, str]], list[tuple[str, int]]]] = defaultdict(
        lambda: ([], [])
    )
    for folder in sorted(local):
        for key, h in sorted(local[folder].items()):
            by_hash[h][0].append((folder, key))
    for folder in sorted(remote):
        for uid, h in sorted(remote[folder].items()):
            by_hash[h][1].append((folder, uid))
    found = Findings()
    actions: list[RecoveryAction] = []
    for h in sorted(by_hash):
        here, there = by_hash[h]
        if not here or not there:
            found.one_side += len(here) + len(there)
            continue
        here_left, there_left = _unpaired(here, there)
        if not here_left and not there_left:
            continue
        if here_left and there_left:
            found.elsewhere += 1
        else:
            found.extra += 1
        if choice == LOCAL:
            for n, (src, uid) in enumerate(there_left):
                if n < len(here_left):
                    actions.append(MoveServerCopy(src, uid, here_left[n][0]))
                else:
                    actions.append(DropServerCopy(src, uid))
        elif choice == SERVER:
            for n, (src, key) in enumerate(here_left):
                if n < len(there_left):
                    actions.append(MoveLocalCopy(src, key, there_left[n][0]))
                else:
                    actions.append(DropLocalCopy(src, key))
    return actions, found


def _unpaired(
    here: Sequence[tuple[str, str]], there: Sequence[tuple[str, int]]
) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:
    """The copies left once each folder's copies on one side pair with its copies on
    the other (as many as both have there), in folder order."""
    count_here: dict[str, int] = defaultdict(int)
    count_there: dict[str, int] = defaultdict(int)
    for folder, _ in here:
        count_here[folder] += 1
    for folder, _ in there:
        count_there[folder] += 1
    paired_here = dict(count_there)
    paired_there = dict(count_here)
    here_left: list[tuple[str, str]] = []
    there_left: list[tuple[str, int]] = []
    for folder, key in here:
        if paired_here.get(folder, 0) > 0:
            paired_here[folder] -= 1
        else:
            here_left.append((folder, key))
    for folder, uid in there:
        if paired_there.get(folder, 0) > 0:
            paired_there[folder] -= 1
        else:
            there_left.append((folder, uid))
    return here_left, there_left


# -- gathering and carrying out ------------------------------------------------------


@dataclass
class Survey:
    """Both sides as far as recovery needs them."""

    local: dict[str, dict[str, str]] = field(default_factory=dict)  # in doubt: hashes
    remote: dict[str, dict[int, str]] = field(default_factory=dict)
    files: dict[str, dict[str, LocalMessage]] = field(default_factory=dict)
    local_count: int = 0
    remote_count: int = 0
    one_side: int = 0  # copies whose Message-ID (or size) the other side has not
    ours: bool = False  # a local file has the name mirrorsync gives: it synced before
    # What could not be read. A copy unseen could make another look unpaired, and be
    # moved or removed although the message is in its folder: then nothing is.
    unread: list[str] = field(default_factory=list)


def _ident(msgid: str | None, size: int) -> tuple[str, object]:
    return ("id", msgid) if msgid else ("size", size)


def survey(
    remote: RemoteStore, maildir: Maildir, local_names: Sequence[str], remote_names: Sequence[str]
) -> Survey:
    """Read every local file of `local_names` and the identities of every server
    message of `remote_names`; then fetch (and hash) the server bodies of the
    messages whose Message-ID (size without one) is in different folders, or in a
    different number of copies, on the two sides."""
    from mirrorsync.content import content_hash, crlf_size, loose_hash, message_id, to_lf
    from mirrorsync.maildir import MessageVanished, is_own_key

    s = Survey()
    Ident = tuple[str, object]
    local_at: dict[Ident, list[tuple[str, str, str]]] = defaultdict(list)
    remote_at: dict[Ident, list[tuple[str, int]]] = defaultdict(list)
    for name in local_names:
        mfolder = maildir.folder(name)
        if not mfolder.exists():
            continue
        files = mfolder.scan()
        s.files[name] = files
        s.ours = s.ours or any(is_own_key(k) for k in files)
        for key, msg in sorted(files.items()):
            try:
                data = to_lf(mfolder.read(msg))
            except MessageVanished:
                continue  # renamed or removed by a reader: the sync sees it as it is then
            except LocalStoreError as e:
                s.unread.append(str(e))
                continue
            s.local_count += 1
            # content apart from tracking fields (a reader's save adds some)
            h = loose_hash(data) or content_hash(data)
            local_at[_ident(message_id(data), crlf_size(data))].append((name, key, h))
    if not s.local_count:
        return s  # nothing here to doubt: the server is not even listed
    for name in remote_names:
        try:
            remote.select(name)
            uids = list(remote.list_messages())
            found = remote.identities(uids)
        except ServerError as e:
            s.unread.append(str(e))
            continue
        s.remote_count += len(uids)
        for uid, i in found.items():
            remote_at[_ident(i.message_id, i.size)].append((name, uid))
    wanted: dict[str, list[int]] = defaultdict(list)
    for ident in local_at.keys() | remote_at.keys():
        here, there = local_at.get(ident, []), remote_at.get(ident, [])
        if not here or not there:
            s.one_side += len(here) + len(there)
            continue
        if sorted(f for f, _, _ in here) == sorted(f for f, _ in there):
            continue  # the same folders, as often: the sync pairs them
        for folder, key, h in here:
            s.local.setdefault(folder, {})[key] = h
        for folder, uid in there:
            wanted[folder].append(uid)
    for name in sorted(wanted):
        try:
            remote.select(name)
            for uid, body, _flags, _date in remote.fetch(sorted(wanted[name])):
                data = to_lf(body)
                s.remote.setdefault(name, {})[uid] = loose_hash(data) or content_hash(data)
        except ServerError as e:
            s.unread.append(str(e))
    return s


def carry_out(
    remote: RemoteStore,
    maildir: Maildir,
    files: Mapping[str, Mapping[str, LocalMessage]],
    actions: Sequence[RecoveryAction],
) -> dict[str, dict[str, int]]:
    """Do the actions, a folder's at once on the server; returns counts per folder
    for its report. One that fails is said and left: the sync then keeps both
    copies, as `keep` would. Nothing here touches the state, so a run killed midway
    leaves the next one less in doubt, and nothing else."""
    moves: dict[tuple[str, str], list[int]] = defaultdict(list)
    drops: dict[str, list[int]] = defaultdict(list)
    # what to do, in words for a failure, and the report's counts when done
    steps: list[tuple[Callable[[], object], str, list[tuple[str, str, int]]]] = []
    for a in actions:
        if isinstance(a, MoveServerCopy):
            moves[(a.src, a.dst)].append(a.uid)
        elif isinstance(a, DropServerCopy):
            drops[a.folder].append(a.uid)
        elif isinstance(a, MoveLocalCopy):
            move = partial(maildir.folder(a.src).move_to, files[a.src][a.key])
            steps.append(
                (
                    partial(move, maildir.folder(a.dst)),
                    f"move {a.src}/{a.key} to {a.dst}",
                    [(a.src, "moved out locally", 1), (a.dst, "moved in locally", 1)],
                )
            )
        else:
            remove = partial(maildir.folder(a.folder).remove, files[a.folder][a.key])
            steps.append((remove, f"remove {a.folder}/{a.key}", [(a.folder, "removed locally", 1)]))
    for (src, dst), uids in sorted(moves.items()):
        steps.append(
            (
                partial(_on_server, remote, src, remote.move, uids, dst),
                f"move {len(uids)} server messages from {src} to {dst}",
                [(src, "moved out on server", len(uids)), (dst, "moved in on server", len(uids))],
            )
        )
    for folder, uids in sorted(drops.items()):
        steps.append(
            (
                partial(_on_server, remote, folder, remote.expunge, uids),
                f"remove {len(uids)} server messages from {folder}",
                [(folder, "removed on server", len(uids))],
            )
        )
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for do, what, done in steps:
        if _tried(what, do):
            for folder, kind, n in done:
                counts[folder][f"{kind} (recovery)"] += n
    return {k: dict(v) for k, v in counts.items()}


def _on_server(remote: RemoteStore, folder: str, op: Callable[..., object], *args: object) -> None:
    remote.select(folder)
    op(*args)


def _tried(what: str, do: Callable[[], object]) -> bool:
    try:
        do()
    except (ConnectionFailed, StateError):
        raise
    except MirrorsyncError as e:
        log.warning("recovery could not %s (%s); both copies are kept", what, e)
        return False
    return True


def recover(
    account: str,
    remote: RemoteStore,
    maildir: Maildir,
    local_names: Sequence[str],
    remote_names: Sequence[str],
    choice: str | None,
    dry_run: bool,
    emit: Callable[[str], None],
    lost: bool = False,
) -> dict[str, dict[str, int]]:
    """Look at both sides of an account without a state, say in one warning what a
    sync by content cannot know and which reading this run takes, and (unless
    `dry_run`: then print them) carry out that reading's moves and removals.
    Returns counts per folder for the reports.

    `lost`: a state was there before (moved aside as damaged). Messages on one side
    only are then worth the warning too (deletions that come back); in a first sync
    of a Maildir mirrorsync never synced (no file has its naming) they are new mail,
    and said only with -v."""
    s = survey(remote, maildir, local_names, remote_names)
    if not s.local_count or not s.remote_count:
        return {}  # one side is empty: nothing to doubt, everything is copied
    if s.unread and choice in (LOCAL, SERVER):
        log.warning(
            "--recover=%s: %d failures to read (the first: %s); keeping every copy instead",
            choice,
            len(s.unread),
            s.unread[0],
        )
        choice = KEEP
    actions, found = plan_recovery(s.local, s.remote, choice or KEEP)
    found.one_side += s.one_side
    notice = RecoveryNotice(
        account,
        s.local_count,
        s.remote_count,
        found.elsewhere,
        found.extra,
        found.one_side,
        choice,
        len(actions),
    )
    if found.doubtful or (found.one_side and (lost or s.ours)):
        log.warning("%s", notice)
    else:
        log.info("%s", notice)
    if dry_run:
        for a in actions:
            emit(f"[{account}] {a.describe()}")
        if actions:
            emit(f"[{account}] (the folders' plans below are as before these moves)")
        return {}
    return carry_out(remote, maildir, s.files, actions)
