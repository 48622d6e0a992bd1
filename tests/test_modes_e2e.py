"""Pull and backup modes, and local-only folders that free the server, against a real
Dovecot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Mirror, message


def configure(m: Mirror, **changes: Any) -> None:
    """Edit the test account's config: `local_only=[...]`, `mode=...`."""
    doc = yaml.safe_load(m.config.read_text())
    acct = doc["accounts"]["test"]
    if "local_only" in changes:
        acct["local"]["local_only"] = changes["local_only"]
    if "mode" in changes:
        acct.setdefault("sync", {})["mode"] = changes["mode"]
    m.config.write_text(yaml.safe_dump(doc, allow_unicode=True))


@pytest.fixture
def mirror(account: Any, tmp_path: Path) -> Any:
    m = Mirror(account, tmp_path)
    for n in range(12):
        m.client.append("INBOX", message(n), flags=[b"\\Seen"])
    yield m
    m.close()


def test_pull_never_changes_the_server(mirror: Mirror) -> None:
    configure(mirror, mode="pull")
    mirror.sync()
    before = mirror.server()
    files = mirror.files("INBOX")
    files[0].unlink()  # deleted locally: comes back
    f = files[1]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,FS")))  # not pushed, reverted
    new = mirror.folder_dir("INBOX") / "new" / "1700000000.local.host"
    new.write_bytes(message("L").replace(b"\r\n", b"\n"))  # stays local
    mirror.client.append("INBOX", message("S"))  # server news still arrive
    mirror.sync()
    after = mirror.server()
    assert sum(after["INBOX"].values()) == sum(before["INBOX"].values()) + 1
    assert not any("F" in flags for _h, flags in after["INBOX"])
    local = mirror.local()["INBOX"]
    assert sum(local.values()) == 14  # 12 + the server's new one + the local one
    assert new.exists()
    assert not any("F" in flags for _h, flags in local)


def test_backup_keeps_what_the_server_expunged(mirror: Mirror) -> None:
    configure(mirror, mode="backup")
    mirror.sync()
    c = mirror.client
    c.select_folder("INBOX")
    c.delete_messages(c.search("ALL"))
    c.expunge()
    r = mirror.sync()
    assert mirror.server()["INBOX"] == {}
    assert len(mirror.files("INBOX")) == 12
    assert "kept locally" in r.out or "12" in r.out
    mirror.sync()  # and they stay
    assert len(mirror.files("INBOX")) == 12


def test_moving_into_a_local_only_folder_frees_the_server(mirror: Mirror) -> None:
    configure(mirror, local_only=["Archive", "Archive/*"])
    mirror.sync()
    archive = mirror.root / "Archive" / "2025"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True)
    files = mirror.files("INBOX")
    for f in files[:8]:  # renamed (notmuch, aerc): 8 of 12, past the guard's share
        f.rename(archive / "cur" / f.name)
    for i, f in enumerate(files[8:10]):  # copied then removed (mutt)
        (archive / "cur" / f"1800000000.copy{i}.host:2,S").write_bytes(f.read_bytes())
        f.unlink()
    r = mirror.run("sync")
    assert r.status == 0, r  # not read as a mass deletion
    server = mirror.server()
    assert sum(server["INBOX"].values()) == 2
    assert not any(name.startswith("Archive") for name in server)  # never created there
    assert len(list((archive / "cur").iterdir())) == 10  # all safe on disk
    mirror.sync()
    assert len(list((archive / "cur").iterdir())) == 10


def test_the_guard_still_stops_a_real_mass_deletion(mirror: Mirror) -> None:
    configure(mirror, local_only=["Archive"])
    mirror.sync()
    for f in mirror.files("INBOX")[:10]:
        f.unlink()
    r = mirror.run("sync")
    assert r.status == 1 and "--force" in r.err
    assert sum(mirror.server()["INBOX"].values()) == 12
