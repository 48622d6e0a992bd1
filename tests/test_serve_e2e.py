"""A mirrorsync Maildir served by Dovecot, with the mail_location the README gives
for each layout: every folder (nested, non-ASCII) and INBOX are there with their
messages and flags, as they are on the server they were synced from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import imapclient
import pytest

from devtools.devserver import Dovecot
from tests.harness import Mirror, message

SEEN, FLAGGED = b"\\Seen", b"\\Flagged"

# What the README tells users to put in dovecot.conf (or a userdb's `mail`), ROOT
# being local.path.
LOCATIONS = {
    "nested": "maildir:{root}:LAYOUT=fs:UTF-8:INBOX={root}/INBOX",
    "maildir++": "maildir:{root}:UTF-8",
}


def served_view(server: Dovecot, user: str, password: str) -> dict[str, dict[str, int]]:
    """Folder -> {flag letters of each message -> count}, as IMAP shows it."""
    c = imapclient.IMAPClient(server.host, server.port, ssl=False, timeout=30)
    c.login(user, password)
    try:
        view: dict[str, dict[str, int]] = {}
        for flags, _delim, name in c.list_folders():
            if b"\\Noselect" in flags or b"\\NonExistent" in flags:
                continue
            c.select_folder(name, readonly=True)
            got: dict[str, int] = {}
            uids = c.search("ALL")
            for data in c.fetch(uids, ["FLAGS"]).values() if uids else []:
                letters = "".join(
                    sorted(
                        "S" if f == SEEN else "F" for f in data[b"FLAGS"] if f in (SEEN, FLAGGED)
                    )
                )
                got[letters] = got.get(letters, 0) + 1
            view["INBOX" if name.upper() == "INBOX" else name.replace(_delim.decode(), "/")] = got
        return view
    finally:
        c.logout()


@pytest.mark.parametrize("layout", sorted(LOCATIONS))
def test_dovecot_serves_the_synced_maildir(
    account: Any, dovecot: Dovecot, tmp_path: Path, layout: str
) -> None:
    m = Mirror(account, tmp_path, layout=layout)
    c = m.client
    for name in ("Work", "Work/Projects", "Entwürfe", "Ärger/Alt"):
        c.create_folder(name)
    c.append("INBOX", message(1), flags=[SEEN])
    c.append("INBOX", message(2))
    c.append("Work/Projects", message(3), flags=[SEEN, FLAGGED])
    c.append("Entwürfe", message(4), flags=[SEEN])
    c.append("Ärger/Alt", message(5))
    m.sync()
    origin = served_view(dovecot, account.user, account.password)

    # The synced tree, where Dovecot's mail user can read it, served to a new user.
    root = dovecot.base / "served" / f"{account.user}-{layout}"
    shutil.copytree(m.root, root, symlinks=True)
    subprocess.run(["chown", "-R", "dovecot:dovecot", str(root.parent)], check=True)
    reader = f"{account.user}r{len(layout)}"
    dovecot.add_user(reader, "pw", mail=LOCATIONS[layout].format(root=root))
    served = served_view(dovecot, reader, "pw")
    m.close()
    assert served == origin, (served, origin)
    assert sum(served["INBOX"].values()) == 2
