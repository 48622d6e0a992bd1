"""`mirrorsync status`: what each folder holds and what a sync would push.

It works offline, from the Maildir and the state alone, so it answers instantly and
even when the server is unreachable; the server column is therefore the count at the
last sync, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mirrorsync.config import AccountConfig
from mirrorsync.maildir import Maildir
from mirrorsync.state import State


@dataclass(frozen=True)
class FolderLine:
    name: str
    local: int
    server: int
    new: int
    deleted: int
    flagged: int
    last_sync: float


def folder_lines(account: AccountConfig) -> list[FolderLine]:
    maildir = Maildir(account.local.path, account.local.layout)
    state = State.open(account.state_dir)
    try:
        known = state.folders()
        names = set(known) | (set(maildir.list_folders()) if maildir.exists() else set())
        lines = []
        for name in sorted(n for n in names if account.folders.matches(n)):
            folder = maildir.folder(name)
            local = folder.scan() if folder.exists() else {}
            pairs = state.pairs(name)
            paired = {p.key: p for p in pairs}
            lines.append(
                FolderLine(
                    name,
                    local=len(local),
                    server=len(pairs),
                    new=sum(1 for k in local if k not in paired),
                    deleted=sum(1 for k in paired if k not in local),
                    flagged=sum(
                        1
                        for k, p in paired.items()
                        if k in local and local[k].flags != p.local_flags
                    ),
                    last_sync=known[name].last_sync if name in known else 0.0,
                )
            )
        return lines
    finally:
        state.close()


def account_status(account: AccountConfig) -> str:
    lines = folder_lines(account)
    out = [f"account {account.name}: {account.local.path} <-> {account.remote.host}"]
    header = ("FOLDER", "LOCAL", "SERVER*", "NEW", "DELETED", "FLAGS", "LAST SYNC")
    rows = [header]
    for f in lines:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(f.last_sync))
            if f.last_sync
            else "never"
        )
        rows.append(
            (f.name, str(f.local), str(f.server), str(f.new), str(f.deleted), str(f.flagged), when)
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    pending = sum(f.new + f.deleted + f.flagged for f in lines)
    out.append(
        f"* server count as of the last sync; {pending} local changes pending"
        if lines
        else "no folders yet: run 'mirrorsync sync'"
    )
    return "\n".join(out) + "\n"
