"""`folders.rename`, a server-to-local name mapping, against Dovecot: Gmail's
"[Gmail]/Sent Mail" kept locally as "Sent", both ways, while every other folder
keeps its name (a new local folder is created on the server under its own name);
checked both ways, in the configuration (two server folders cannot share a local
name) and in a run (an unrenamed server folder cannot take a renamed one's place)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync.config import load
from mirrorsync.errors import ConfigError
from tests.harness import Mirror, message

SENT = "[Gmail]/Sent Mail"


def test_a_renamed_folder_syncs_both_ways(account: Any, tmp_path: Path) -> None:
    m = Mirror(account, tmp_path, folders={"rename": {SENT: "Sent"}})
    c = account.client()
    c.create_folder(SENT)
    c.append(SENT, message("s1"), flags=[b"\\Seen"])
    c.append("INBOX", message("i1"))
    m.sync()
    assert sorted(m.local()) == ["INBOX", "Sent"]  # no "[Gmail]" directory
    # a message filed locally in Sent goes up to the server's folder
    (m.root / "Sent" / "new" / "1800000000.M1P1.reader").write_bytes(message("s2"))
    # and a new local folder is created on the server under its own name
    (m.root / "Notes" / "new").mkdir(parents=True)
    (m.root / "Notes" / "cur").mkdir()
    (m.root / "Notes" / "tmp").mkdir()
    (m.root / "Notes" / "new" / "1800000001.M2P1.reader").write_bytes(message("n1"))
    m.sync()
    c.select_folder(SENT)
    assert len(c.search("ALL")) == 2
    c.select_folder("Notes")
    assert len(c.search("ALL")) == 1
    folders = {name for _flags, _delim, name in c.list_folders()}
    assert "Sent" not in folders
    # a flag set on the server reaches the renamed local folder
    c.select_folder(SENT)
    c.add_flags(c.search("ALL"), [b"\\Flagged"])
    c.logout()
    m.sync()
    assert all("F" in flags for _h, flags in m.local()["Sent"])
    status = m.run("status")
    assert "[Gmail]/Sent Mail" in status.out, status.out  # status names folders as synced


def test_a_server_folder_cannot_take_a_renamed_ones_place(account: Any, tmp_path: Path) -> None:
    m = Mirror(account, tmp_path, folders={"rename": {SENT: "Sent"}})
    c = account.client()
    c.create_folder(SENT)
    c.create_folder("Sent")  # would be stored where SENT is
    c.append(SENT, message("s1"))
    c.append("Sent", message("x1"))
    c.logout()
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "folder 'Sent' would be kept in the local folder 'Sent'" in line, line
    assert "rename 'Sent' too in folders.rename" in line
    assert sum(m.local()["Sent"].values()) == 1  # SENT's message alone


@pytest.mark.parametrize(
    ("rename", "fragment"),
    [
        ({"A": "X", "B": "X"}, "'A' and 'B' are both renamed to 'X'"),
        ({"INBOX": "Inbox"}, "INBOX cannot be renamed"),
        ({"A": "INBOX"}, "INBOX cannot be renamed"),
        ({"A/*": "X"}, "expected a folder name, not a pattern"),
        (["A"], "expected a mapping of server folder names to local ones"),
    ],
)
def test_rename_config_errors(tmp_path: Path, rename: Any, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    account = {
        "remote": {"host": "h", "username": "u", "password": "p"},
        "local": {"path": str(tmp_path / "Mail")},
        "folders": {"rename": rename},
    }
    path.write_text(yaml.safe_dump({"accounts": {"a": account}}))
    with pytest.raises(ConfigError) as e:
        load(path, {"HOME": str(tmp_path)})
    assert "accounts.a.folders.rename" in str(e.value) and fragment in str(e.value), str(e.value)
