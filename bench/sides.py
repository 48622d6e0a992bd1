"""Looking at both sides of one tool's mirror: the server user (over IMAP, as another
client would) and the local Maildir (by reading the files). Messages are identified
by Message-ID; flags are compared as sorted Maildir letters (D F R S T)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imapclient

from bench.mail import letters_of_imap, message_id, read_message_id, split_info

HEADER_ITEM = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"
HEADER_KEY = b"BODY[HEADER.FIELDS (MESSAGE-ID)]"


@dataclass
class Entry:
    letters: str
    where: Any  # the server UID (int) or the local file (Path)


@dataclass
class Side:
    """folder -> Message-ID -> every copy found (more than one is a duplicate)."""

    folders: dict[str, dict[str, list[Entry]]] = field(default_factory=dict)

    def count(self, folder: str) -> int:
        return sum(len(v) for v in self.folders.get(folder, {}).values())

    def first(self, folder: str, mid: str) -> Entry | None:
        copies = self.folders.get(folder, {}).get(mid)
        return copies[0] if copies else None


def chunks(uids: list[int], size: int = 2000) -> Iterator[list[int]]:
    """UID lists in pieces: imapclient sends every UID (no ranges), and Dovecot refuses
    command lines over 64 KB."""
    for i in range(0, len(uids), size):
        yield uids[i : i + size]


@contextlib.contextmanager
def connect(host: str, port: int, user: str, password: str) -> Iterator[Any]:
    client = imapclient.IMAPClient(host, port, ssl=False, timeout=300)
    try:
        client.login(user, password)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def server_folders(client: Any) -> list[str]:
    names = []
    for attrs, _delim, name in client.list_folders():
        if {b"\\Noselect", b"\\NonExistent"} & {a for a in attrs}:
            continue
        names.append("INBOX" if name.upper() == "INBOX" else name)
    return sorted(names)


def server_folder(client: Any, folder: str, extra: tuple[str, ...] = ()) -> dict[str, list[Entry]]:
    """Message-ID -> copies in one server folder (selected read-only)."""
    info = client.select_folder(folder, readonly=True)
    out: dict[str, list[Entry]] = {}
    uids = client.search("ALL") if int(info.get(b"EXISTS", 0)) else []
    if not uids:
        return out
    for chunk in chunks(uids):
        for uid, data in client.fetch(chunk, ["FLAGS", HEADER_ITEM, *extra]).items():
            mid = message_id(data.get(HEADER_KEY, b"")) or f"<no-message-id uid={uid}>"
            out.setdefault(mid, []).append(Entry(letters_of_imap(data[b"FLAGS"]), uid))
    return out


def server_side(client: Any, extra: tuple[str, ...] = ()) -> Side:
    return Side({f: server_folder(client, f, extra) for f in server_folders(client)})


def server_bodies(client: Any, folder: str, uids: list[int]) -> dict[int, bytes]:
    if not uids:
        return {}
    client.select_folder(folder, readonly=True)
    return {u: d[b"BODY[]"] for u, d in client.fetch(uids, ["BODY.PEEK[]"]).items()}


def local_folders(root: Path) -> dict[str, Path]:
    """Every Maildir under `root` (a directory with cur/ and new/), by "/"-separated name."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, _files in os.walk(root):
        here = Path(dirpath)
        if "cur" in dirnames and "new" in dirnames:
            name = here.relative_to(root).as_posix()
            found["INBOX" if name.upper() == "INBOX" else name] = here
        dirnames[:] = sorted(d for d in dirnames if d not in ("cur", "new", "tmp"))
    return found


def local_side(root: Path) -> Side:
    side = Side()
    if not root.exists():
        return side
    for name, fdir in local_folders(root).items():
        msgs: dict[str, list[Entry]] = {}
        for sub in ("cur", "new"):
            for entry in os.scandir(fdir / sub):
                if not entry.is_file() or entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                mid = read_message_id(path) or f"<no-message-id {path.name}>"
                msgs.setdefault(mid, []).append(Entry(split_info(entry.name)[2], path))
        side.folders[name] = msgs
    return side
