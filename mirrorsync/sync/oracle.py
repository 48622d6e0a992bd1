"""The plan oracle, a switch for tests: every fast path must plan what the full path plans.

With ``MIRRORSYNC_PLAN_ORACLE=1`` in the environment (tests/conftest.py sets it for
every test; benchmarks and users never do) each sync also learns both sides in full,
the slow way: a LIST and, per folder, an EXAMINE and ``UID FETCH 1:* (FLAGS)``, a
listing of ``cur/`` and ``new/``, every state pair, no folder skipped, unpaired
messages matched by content. It plans from that with the same pure planner and,
before the sync carries out a plan of its own, checks that the plan is the same:

* the folder plan (`check_folders`), which the engine shortcuts when the same folders
  are everywhere, from LIST-STATUS numbers;
* a folder skipped as unchanged on both sides, by its server numbers and its settled
  Maildir stamp (`check_unchanged`): the full plan must be empty;
* a folder's message plan (`check_folder`), made from a QRESYNC/CONDSTORE delta with
  only the pairs it names and the local side taken from the state, or from only the
  messages that differ from the state (`gather._differing`);
* the moves across folders (`check_moves`), found among the folders held in memory;
* the files `MaildirFolder.locate` finds under their likely names (`check_located`);
* a run the quick check finishes as a no-op (`verify_quick`: the config digest's
  entries, the password, the no-op proof against the state, the full plan), and a
  configuration made from the quick check's read of the file (`check_config`).

A difference raises `PlanMismatch` with both plans. Plans are compared as multisets
(the order of actions is the executor's business); steady messages need no action,
and the planner never emits a no-op, so the full plan has nothing for them either.

The oracle changes nothing: against a real server it reads on a connection of its
own (EXAMINE, fetches with BODY.PEEK, never through the store's protocol methods,
which tests wrap to count the engine's commands or to break them), it only lists
and reads files, and it only queries the state. Off, it costs the engine one
environment lookup per run and is never imported.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mirrorsync import config as configmod
from mirrorsync import flags as flagmod
from mirrorsync.errors import MirrorsyncError, ServerError
from mirrorsync.maildir import MaildirFolder
from mirrorsync.model import NO_FLAGS, Flags, FolderStatus, LocalMessage, RemoteIdentity
from mirrorsync.state import State
from mirrorsync.sync.plan import guard_violation, plan_folders, plan_messages, plan_moves

# The full path's own code, bound when the oracle is imported (tests/conftest.py does
# so before any test runs): tests replace these names to count or to break what the
# engine does, and the full path must stay the real one.
_listing = MaildirFolder.listing
_pairs = State.pairs
_parse = configmod.load

if TYPE_CHECKING:
    from mirrorsync.config import Config
    from mirrorsync.imap.store import ImapStore
    from mirrorsync.model import RemoteMessage
    from mirrorsync.quick import Outcome
    from mirrorsync.remote import RemoteStore
    from mirrorsync.sync import actions as act
    from mirrorsync.sync.base import FolderInputs, FolderReport
    from mirrorsync.sync.engine import AccountSync

ENV = "MIRRORSYNC_PLAN_ORACLE"


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


class PlanMismatch(AssertionError):
    """A fast path planned something other than the full path would: a bug. An
    AssertionError, so that Hypothesis shrinks a state machine run that meets one;
    the CLI reports it as an internal error (exit 4), and the quick check, which
    falls back to the full path on any other error, lets it through."""


# -- reading the server --------------------------------------------------------------


class _Reader:
    """Reads a server through the `RemoteStore` protocol: a store of the oracle's own
    (`own`), or, for a store that offers no second connection, the engine's."""

    def __init__(self, store: RemoteStore, own: bool) -> None:
        self.store = store
        self.own = own

    def folders(self) -> set[str]:
        return {f.name for f in self.store.list_folders() if f.selectable}

    def examine(self, name: str) -> FolderStatus | None:
        """Select `name` for reading; None when the server has no such folder."""
        try:
            return self.store.select(name)
        except ServerError:
            return None

    def listing(self) -> dict[int, RemoteMessage]:
        return self.store.list_messages()

    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        return self.store.identities(uids)

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, None]]:
        for uid, data, flags, _date in self.store.fetch(uids):
            yield uid, data, flags, None

    def close(self) -> None:
        if self.own:
            self.store.close()


class _ImapReader(_Reader):
    """A second IMAP connection, read-only: EXAMINE and UID FETCH (BODY.PEEK), sent
    through ImapStore's internals so that the tests' spies on its protocol methods
    count and break only what the engine does."""

    store: ImapStore

    def folders(self) -> set[str]:
        return {f.name for f in self.store._list_folders() if f.selectable}

    def examine(self, name: str) -> FolderStatus | None:
        import imaplib

        from mirrorsync.model import canonical_folder

        s = self.store
        s._selected = None
        s._generation += 1
        try:
            data = s._client.select_folder(s._server_name(name), readonly=True)
        except imaplib.IMAP4.error:
            return None
        s._selected = canonical_folder(name)
        return FolderStatus(
            int(data[b"UIDVALIDITY"]), int(data.get(b"UIDNEXT", 0)), int(data[b"EXISTS"])
        )

    def listing(self) -> dict[int, RemoteMessage]:
        from mirrorsync.imap.parse import parse_listing

        return parse_listing(self.store._client.uid_fetch_data("1:*", "(UID FLAGS RFC822.SIZE)"))

    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        from mirrorsync.imap.parse import IDENTITY_ITEMS, identities_of
        from mirrorsync.imap.wire import uid_set_chunks

        wanted = set(uids)
        out: dict[int, RemoteIdentity] = {}
        for chunk in uid_set_chunks(wanted):
            out.update(identities_of(self.store._uid_fetch(chunk, IDENTITY_ITEMS), wanted))
        return out

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, None]]:
        from mirrorsync.imap.wire import uid_set_chunks

        for chunk in uid_set_chunks(set(uids)):
            rows = self.store._uid_fetch(chunk, "(UID BODY.PEEK[])")
            for uid in sorted(rows):
                body = rows[uid].get(b"BODY[]")
                if isinstance(body, bytes):
                    yield uid, body, NO_FLAGS, None


# -- the oracle ----------------------------------------------------------------------


class Oracle:
    """The full path of one `AccountSync`, and the checks of its fast paths."""

    def __init__(self, sync: AccountSync, reader: _Reader | None = None) -> None:
        self.sync = sync
        self._reader = reader
        self._names: list[str] = []  # the folders this run syncs (`check_folders`)
        # The full path's moves, learned before the first folder is carried out: the
        # engine carries out a folder that can take part in no move at once, before it
        # looks for moves, so that claim is checked against these.
        self._moves: list[act.MessageMove] | None = None
        self._moves_checked = False

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> _Reader:
        if self._reader is None:
            from mirrorsync.imap.store import ImapStore

            remote: Any = self.sync.remote
            if isinstance(remote, ImapStore):
                account = self.sync.account.remote
                password = configmod.resolve_password(account, os.environ)
                # no CONDSTORE: plain EXAMINE, and no unsolicited MODSEQs to read
                store = _connect_quietly(account, password)
                # folder names as the engine's store gives them (a namespace left out)
                from mirrorsync.naming import settle_prefix

                sync = self.sync
                settle_prefix(sync.account, store, sync.state, False, sync._local_listing)
                self._reader = _ImapReader(store, own=True)
            elif hasattr(remote, "oracle_reader"):  # the tests' fake: a twin on its data
                self._reader = _Reader(remote.oracle_reader(), own=True)
            else:
                self._reader = _Reader(remote, own=False)
        return self._reader

    def _release(self) -> None:
        """After reading on the engine's own store, its selection is no longer what
        the engine believes: make it select again."""
        if self._reader is not None and not self._reader.own:
            self.sync._selected = None

    # -- the full path

    def gather(self, name: str) -> FolderInputs:
        """One folder in full, now: every message on both sides, every pair, and the
        unpaired ones matched by content, as `AccountSync.gather` without a shortcut."""
        from mirrorsync.sync.base import FolderInputs
        from mirrorsync.sync.gather import content_matches
        from mirrorsync.sync.views import LocalView

        sync = self.sync
        # The state as recorded now: a move into this folder may have recorded its new
        # UIDVALIDITY and the moved message's pair since the run began.
        prior = sync.state.folder(name)
        mfolder = sync.maildir.folder(name)
        local = _scan(mfolder) if mfolder.exists() else {}
        reader = self.reader
        status = reader.examine(name)
        listing = reader.listing() if status is not None else {}
        remote = {u: flagmod.normalize(m.flags) for u, m in listing.items()}
        changed = bool(prior and status and prior.uidvalidity != status.uidvalidity)
        pairs = _pairs(sync.state, name) if prior and not changed else []
        store = cast("RemoteStore", reader)  # matching by content needs two of its reads
        matches = content_matches(store, mfolder, status, pairs, remote, local)
        self._release()
        return FolderInputs(
            name,
            status,
            prior,
            pairs,
            remote,
            LocalView(mfolder, local, True),
            matches,
            uidvalidity_changed=changed,
            sizes={u: m.size for u, m in listing.items() if m.size},
        )

    def plan(self, i: FolderInputs) -> list[act.MessageAction]:
        mode = self.sync.account.sync.mode_for(i.name)
        return plan_messages(i.pairs, i.remote, i.local, i.matches, mode)

    def folder_plan(self) -> list[act.FolderAction]:
        sync = self.sync
        known = sync._wanted(sync.prior)
        local = sync._wanted(sync.maildir.list_folders()) if sync.maildir.exists() else set()
        remote = sync._wanted(self.reader.folders())
        # a local folder the server cannot hold stays local (naming.kept_local)
        from mirrorsync.naming import kept_local

        local -= kept_local(sync.remote, sync.state, local - remote, False)
        # a folder whose STATUS the server refused is left out of the run (and failed)
        failed = set(sync.remote.status_failures())
        known, local, remote = known - failed, local - failed, remote - failed
        counts: dict[str, int] = {}
        for name in known:
            if name in remote and name not in local:
                status = self.reader.examine(name)
                counts[name] = status.messages if status is not None else 0
            elif name in local and name not in remote:
                counts[name] = len(_scan(sync.maildir.folder(name)))
        self._release()
        return plan_folders(known, local, remote, counts)

    def moves(self, names: Sequence[str]) -> list[act.MessageMove]:
        """The moves among `names`, each gathered in full, hashed by the engine's
        rules (unpaired files when a file was lost, unpaired server messages when a
        server message was lost, without the Message-ID and size preselection), and
        only those the folders' modes allow."""
        from mirrorsync.sync.moves import move_views
        from mirrorsync.sync.plan import MIRROR, lost_locally, lost_on_server

        sync = self.sync
        full = {}
        for n in names:
            try:
                full[n] = self.gather(n)
            except MirrorsyncError:
                continue  # the engine reports the folder, and leaves it out of moves
        modes = {n: sync.account.sync.mode_for(n) for n in full}
        mirror = sorted(n for n in full if modes[n] == MIRROR)
        lost_local = any(lost_locally(i.pairs, i.remote, i.local) for i in full.values())
        lost_remote = any(
            lost_on_server(full[n].pairs, full[n].remote, full[n].local) for n in mirror
        )
        local_hashes: dict[str, dict[str, str]] = {n: {} for n in full}
        local_loose: dict[str, dict[str, str]] = {n: {} for n in full}
        remote_hashes: dict[str, dict[int, str]] = {n: {} for n in full}
        for n in mirror if lost_local else ():
            self._hash_files(full[n], local_hashes[n], local_loose[n])
        for n in mirror if lost_remote else ():
            self._hash_messages(full[n], remote_hashes[n])
        self._release()
        archives, archives_loose = sync._archived_candidates(full) if lost_local else ({}, {})
        views = move_views(full, local_hashes, remote_hashes, local_loose)
        return plan_moves(views, archives, archives_loose, modes)

    def _hash_files(self, i: FolderInputs, hashes: dict[str, str], loose: dict[str, str]) -> None:
        from mirrorsync.sync.moves import hash_files

        exact, without = hash_files(self.sync.maildir.folder(i.name), i)
        hashes.update(exact)
        loose.update(without)

    def _hash_messages(self, i: FolderInputs, hashes: dict[int, str]) -> None:
        from mirrorsync.sync.moves import hash_messages, unpaired_uids

        fresh = unpaired_uids(i)
        if fresh and self.reader.examine(i.name) is not None:
            hashes.update(hash_messages(cast("RemoteStore", self.reader), fresh, None))

    def account(self) -> tuple[list[act.FolderAction], dict[str, list[Any]], list[Any]]:
        """The whole account's full plan now: folder actions, each synced folder's
        message plan, and the moves (tests and `verify_quick`)."""
        from mirrorsync.sync.actions import SyncFolder

        folders = self.folder_plan()
        names = sorted(a.name for a in folders if isinstance(a, SyncFolder))
        plans: dict[str, list[Any]] = {n: self.plan(self.gather(n)) for n in names}
        return folders, plans, self.moves(names)

    # -- the checks

    def check_folders(
        self, before: Sequence[act.FolderAction], names: Sequence[str], after: Sequence[Any]
    ) -> None:
        from mirrorsync.sync.actions import SyncFolder

        fast = [*before, *(SyncFolder(n) for n in names), *after]
        _compare(self.sync, "the folder plan", fast, self.folder_plan())
        self._names = list(names)

    def _full_moves(self) -> list[act.MessageMove]:
        if self._moves is None:
            self._moves = self.moves(self._names)
        return self._moves

    def _no_move_touches(self, name: str) -> None:
        """`name` is carried out before moves are looked for (or skipped): the full
        path must see it in no move."""
        if self._moves_checked:
            return  # a folder held for moves, planned after them
        touching = [m for m in self._full_moves() if name in (m.src, m.dst)]
        _compare(self.sync, f"the moves of {name} (not held for moves)", [], touching)

    def check_unchanged(self, name: str) -> None:
        """`name` was skipped as unchanged on both sides: the full plan is empty."""
        self._no_move_touches(name)
        _compare(self.sync, f"{name} (skipped as unchanged)", [], self.plan(self.gather(name)))

    def check_folder(self, inputs: FolderInputs, plan: Sequence[act.MessageAction]) -> None:
        from mirrorsync.sync import actions as act

        self._no_move_touches(inputs.name)
        full = self.gather(inputs.name)
        expected = self.plan(full)
        if inputs.pending_match:
            # A move whose new UID the server did not tell leaves the moved message to
            # the next run's content matching on purpose; the fast inputs lack it.
            def deferred(a: act.MessageAction) -> bool:
                uid, key = getattr(a, "uid", None), getattr(a, "key", None)
                return (isinstance(a, (act.Link, act.Download)) and uid not in inputs.remote) or (
                    isinstance(a, (act.Link, act.Upload)) and key not in inputs.local
                )

            expected = [a for a in expected if not deferred(a)]
        _compare(self.sync, inputs.name, plan, expected)
        cfg = self.sync.account.sync
        known = len(inputs.pairs) if inputs.known is None else inputs.known
        guard = guard_violation(plan, known, cfg.max_delete_share, cfg.guard_min)
        full_guard = guard_violation(expected, len(full.pairs), cfg.max_delete_share, cfg.guard_min)
        if guard != full_guard:
            raise PlanMismatch(
                f"plan oracle: {inputs.name}: the mass-deletion guard says {guard!r} on the "
                f"fast path and {full_guard!r} on the full path"
            )

    def check_moves(self, reports: Mapping[str, FolderReport], moves: Sequence[Any]) -> None:
        """The moves the engine found among the folders it held, against the full
        path's among all folders (learned before any folder's messages were carried
        out: those carried out since took part in none), without the folders that failed."""
        from mirrorsync.sync.actions import FreeOnServer

        ok = {n for n, r in reports.items() if r.error is None}
        full = [
            m
            for m in self._full_moves()
            if m.src in ok and (isinstance(m, FreeOnServer) or m.dst in ok)
        ]
        self._moves_checked = True
        _compare(self.sync, "the moves", moves, full)

    def check_located(self, mfolder: MaildirFolder, found: Mapping[str, LocalMessage]) -> None:
        """`MaildirFolder.locate` found these files by the names they most likely have:
        a listing must show each there, with those flags."""
        listed = _scan(mfolder)
        for key, msg in found.items():
            real = listed.get(key)
            if (
                real is None
                or real.flags != msg.flags
                or mfolder.path_of(real) != mfolder.path_of(msg)
            ):
                raise PlanMismatch(
                    f"plan oracle: {mfolder.name}: locate found {mfolder.path_of(msg)} "
                    f"for {key}, a listing has "
                    f"{mfolder.path_of(real) if real is not None else 'no such file'}"
                )

    def check_noop(self) -> None:
        """The full plan of the whole account does nothing but sync its folders."""
        from mirrorsync.sync.actions import SyncFolder

        folders, plans, moves = self.account()
        _compare(
            self.sync,
            "the folder plan (quick check: no-op)",
            [SyncFolder(n) for n in sorted(plans)],
            folders,
        )
        for name, plan in plans.items():
            _compare(self.sync, f"{name} (quick check: no-op)", [], plan)
        _compare(self.sync, "the moves (quick check: no-op)", [], moves)


def _check_proof(state_dir: Path, state: State, wanted: set[str]) -> None:
    """The proof the quick check went by says what the state says: its folders are
    the state's wanted ones, each with the numbers and stamp of a trusted row."""
    from mirrorsync import proof

    made = proof.read(state_dir)
    rows = state.folders()
    facts = {
        n: (r.uidvalidity, r.uidnext, r.highestmodseq, r.local_stamp)
        for n, r in rows.items()
        if n in wanted and not r.needs_match
    }
    if made is None or made.folders != facts or state.get_meta(proof.TOKEN_META) != made.token:
        raise PlanMismatch(
            f"plan oracle: the no-op proof in {state_dir} is not the state's\n"
            f"  proof: {made.folders if made else None!r}\n  state: {facts!r}"
        )


def _connect_quietly(remote: configmod.RemoteConfig, password: str) -> ImapStore:
    """The oracle's own connection, without CONDSTORE (a plain EXAMINE, no unsolicited
    MODSEQs to read). What connecting warns of (tls: none) the run has said already."""
    import logging

    from mirrorsync.imap.store import ImapStore

    logger = logging.getLogger("mirrorsync.imap.connection")
    # one account at a time: accounts synced in parallel would restore each other's
    # raised level and leave it raised for good
    with _QUIET_CONNECT:
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return ImapStore.connect(remote, password, disable=("CONDSTORE",))
        finally:
            logger.setLevel(level)


_QUIET_CONNECT = threading.Lock()


def _scan(mfolder: MaildirFolder) -> dict[str, LocalMessage]:
    """`MaildirFolder.scan`, by the real listing."""
    return {key: MaildirFolder.message(key, entry) for key, entry in _listing(mfolder).items()}


def _compare(sync: AccountSync, what: str, fast: Sequence[Any], full: Sequence[Any]) -> None:
    """Raise PlanMismatch, showing both plans, unless they hold the same actions."""
    have, want = Counter(fast), Counter(full)
    if have == want:
        return

    def show(actions: Sequence[Any] | Counter[Any]) -> str:
        lines = [f"    {_describe(a)}" for a in actions]
        return "\n".join(sorted(lines)) or "    (nothing)"

    raise PlanMismatch(
        f"plan oracle: [{sync.account.name}] {what}: the fast path's plan differs from "
        f"the full path's\n  only in the fast plan:\n{show(list((have - want).elements()))}\n"
        f"  only in the full plan:\n{show(list((want - have).elements()))}\n"
        f"  fast plan:\n{show(fast)}\n  full plan:\n{show(full)}"
    )


def _describe(action: Any) -> str:
    describe = getattr(action, "describe", None)
    return f"{describe()}  {action!r}" if describe else repr(action)


# -- the quick check and the config digest ------------------------------------------


def check_config(loaded: Config, path: Path, env: Mapping[str, str]) -> None:
    """The configuration made from the quick check's read of the file is the one a
    fresh, strict parse of the file gives."""
    fresh = _parse(path, env)
    if fresh != loaded:
        raise PlanMismatch(
            f"plan oracle: the configuration from the quick check's read of {path} differs "
            f"from a fresh parse\n  quick: {loaded!r}\n  fresh: {fresh!r}"
        )


def verify_quick(
    key: str, chosen: Sequence[Mapping[str, object]], outcome: Outcome, env: Mapping[str, str]
) -> None:
    """The quick check found the accounts `chosen` (their digest entries) unchanged:
    the entries must be the configuration file's, the password the one the full path
    would use, the proof the state's, and each account's full plan must do nothing.
    Runs under the quick check's account locks."""
    from mirrorsync import configcache
    from mirrorsync.maildir import Maildir
    from mirrorsync.state import State
    from mirrorsync.sync.base import SyncOptions
    from mirrorsync.sync.engine import AccountSync

    cfg = _parse(Path(key), env)
    for entry in chosen:
        name = str(entry["name"])
        account = cfg.accounts.get(name)
        found = entry.get("source_at")
        at = found if isinstance(found, int) else None
        fresh = configcache.entry(account, at) if account is not None else None
        if account is None or fresh != dict(entry):
            raise PlanMismatch(
                f"plan oracle: the digest's entry of {name} differs from a fresh parse "
                f"of {key}\n  digest: {dict(entry)!r}\n  fresh:  {fresh!r}"
            )
        remote = account.remote
        secret = remote.password if remote.password is not None else remote.password_command
        if at is not None and configcache.scalar_at(Path(key).read_text(), at) != secret:
            raise PlanMismatch(f"plan oracle: the digest's position of {name}'s secret is wrong")
        password = outcome.password(name)
        # a command is not run twice, even here
        if remote.password_command is None and password != configmod.resolve_password(remote, env):
            raise PlanMismatch(f"plan oracle: the quick check's password of {name} is wrong")
        assert password is not None
        store = _connect_quietly(remote, password)
        try:
            state = State.open(account.state_dir)
            try:
                maildir = Maildir.of(account.local)
                sync = AccountSync(account, store, maildir, state, SyncOptions(), lambda _: None)
                sync.prior = state.folders()
                _check_proof(account.state_dir, state, sync._wanted(sync.prior))
                # folder names as the run's own store gives them (a namespace left out)
                from mirrorsync.naming import settle_prefix

                settle_prefix(account, store, state, False, maildir.list_folders)
                Oracle(sync, _ImapReader(store, own=False)).check_noop()
            finally:
                state.close()
        finally:
            store.close()
