"""The selected folder: SELECT (with QRESYNC or CONDSTORE when it pays), what
changed since a modseq, SEARCH in UID windows, and the listing of a folder."""

from __future__ import annotations

import imaplib
import logging
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from mirrorsync.errors import (
    MirrorsyncError,
    ServerError,
)
from mirrorsync.imap.base import (
    READS,
    REFUSED_HINT,
    SEARCH_TOKEN_RE,
)
from mirrorsync.imap.client import refusal
from mirrorsync.imap.folders import Folders
from mirrorsync.imap.parse import (
    flags_of,
    parse_fetch,
    parse_listing,
    parse_search,
    parse_vanished,
)
from mirrorsync.imap.wire import (
    uid_set_chunks,
)
from mirrorsync.model import (
    FolderChanges,
    FolderStatus,
    RemoteMessage,
    canonical_folder,
)

log = logging.getLogger(__name__)

# `_existing` and `search` ask for UIDs in windows this wide, so that no answer line
# can reach imaplib's 1 MB line limit (at most 10 bytes per UID).
SEARCH_WINDOW = 90_000


class Selection(Folders):
    def _refused(self, operation: str, folder: str | None, what: str) -> MirrorsyncError:
        """A read of one folder whose answer was refused unread fails only that
        folder: nothing was changed, so the store logs in again and the run goes on
        with the others. Anything else ends the run (exit 3, `StoreBase._refused`): an
        account-wide listing has no folder to fail alone, and after a write (or the
        look-up that follows one) what the server did cannot be known, while the
        engine's fallback for a refused command (an APPEND sent again message by
        message) could do it twice; the next run's matching finds it out."""
        if folder is None or operation not in READS or self._reconnect is None:
            return super()._refused(operation, folder, what)
        self._renew()
        return ServerError(
            f"{what}; the other folders go on over a new connection", hint=REFUSED_HINT
        )

    def _renew(self) -> None:
        """Log in again in place of a connection that had to be dropped, and select
        again the folder that was selected, so message operations still act on it
        (the `RemoteStore` contract). A refusal while renewing ends the run."""
        reconnect, self._reconnect = self._reconnect, None
        assert reconnect is not None
        was = self._selected
        with suppress(Exception):
            self._client.shutdown()
        try:
            fresh = reconnect()
            self._client, self._capabilities = fresh._client, fresh._capabilities
            fresh._closed = True  # its connection is this store's now
            self._selected, self._listing = None, None
            self._generation += 1
            if was is not None:
                with suppress(ServerError):  # then nothing is selected: the folder fails
                    self.select(was)
        finally:
            self._reconnect = reconnect

    def select(self, name: str) -> FolderStatus:
        server = self._server_name(name)
        with self._translate("select", name):
            # A failed SELECT leaves no folder selected (RFC 3501 6.3.1).
            self._selected = None
            self._generation += 1
            data = self._client.select_folder(server)
            uidnext = data.get(b"UIDNEXT")
            if uidnext is None:  # optional before IMAP4rev2; ask for it
                uidnext = self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"]
            result = FolderStatus(
                uidvalidity=int(data[b"UIDVALIDITY"]),
                uidnext=int(uidnext),
                messages=int(data[b"EXISTS"]),
                highestmodseq=int(data.get(b"HIGHESTMODSEQ", 0)),
            )
        self._selected = canonical_folder(name)
        self._selected_uidnext = result.uidnext
        return result

    def select_changes(
        self,
        name: str,
        uidvalidity: int,
        modseq: int,
        known_uids: Sequence[int] | None = None,
    ) -> FolderChanges:
        """QRESYNC: ``SELECT name (QRESYNC (uidvalidity modseq))``; the server sends
        ``VANISHED (EARLIER)`` and a FETCH (UID FLAGS MODSEQ) per new or changed
        message along with the SELECT: one round trip, about 400 bytes when nothing
        changed, whatever the folder's size. No known-UIDs are sent: Dovecot then
        leaves out the FETCH of new messages too.

        CONDSTORE only: ``SELECT name (CONDSTORE)`` and ``UID FETCH 1:* (UID FLAGS)
        (CHANGEDSINCE modseq)``; vanished UIDs are `known_uids` minus those a
        ``UID SEARCH`` still finds. Without `known_uids` nothing tells which UIDs
        vanished, and `vanished` is empty: pass them when expunges matter.

        Otherwise a plain SELECT and a full `list_messages()` (`full`), also when the
        server's UIDVALIDITY is not `uidvalidity`, when the folder has no modseqs
        (NOMODSEQ), or when `modseq` is above the folder's HIGHESTMODSEQ (the server
        lost state, e.g. restored from a backup: nothing it says since is trustworthy).
        With `full` and the same UIDVALIDITY, `vanished` is `known_uids` minus the
        listing. `status.highestmodseq` is always as of the SELECT."""
        caps = self._capabilities
        if modseq > 0 and uidvalidity > 0 and "CONDSTORE" in caps:
            qresync = "QRESYNC" in caps
            params = f"(QRESYNC ({uidvalidity} {modseq}))" if qresync else "(CONDSTORE)"
            with self._translate("select", name):
                status, untagged = self._select_with(name, params)
                if status.uidvalidity == uidvalidity and 0 < modseq <= status.highestmodseq:
                    if qresync:
                        return self._qresync_changes(status, untagged, known_uids)
                    return self._condstore_changes(status, modseq, known_uids)
        else:
            status = self.select(name)
        listing = self.list_messages()
        vanished: frozenset[int] = frozenset()
        if known_uids is not None and status.uidvalidity == uidvalidity:
            vanished = frozenset(set(known_uids) - listing.keys())
        return FolderChanges(status, listing, vanished, full=True)

    def _qresync_changes(
        self,
        status: FolderStatus,
        untagged: dict[str, list[Any]],
        known_uids: Sequence[int] | None,
    ) -> FolderChanges:
        rows = parse_fetch(untagged.get("FETCH", []))
        earlier, now = parse_vanished(untagged.get("VANISHED", []), status.uidnext - 1)
        vanished = earlier | now
        if known_uids is not None:  # the rest the caller cannot care about
            vanished &= set(known_uids)
        flagless = [uid for uid, row in rows.items() if b"FLAGS" not in row]
        if flagless:  # RFC 7162 says FLAGS come along; do not rely on it
            for chunk in uid_set_chunks(flagless):
                for uid, row in self._uid_fetch(chunk, "(UID FLAGS)").items():
                    if uid in rows:
                        rows[uid].update(row)
        changed = {
            uid: RemoteMessage(uid, flags_of(row[b"FLAGS"]))
            for uid, row in sorted(rows.items())
            if uid not in vanished and b"FLAGS" in row
        }
        return FolderChanges(status, changed, frozenset(vanished), full=False)

    def _condstore_changes(
        self, status: FolderStatus, modseq: int, known_uids: Sequence[int] | None
    ) -> FolderChanges:
        rows = self._uid_fetch("1:*", "(UID FLAGS)", f"(CHANGEDSINCE {modseq})")
        vanished: set[int] = set()
        if known_uids is not None and known_uids:
            known = set(known_uids)
            vanished = known - self._existing(min(known), max(known))
        changed = {
            uid: RemoteMessage(uid, flags_of(row[b"FLAGS"]))
            for uid, row in sorted(rows.items())
            if uid not in vanished and b"FLAGS" in row
        }
        return FolderChanges(status, changed, frozenset(vanished), full=False)

    def _existing(self, low: int, high: int) -> set[int]:
        """The UIDs from `low` to `high` in the selected folder (see `_search_windows`)."""
        return self._search_windows([], low, high)

    def _search_windows(self, criteria: Sequence[str], low: int, high: int | None) -> set[int]:
        """The UIDs from `low` to `high` (None: to the end of the folder) in the selected
        folder that match `criteria`, by ``UID SEARCH [RETURN (ALL)] UID low:high
        criteria`` (ESEARCH answers in compact ranges).

        imaplib refuses lines over 1 MB, and a plain SEARCH answer is one line of
        up to 10 bytes per UID (an ESEARCH one too, when no two UIDs are adjacent), so
        the range goes in windows of `SEARCH_WINDOW` UIDs; without `high` the windows
        reach UIDNEXT as of the SELECT and the last one ends in "*", so that mail that
        arrived since is searched too. The commands are pipelined (all sent, then all
        answers read): SEARCH changes nothing, the answers merge into one set, and a
        10^6-UID folder costs one round trip, not twelve."""
        for stale in ("SEARCH", "ESEARCH"):
            self._client.drop(stale)
        ret = ("RETURN", "(ALL)") if "ESEARCH" in self._capabilities else ()
        top = high if high is not None else max(low, self._selected_uidnext - 1)
        windows = []
        for start in range(low, top + 1, SEARCH_WINDOW):
            end = start + SEARCH_WINDOW - 1
            last = end >= top
            windows.append(f"{start}:{'*' if last and high is None else min(end, top)}")
        results = self._client.pipeline(
            [("UID", "SEARCH", *ret, f"UID {window}", *criteria) for window in windows]
        )
        found = parse_search(
            self._client.take("SEARCH"),
            self._client.take("ESEARCH"),
            # clips a range that claims more than could exist; a single UID is kept
            maximum=high if high is not None else top + SEARCH_WINDOW,
        )
        for typ, data in results:
            if typ != "OK":
                raise refusal(typ, data)
        return {uid for uid in found if uid >= low and (high is None or uid <= high)}

    def search(self, criteria: Sequence[str]) -> list[int]:
        """``UID SEARCH [RETURN (ALL)] UID a:b criteria`` in windows (see
        `_search_windows`), so that no answer line can outgrow imaplib's limit."""
        folder = self._require_selected("search")
        tokens = [str(c) for c in criteria]
        bad = [t for t in tokens if not SEARCH_TOKEN_RE.fullmatch(t)]
        if bad:
            raise ServerError(f"search in {folder!r}: {bad[0]!r} is not a valid search key")
        with self._translate("search", folder):
            return sorted(self._search_windows(tokens, 1, None))

    def list_messages(self) -> dict[int, RemoteMessage]:
        """One ``UID FETCH 1:* (UID FLAGS RFC822.SIZE)``: a single round trip whatever
        the folder's size (imapclient's `fetch` cannot send "1:*", see `_uid_fetch`).
        Flags are all the server's, \\Recent included: the engine normalizes."""
        folder = self._require_selected("list messages")
        with self._translate("list messages", folder):
            return parse_listing(self._client.uid_fetch_data("1:*", "(UID FLAGS RFC822.SIZE)"))

    def _select_with(self, name: str, params: str) -> tuple[FolderStatus, dict[str, list[Any]]]:
        """``SELECT name params`` (see `Client.select_with`). Returns the status
        (HIGHESTMODSEQ 0 for a NOMODSEQ folder) and the untagged responses about the
        selected folder."""
        server = self._server_name(name)
        # a failed SELECT leaves no folder selected (RFC 3501 6.3.1)
        self._selected = None
        self._generation += 1
        untagged = self._client.select_with(server, params)
        if "READ-ONLY" in untagged:
            raise imaplib.IMAP4.readonly(f"{name} is not writable")

        def number(key: str) -> int | None:
            values = [v for v in untagged.get(key, []) if v]
            return int(values[-1].split()[0]) if values else None

        uidnext = number("UIDNEXT")
        if uidnext is None:  # optional before IMAP4rev2; ask for it
            uidnext = int(self._client.folder_status(server, ["UIDNEXT"])[b"UIDNEXT"])
        uidvalidity = number("UIDVALIDITY")
        exists = number("EXISTS")
        if uidvalidity is None or exists is None:
            raise ValueError("the SELECT response lacks UIDVALIDITY or EXISTS")
        highest = 0 if "NOMODSEQ" in untagged else number("HIGHESTMODSEQ") or 0
        self._selected = canonical_folder(name)
        self._selected_uidnext = uidnext
        return FolderStatus(uidvalidity, uidnext, exists, highest), untagged
