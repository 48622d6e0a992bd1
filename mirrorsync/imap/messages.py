"""Messages of the selected folder: identities, bodies (whole, or in pieces to a
file), flags (conditionally with CONDSTORE), expunge and move."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from mirrorsync.errors import (
    ServerError,
)
from mirrorsync.imap.base import (
    FLAG_RE,
    RECENT,
    flag_args,
)
from mirrorsync.imap.client import refusal
from mirrorsync.imap.parse import (
    COPYUID_RE,
    IDENTITY_ITEMS,
    aware,
    flags_of,
    identities_of,
    iter_fetch,
)
from mirrorsync.imap.selection import Selection
from mirrorsync.imap.wire import (
    parse_uid_set,
    uid_list,
    uid_set,
    uid_set_chunks,
)
from mirrorsync.model import (
    Flags,
    RemoteIdentity,
    canonical_folder,
)
from mirrorsync.remote import FETCH_CHUNK, ByteSink, batches

log = logging.getLogger(__name__)


class Messages(Selection):
    def identities(self, uids: Sequence[int]) -> dict[int, RemoteIdentity]:
        folder = self._require_selected("read message identities")
        wanted = set(uids)
        out: dict[int, RemoteIdentity] = {}
        with self._translate("read message identities", folder):
            for chunk in uid_set_chunks(wanted):
                rows = self._uid_fetch(chunk, IDENTITY_ITEMS)
                out.update(identities_of(rows, wanted))
        return out

    def fetch(self, uids: Sequence[int]) -> Iterator[tuple[int, bytes, Flags, datetime | None]]:
        """Sizes first (cheap), then bodies in batches bounded by `fetch_batch_count`
        and `fetch_batch_bytes`, so that one huge message travels alone and many small
        ones share a round trip. Bodies are BODY.PEEK[], which leaves \\Seen alone.
        Raises ServerError if the selection changes while the iterator is consumed,
        and, after yielding every message answered right, if the server answered
        some wrongly (without a body, twice, FLAGS not a list, UIDs not asked for):
        those are not yielded, since what they hold cannot be trusted."""
        folder = self._require_selected("fetch")
        generation = self._generation
        sizes = self.sizes(uids)
        wrong: list[str] = []  # what the server answered wrongly, for the error
        for batch in batches(sorted(sizes), sizes, self.fetch_batch_count, self.fetch_batch_bytes):
            if self._generation != generation:
                raise ServerError(
                    f"fetch from folder {folder!r} on {self._address} was interrupted by "
                    "selecting another folder",
                    hint="this is a bug in mirrorsync; please report it",
                )
            rows = self._fetch_bodies(folder, batch, max(sizes[u] for u in batch), wrong)
            for uid in batch:
                got = rows.get(uid)
                if got is None:
                    continue  # expunged meanwhile (or answered twice: noted)
                body = got.get(b"BODY[]")
                flags = got.get(b"FLAGS", ())  # absent: none (asked for, though)
                if not isinstance(body, bytes):
                    wrong.append(f"UID {uid} without its body")
                elif not isinstance(flags, tuple):
                    wrong.append(f"UID {uid} with FLAGS that are not a list")
                else:
                    yield uid, body, flags_of(flags), aware(got.get(b"INTERNALDATE"))
        if wrong:
            # after the messages answered right (the caller keeps them), so that one
            # misanswered message does not hold the folder's others back every run
            raise ServerError(
                f"fetch {folder!r} on {self._address}: the server answered wrongly "
                f"({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''}); "
                f"{len(wrong)} not downloaded",
                hint="the server misbehaves (report it to its administrator); "
                "the rest of the folder was synced",
            )

    def _fetch_bodies(
        self, folder: str, batch: list[int], largest: int, wrong: list[str]
    ) -> dict[int, dict[bytes, Any]]:
        """One ``UID FETCH`` of the bodies of `batch`: UID -> its items. What the
        server answered wrongly is added to `wrong`; a UID answered with two bodies
        is left out, since which one is right cannot be told."""
        wanted = set(batch)
        rows: dict[int, dict[bytes, Any]] = {}
        bad: set[int] = set()
        # RFC822.SIZE is the size of BODY[]; some servers' are approximate, so a
        # body may be somewhat larger, never many times so
        expecting = self._client.guard.expecting(
            2 * largest + 64 * 1024, f"the largest RFC822.SIZE asked for is {largest}"
        )
        with self._translate("fetch", folder), expecting:
            data = self._client.uid_fetch_data(
                uid_set(batch), "(UID FLAGS INTERNALDATE BODY.PEEK[])"
            )
            for row in iter_fetch(data):
                uid = row[b"UID"]
                if uid not in wanted:
                    wrong.append(f"UID {uid}, not asked for")
                elif b"BODY[]" in row and b"BODY[]" in rows.get(uid, {}):
                    wrong.append(f"two bodies for UID {uid}")
                    bad.add(uid)
                rows.setdefault(uid, {}).update(row)
        return {uid: row for uid, row in rows.items() if uid not in bad}

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """``UID FETCH set (UID RFC822.SIZE)``, in compact sets of bounded length."""
        folder = self._require_selected("read message sizes")
        wanted = set(uids)
        out: dict[int, int] = {}
        with self._translate("read message sizes", folder):
            for chunk in uid_set_chunks(wanted):
                for uid, row in self._uid_fetch(chunk, "(UID RFC822.SIZE)").items():
                    size = row.get(b"RFC822.SIZE")
                    if uid in wanted and size is not None:
                        out[uid] = int(size)
        return out

    def fetch_to_file(self, uid: int, size: int, out: ByteSink, chunk: int = FETCH_CHUNK) -> bool:
        """``UID FETCH uid (BODY.PEEK[]<offset.chunk>)`` until a piece comes back
        shorter than asked or `size` bytes are written: memory holds one piece (imaplib
        reads a literal whole), and a dropped connection costs one piece, not the
        message. A message whose size is a multiple of `chunk` ends without the extra
        empty round trip thanks to `size`; a wrong `size` costs at most that trip."""
        if chunk <= 0:
            raise ValueError("chunk must be positive")
        folder = self._require_selected("fetch")
        offset = 0
        expecting = self._client.guard.expecting(chunk, f"a piece of at most {chunk} bytes")
        with self._translate("fetch", folder), expecting:
            while True:
                rows = self._uid_fetch(str(uid), f"(UID BODY.PEEK[]<{offset}.{chunk}>)")
                row = rows.get(uid, {})
                piece = row.get(f"BODY[]<{offset}>".encode())
                if piece is None:  # a server that names the section otherwise
                    piece = next((v for k, v in row.items() if k.startswith(b"BODY[]")), None)
                if not isinstance(piece, bytes):
                    return False  # expunged (before or meanwhile)
                out.write(piece)
                offset += len(piece)
                if len(piece) < chunk or offset == size:
                    return True

    def store_flags(
        self, uids: Iterable[int], add: Flags, remove: Flags, unchanged_since: int = 0
    ) -> set[int]:
        """Conditional with CONDSTORE and `unchanged_since` > 0: ``UID STORE set
        (UNCHANGEDSINCE m) +FLAGS.SILENT (...)`` (or ``-FLAGS.SILENT``); the server
        skips every message changed after m and names it in ``[MODIFIED set]``.

        A change that both adds and removes is one ``FLAGS.SILENT`` with the message's
        whole new list, read first with ``FETCH (FLAGS)`` so that keywords and every
        other flag stay as they are (see `_replace_flags`). An addition followed by a
        removal would store each message twice, and a Maildir server finds a file it
        renamed in the command before only by listing the whole folder again: Dovecot
        took 30-40 ms for that second STORE on a 20,000-message folder, against 2-4
        ms for the first."""
        wanted = set(uids)
        if not wanted:
            return set()
        if unchanged_since <= 0 or "CONDSTORE" not in self._capabilities:
            self._store(wanted, add, add=True)
            self._store(wanted, remove, add=False)
            return set()
        folder = self._require_selected("store flags in")
        adding = flag_args(add, "add flags in", folder, self._address)
        removing = flag_args(remove, "remove flags in", folder, self._address)
        modified: set[int] = set()
        with self._translate("store flags in", folder):
            for chunk in uid_set_chunks(wanted):
                todo = parse_uid_set(chunk)
                if adding and removing:
                    modified |= self._replace_flags(todo, unchanged_since, adding, removing)
                elif adding or removing:
                    operation = "+FLAGS.SILENT" if adding else "-FLAGS.SILENT"
                    modified |= self._conditional_store(
                        todo, unchanged_since, operation, adding or removing
                    )
        return modified & wanted

    def _replace_flags(
        self, uids: set[int], since: int, adding: list[str], removing: list[str]
    ) -> set[int]:
        """Add `adding` and remove `removing` with one ``FLAGS.SILENT`` per resulting
        list: the UIDs refused as changed since `since`.

        Safe although FLAGS replaces the whole list: the list comes from a FETCH, and
        the STORE's UNCHANGEDSINCE only lets through a message that has not changed
        since `since`, so it still has exactly the flags that were read, whichever
        came first, the read or another client's change. A message gone meanwhile
        needs nothing; one whose list cannot be written back as read (a flag that is
        not a plain atom) is refused, for the caller to re-read and merge."""
        rows = self._uid_fetch(uid_set(uids), "(FLAGS)")
        drop = {f.lower() for f in removing}
        drop.add(RECENT)
        by_list: dict[tuple[str, ...], set[int]] = {}
        refused: set[int] = set()
        for uid in sorted(uids):
            row = rows.get(uid)
            if row is None:
                continue  # expunged meanwhile
            if b"FLAGS" not in row:
                refused.add(uid)
                continue
            kept = [f for f in flags_of(row[b"FLAGS"]) if f.lower() not in drop]
            if not all(FLAG_RE.match(f) for f in kept):
                refused.add(uid)
                continue
            have = {f.lower() for f in kept}
            kept += [f for f in adding if f.lower() not in have]
            by_list.setdefault(tuple(sorted(kept)), set()).add(uid)
        for flags, group in by_list.items():
            refused |= self._conditional_store(group, since, "FLAGS.SILENT", list(flags))
        return refused

    def _conditional_store(
        self, uids: set[int], since: int, operation: str, flags: list[str]
    ) -> set[int]:
        """One ``UID STORE`` with UNCHANGEDSINCE: the UIDs the server refused."""
        self._client.drop("MODIFIED")
        typ, data = self._client.run(
            "UID",
            "STORE",
            uid_set(uids),
            f"(UNCHANGEDSINCE {since})",
            operation,
            "(" + " ".join(flags) + ")",
        )
        # imaplib files the tagged response's [MODIFIED set] with the untagged ones
        codes = [c for c in self._client.take("MODIFIED") if c]
        # our own silent responses (UID and MODSEQ) say nothing the caller needs
        self._client.drop("FETCH")
        if typ != "OK" and not codes:
            raise refusal(typ, data)
        failed: set[int] = set()
        for code in codes:
            failed |= parse_uid_set(code, max(uids))
        return failed & uids

    def _store(self, uids: Iterable[int], flags: Flags, add: bool) -> None:
        operation = "add flags in" if add else "remove flags in"
        wanted = set(uids)
        if not wanted:
            return
        folder = self._require_selected(operation)
        flag_list = flag_args(flags, operation, folder, self._address)
        if not flag_list:
            return
        store = self._client.add_flags if add else self._client.remove_flags
        with self._translate(operation, folder):
            for chunk in uid_set_chunks(wanted):
                store(chunk, flag_list, silent=True)

    def expunge(self, uids: Iterable[int]) -> None:
        """With UIDPLUS: STORE \\Deleted, then UID EXPUNGE of exactly these UIDs.

        Without UIDPLUS only a bare EXPUNGE exists, which would also remove messages
        that another client flagged \\Deleted and meant to keep until *it* expunges.
        So: SEARCH DELETED; if every \\Deleted message is one of ours, EXPUNGE;
        otherwise ours stay flagged \\Deleted (a warning is logged) and go at the next
        run when the other client's are gone. A message flagged by another client
        between the SEARCH and the EXPUNGE would still go: no protocol closes that gap.
        """
        wanted = set(uids)
        if not wanted:
            return
        folder = self._require_selected("expunge")
        chunks = uid_set_chunks(wanted)
        with self._translate("expunge", folder):
            for chunk in chunks:
                self._client.add_flags(chunk, ["\\Deleted"], silent=True)
            if "UIDPLUS" in self._capabilities:
                for chunk in chunks:
                    self._client.uid_expunge(chunk)
                return
            others = set(self._client.search("DELETED")) - wanted
            if others:
                log.warning(
                    "folder %r on %s: left %d message(s) flagged \\Deleted instead of "
                    "expunging them, because the server has no UIDPLUS and %d other "
                    "message(s) there are flagged \\Deleted by another client",
                    folder,
                    self._address,
                    len(wanted),
                    len(others),
                )
                return
            self._client.expunge()

    def move(self, uids: Sequence[int], name: str) -> dict[int, int]:
        """Move messages of the selected folder to `name`: UID MOVE (RFC 6851), which
        keeps flags and INTERNALDATE and costs no upload; without MOVE, UID COPY then
        \\Deleted and an expunge of exactly these UIDs (see `expunge`). Returns old
        UID -> new UID from COPYUID where the server has UIDPLUS (for MOVE it comes in
        an untagged OK before the expunges), else found by Message-ID and size; a UID
        missing from the result was not found, and the caller matches it by content."""
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        folder = self._require_selected("move messages from")
        dest = self._server_name(name)
        found: dict[int, int] = {}
        has_move = "MOVE" in self._capabilities
        told = "UIDPLUS" in self._capabilities
        with self._translate(f"move messages to {name!r} from", folder):
            if not told:
                # Without COPYUID the new UIDs are found the way `append` finds one:
                # by Message-ID and size among the arrivals from the old UIDNEXT on.
                before = self.identities(wanted)
                uidnext = int(self._client.folder_status(dest, ["UIDNEXT"])[b"UIDNEXT"])
            for chunk in uid_set_chunks(wanted):
                self._client.response_codes("COPYUID")  # none left over from an earlier command
                if has_move:
                    self._client.move(chunk, dest)
                else:
                    self._client.copy(chunk, dest)
                for data in self._client.response_codes("COPYUID") if told else []:
                    m = COPYUID_RE.match(data)
                    if m:
                        old, new = uid_list(m.group(2)), uid_list(m.group(3))
                        found.update(zip(old, new, strict=False))
        if not has_move:
            self.expunge(wanted)
        if not told:
            with self._translate(f"look for the messages moved to {name!r} from", folder):
                arrived = self._arrivals(name, dest, uidnext)
            by_identity: dict[tuple[str | None, int], list[int]] = {}
            for uid, ident in sorted(arrived.items()):
                by_identity.setdefault((ident.message_id, ident.size), []).append(uid)
            for uid, ident in before.items():
                pool = by_identity.get((ident.message_id, ident.size))
                if pool:
                    found[uid] = pool.pop(0)
        return found

    def _arrivals(self, name: str, server: str, uidnext: int) -> dict[int, RemoteIdentity]:
        """Size and Message-ID of the messages of `name` from UID `uidnext` on: how the
        UID of something we just put there is found without UIDPLUS. Looking costs an
        EXAMINE of the folder and a re-SELECT of the previously selected one, unless
        it is the selected folder."""
        previous = self._selected
        if previous == canonical_folder(name):
            self._client.noop()  # let the server announce the new message
            rows = self._uid_fetch(f"{uidnext}:*", IDENTITY_ITEMS)
        else:
            self._selected = None  # until the previous selection is back
            self._client.select_folder(server, readonly=True)
            rows = self._uid_fetch(f"{uidnext}:*", IDENTITY_ITEMS)
            if previous is None:
                self._client.close_folder()  # read-only: CLOSE expunges nothing
            else:
                self._client.select_folder(self._server_name(previous))
                self._selected = previous
        return {u: i for u, i in identities_of(rows, None).items() if u >= uidnext}
