"""The folders of an account: listing, their numbers (LIST-STATUS or STATUS),
creating and deleting, sizes and quota."""

from __future__ import annotations

import imaplib
import logging

from mirrorsync.errors import (
    FolderNameError,
    ServerError,
)
from mirrorsync.imap.base import (
    StoreBase,
)
from mirrorsync.imap.client import refusal
from mirrorsync.imap.connection import list_status_arguments, personal_prefix_of, status_items
from mirrorsync.imap.parse import (
    folder_status,
    parse_fetch,
    parse_list_status,
    parse_status,
    text_of,
)
from mirrorsync.imap.wire import (
    decode_mutf7,
)
from mirrorsync.model import (
    SEP,
    FolderStatus,
    QuotaResource,
    RemoteFolder,
    canonical_folder,
)
from mirrorsync.names import server_to_canonical, special_use_of

log = logging.getLogger(__name__)


class Folders(StoreBase):
    @property
    def capabilities(self) -> frozenset[str]:
        return self._capabilities

    def list_folders(self) -> list[RemoteFolder]:
        """LIST "" "*". Right after `statuses()` (no folder created or deleted
        through this store in between) its listing is returned instead, once: the
        engine asks for both at the start of a run, and that saves a round trip."""
        if self._listing is not None:
            folders, self._listing = self._listing, None
            return folders
        return self._list_folders()

    def personal_prefix(self) -> str:
        """The prefix of the server's (first) personal namespace (RFC 2342), "" when
        it has none or no NAMESPACE: Courier answers "INBOX.", where every folder of
        the user is "INBOX.Name" and a top-level "Name" cannot be created."""
        if self._personal is None:
            self._personal = ""
            if "NAMESPACE" in self._capabilities:
                with self._translate("read the namespaces"):
                    self._personal = personal_prefix_of(self._client.namespace().personal)
        return self._personal

    def use_namespace_prefix(self, prefix: str) -> None:
        """Leave `prefix` out of canonical names from now on: server "INBOX.Work" is
        then "Work", and a new "Work" is created as "INBOX.Work". INBOX stays INBOX."""
        if prefix != self._prefix:
            self._prefix = prefix
            self._listing = None

    def unrepresentable(self, name: str) -> str | None:
        """Why the server cannot hold a folder of canonical `name`, None if it can."""
        try:
            self._server_name(name)
        except FolderNameError as e:
            return str(e)
        return None

    def delimiter(self) -> str | None:
        """The server's hierarchy delimiter; None for a flat server."""
        self._learn_delimiter()
        return self._delimiter

    def _list_folders(self) -> list[RemoteFolder]:
        with self._translate("list folders"):
            rows = self._client.list_folders()
        folders: list[RemoteFolder] = []
        names: list[tuple[str, str]] = []
        for attrs, delim, name in rows:
            delimiter = text_of(delim) if delim is not None else None
            canonical = self._canonical(text_of(name), delimiter)
            if canonical is not None:
                folders.append(
                    self._noted(RemoteFolder(canonical, frozenset(text_of(a) for a in attrs)))
                )
                if folders[-1].selectable:
                    names.append((text_of(name), canonical))
        self._note_collisions(names)
        return folders

    def _noted(self, folder: RemoteFolder) -> RemoteFolder:
        """`folder`, its special use remembered for `special_use()`."""
        special = special_use_of(folder.attributes)
        if special:
            self._special[folder.name] = special
        else:
            self._special.pop(folder.name, None)
        return folder

    def special_use(self) -> dict[str, str]:
        return dict(self._special)

    def _note_collisions(self, names: list[tuple[str, str]]) -> None:
        """Two selectable server folders whose names map to one canonical name
        (``a.b`` under delimiter '.' and ``a/b`` under '/', in two namespaces) cannot
        both be that folder, and syncing either would mix them up: the name is named
        in `status_failures()`, for the caller to skip."""
        by_name: dict[str, list[str]] = {}
        for server, canonical in names:
            by_name.setdefault(canonical, []).append(server)
        for canonical, servers in by_name.items():
            if len(servers) > 1:
                self._status_failures[canonical] = (
                    f"folder {canonical!r} on {self._address}: the server lists "
                    f"{' and '.join(repr(n) for n in servers)}, which all map to this name; "
                    "none of them is synced; rename all but one on the server"
                )

    def _canonical(self, server_name: str, delimiter: str | None) -> str | None:
        """The canonical name of a listed folder (learning the delimiter on the way),
        or None, with a warning, for a name that has none."""
        if not self._delimiter_known and delimiter:
            self._delimiter, self._delimiter_known = delimiter, True
        canonical = server_to_canonical(server_name, delimiter, self._prefix)
        if canonical is None:
            if self._prefix and not server_name.startswith(self._prefix):
                why = f"it is outside the personal namespace {self._prefix!r}"
            else:
                why = f"a component contains {SEP!r} or is empty, or it would not map back"
            log.warning("skipping server folder %r on %s: %s", server_name, self._address, why)
        return canonical

    def statuses(self) -> dict[str, FolderStatus]:
        """With LIST-STATUS (RFC 5819) one ``LIST "" "*" RETURN (STATUS (...))`` for
        the whole account, about 110 bytes per folder; without it LIST and a STATUS
        per selectable folder, pipelined. The listing is kept for the next
        `list_folders()`. A folder whose STATUS the server refused is left out and
        named in `status_failures()`."""
        items = self._status_items()
        self._status_failures = {}
        if "LIST-STATUS" not in self._capabilities:
            folders = self._list_folders()
            found = self._status_many(
                [f.name for f in folders if f.selectable and f.name not in self._status_failures]
            )
            self._listing = folders
            return found
        arguments = list_status_arguments(self._capabilities, items)
        with self._translate("list folders with status"):
            self._client.drop("LIST", "STATUS")
            typ, data = self._client.run("LIST", arguments)
            listed = parse_list_status(self._client.take("LIST"), self._client.take("STATUS"))
            if typ != "OK":
                raise refusal(typ, data)
        folders = []
        numbers: dict[str, FolderStatus | None] = {}
        names: list[tuple[str, str]] = []
        for entry in listed:
            server_name = decode_mutf7(entry.name) if self._client.folder_encode else entry.name
            canonical = self._canonical(text_of(server_name), entry.delimiter)
            if canonical is None:
                continue
            folder = self._noted(RemoteFolder(canonical, entry.attributes))
            folders.append(folder)
            if not folder.selectable:
                continue
            names.append((text_of(server_name), canonical))
            numbers[canonical] = folder_status(entry.status or {}, items)
        self._note_collisions(names)
        for name in self._status_failures:
            numbers.pop(name, None)
        # RFC 5819 lets a server leave out the STATUS of a folder it could not open;
        # asking for it alone either answers or says why not
        missing = [name for name, st in numbers.items() if st is None]
        found = self._status_many(missing) if missing else {}
        self._listing = folders
        return {name: st or found[name] for name, st in numbers.items() if st or name in found}

    def status_failures(self) -> dict[str, str]:
        return dict(self._status_failures)

    def _status_items(self) -> list[str]:
        return status_items(self._capabilities)

    def _status_many(self, names: list[str]) -> dict[str, FolderStatus]:
        """STATUS of each folder, pipelined (see `_status_numbers`)."""
        items = self._status_items()
        out: dict[str, FolderStatus] = {}
        for name, numbers in self._status_numbers(names, items).items():
            try:
                with self._translate("status", name):
                    status = folder_status(numbers, items)
                    if status is None:
                        raise ValueError("the STATUS response is missing or incomplete")
            except ServerError as e:
                self._status_failures[name] = str(e)
                continue
            out[name] = status
        return out

    def _status_numbers(self, names: list[str], items: list[str]) -> dict[str, dict[bytes, int]]:
        """``STATUS name (items)`` of each folder, pipelined: a server without
        LIST-STATUS (Outlook) then costs a round trip per `_PIPELINE_DEPTH` folders,
        not one per folder. The answers are matched by the name each STATUS response
        repeats; a folder whose STATUS failed is left out and named, with the
        server's words, in `status_failures()`."""
        servers = [self._server_name(name) for name in names]
        with self._translate("status"):
            self._client.drop("STATUS")
            what = f"({' '.join(items)})"
            results = self._client.pipeline(
                [("STATUS", self._client.wire_name(server), what) for server in servers]
            )
            got = parse_status(self._client.take("STATUS"))
        decode = self._client.folder_encode
        by_name = {
            canonical_folder(text_of(decode_mutf7(raw) if decode else raw)): numbers
            for raw, numbers in got.items()
        }
        out: dict[str, dict[bytes, int]] = {}
        for name, server, (typ, data) in zip(names, servers, results, strict=True):
            try:
                with self._translate("status", name):
                    if typ != "OK":
                        raise refusal(typ, data)
            except ServerError as e:
                self._status_failures[name] = str(e)
                continue
            out[name] = by_name.get(canonical_folder(server), {})
        return out

    def create_folder(self, name: str) -> None:
        """Creates missing parents only when the server refuses the folder itself:
        most servers (Dovecot too) create them implicitly, and each extra CREATE
        would make a real folder where the server would have kept a mere parent."""
        server = self._server_name(name)
        self._listing = None
        with self._translate("create folder", name):
            try:
                self._client.create_folder(server)
                return
            except imaplib.IMAP4.abort:
                raise
            except imaplib.IMAP4.error as exc:
                if "ALREADYEXISTS" in str(exc).upper() or self._exists(server):
                    return
                parents = name.split(SEP)[:-1]
                if not parents:
                    raise
            for i in range(1, len(parents) + 1):
                parent = self._server_name(SEP.join(parents[:i]))
                if self._exists(parent):
                    continue
                try:
                    self._client.create_folder(parent)
                except imaplib.IMAP4.abort:
                    raise
                except imaplib.IMAP4.error:
                    if not self._exists(parent):
                        raise
            self._client.create_folder(server)

    def delete_folder(self, name: str) -> None:
        """Leaves the folder first if it is selected: Dovecot answers a DELETE of the
        selected folder with BYE and drops the connection."""
        server = self._server_name(name)
        self._listing = None
        with self._translate("delete folder", name):
            if self._selected is not None and canonical_folder(name) == self._selected:
                self._unselect(server)
            self._client.delete_folder(server)

    def _unselect(self, server: str) -> None:
        """Leave the selected folder without expunging anything: UNSELECT, or else
        EXAMINE it and CLOSE (CLOSE on a read-only folder expunges nothing)."""
        if "UNSELECT" in self._capabilities:
            self._client.unselect_folder()
        else:
            self._client.select_folder(server, readonly=True)
            self._client.close_folder()
        self._selected = None
        self._generation += 1

    def _exists(self, server: str) -> bool:
        """True if `server` is listed as a selectable folder."""
        for attrs, _delim, name in self._client.list_folders("", server):
            if text_of(name) == server:
                return RemoteFolder(server, frozenset(text_of(a) for a in attrs)).selectable
        return False

    def quota(self) -> list[QuotaResource]:
        """imapclient's `get_quota_root` sends ``GETQUOTAROOT INBOX`` and reads the
        QUOTAROOT and QUOTA answers."""
        if "QUOTA" not in self._capabilities:
            return []
        with self._translate("read quota of", "INBOX"):
            _roots, quotas = self._client.get_quota_root("INBOX")
        return [
            QuotaResource(text_of(q.quota_root), text_of(q.resource).upper(), q.usage, q.limit)
            for q in quotas
        ]

    def folder_sizes(self) -> dict[str, tuple[int, int]]:
        """With STATUS=SIZE one pipelined STATUS per folder (no folder opened).
        Without it each folder is EXAMINEd (read-only, so \\Recent and the selected
        folder's state are left alone) and ``UID FETCH 1:* (UID RFC822.SIZE)`` summed;
        that leaves no folder selected."""
        names = [f.name for f in self._list_folders() if f.selectable]
        if "STATUS=SIZE" in self._capabilities:
            out: dict[str, tuple[int, int]] = {}
            for name, numbers in self._status_numbers(names, ["MESSAGES", "SIZE"]).items():
                with self._translate("status", name):
                    out[name] = (numbers[b"MESSAGES"], numbers[b"SIZE"])
            return out
        self._selected = None
        self._generation += 1
        out = {}
        for name in names:
            with self._translate("read the size of", name):
                data = self._client.select_folder(self._server_name(name), readonly=True)
                if int(data[b"EXISTS"]) == 0:
                    out[name] = (0, 0)
                    continue
                rows = parse_fetch(self._client.uid_fetch_data("1:*", "(UID RFC822.SIZE)"))
                sizes = [int(r[b"RFC822.SIZE"]) for r in rows.values() if b"RFC822.SIZE" in r]
                out[name] = (len(sizes), sum(sizes))
        if names:
            with self._translate("close folder"):
                self._client.close_folder()  # read-only: CLOSE expunges nothing
        return out
