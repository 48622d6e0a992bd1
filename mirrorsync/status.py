"""`mirrorsync status`: what each folder holds and what a sync would push.

It works offline, from the Maildir and the state alone, so it answers instantly and
even when the server is unreachable; the server column is therefore the count at the
last sync, and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mirrorsync.config import AccountConfig
from mirrorsync.errors import LocalRootMissing
from mirrorsync.maildir import Maildir
from mirrorsync.names import KEPT_LOCAL_META, SPECIAL_USE_META
from mirrorsync.state import State
from mirrorsync.words import counted


@dataclass(frozen=True)
class FolderLine:
    name: str
    special: str  # its special use on the server ("\\Junk"), "" for none
    local: int
    server: int
    new: int
    deleted: int
    flagged: int
    last_sync: float


def folder_lines(account: AccountConfig) -> tuple[list[FolderLine], float]:
    """Per-folder lines, and the time of the last complete sync of the account (a
    folder found unchanged then is as fresh as that, though its row is older)."""
    maildir = Maildir.of(account.local)
    state = State.open(account.state_dir)
    try:
        if not maildir.exists():
            remembered = sum(state.count_pairs().values())
            if remembered:
                # not "N local changes pending": nothing here was deleted by anyone
                raise LocalRootMissing(
                    f"account {account.name}: the local Maildir {maildir.root} is gone "
                    f"(the state remembers {counted(remembered, 'synced message')})",
                    "if the disk is not mounted, mount it; a sync changes nothing until it is back",
                )
        account_sync = float(state.get_meta("last_sync") or 0)
        known = state.folders()
        names = set(known) | (set(maildir.list_folders()) if maildir.exists() else set())
        # folders the server cannot hold stay local (`naming.kept_local`): nothing pending
        names -= set((state.get_meta(KEPT_LOCAL_META) or "").split("\n")) - set(known)
        special = special_use(state)
        lines = []
        for name in sorted(n for n in names if account.folders.matches(n, special.get(n, ""))):
            folder = maildir.folder(name)
            local = folder.scan() if folder.exists() else {}
            pairs = state.pairs(name)
            paired = {p.key: p for p in pairs}
            lines.append(
                FolderLine(
                    name,
                    special.get(name, ""),
                    local=len(local),
                    server=len(pairs),
                    new=sum(1 for k in local if k not in paired),
                    deleted=sum(1 for k in paired if k not in local),
                    flagged=sum(
                        1
                        for k, p in paired.items()
                        if k in local and local[k].flags != p.local_flags
                    ),
                    last_sync=max(known[name].last_sync, account_sync) if name in known else 0.0,
                )
            )
        return lines, account_sync
    finally:
        state.close()


def special_use(state: State) -> dict[str, str]:
    """The special-use folders the last sync saw: name -> attribute."""
    text = state.get_meta(SPECIAL_USE_META) or ""
    return dict(line.split("\t", 1) for line in text.split("\n") if "\t" in line)


def account_status(account: AccountConfig) -> str:
    lines, account_sync = folder_lines(account)
    last = _when(account_sync)
    out = [
        f"account {account.name}: {account.local.path} <-> {account.remote.host} "
        f"(last complete sync: {last})"
    ]
    header = ("FOLDER", "LOCAL", "SERVER*", "NEW", "DELETED", "FLAGS", "LAST SYNC")
    rows = [header]
    for f in lines:
        rows.append(
            (
                f"{f.name} ({f.special})" if f.special else f.name,
                str(f.local),
                str(f.server),
                str(f.new),
                str(f.deleted),
                str(f.flagged),
                _when(f.last_sync),
            )
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
        f"* server count as of the last sync; {counted(pending, 'local change')} pending"
        if lines
        else "no folders yet: run 'mirrorsync sync'"
    )
    return "\n".join(out) + "\n"


def status_document(account: AccountConfig) -> dict[str, object]:
    """`status --json` for one account: the table's numbers, times as Unix seconds
    (0: never)."""
    lines, account_sync = folder_lines(account)
    return {
        "local_path": str(account.local.path),
        "host": account.remote.host,
        "last_sync": account_sync,
        "folders": {
            f.name: {
                "local": f.local,
                "server_at_last_sync": f.server,
                "new": f.new,
                "deleted": f.deleted,
                "flags_changed": f.flagged,
                "last_sync": f.last_sync,
            }
            for f in lines
        },
    }


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"
