"""Two ways a sync could lose track for good, end to end: a reader's rename during a
sync must not let the recorded MODSEQ pass a server change that was not applied, and
a full disk under the state directory must not throw the good state away."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mirrorsync.state import DB_NAME
from mirrorsync.sync.engine import AccountSync
from tests.harness import Mirror, message


def test_a_flag_change_skipped_for_a_readers_rename_arrives_next_run(
    account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server adds \\Flagged; while mirrorsync works, the reader renames the file
    :2,S -> :2,RS (and later back). The stale flag change is skipped, so the
    folder's recorded HIGHESTMODSEQ must stay before the server's change: QRESYNC
    then reports it again and a later sync converges to \\Flagged \\Seen."""
    m = Mirror(account, tmp_path)
    c = m.client
    c.append("INBOX", message(1), flags=[b"\\Seen"])
    m.sync()
    (f,) = m.files("INBOX")
    assert f.name.endswith(":2,S")
    c.select_folder("INBOX")
    c.add_flags(c.search("ALL"), [b"\\Flagged"])

    real = AccountSync._apply_flags
    renamed = f.with_name(f.name[: -len("S")] + "RS")

    def reader_renames_first(self: AccountSync, *args: Any, **kw: Any) -> Any:
        if f.exists():
            f.rename(renamed)
        return real(self, *args, **kw)

    monkeypatch.setattr(AccountSync, "_apply_flags", reader_renames_first)
    m.sync()
    monkeypatch.setattr(AccountSync, "_apply_flags", real)
    assert renamed.exists()  # the plan was stale for it: left alone
    renamed.rename(f)  # the reader takes its \Answered back
    m.sync()
    (f2,) = m.files("INBOX")
    assert f2.name.endswith(":2,FS"), f2.name
    (flags,) = m.server_uids("INBOX").values()
    assert {"\\Seen", "\\Flagged"} <= flags and "\\Answered" not in flags
    snap = m.assert_mirrored()
    m.sync()
    assert m.assert_mirrored() == snap
    m.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (root only), to be filled up for real."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(fs: Path) -> Path:
    """Take every free byte of `fs`; the filler's path, to free them again."""
    filler = fs / "filler"
    with open(filler, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            f.close()
    return filler


def test_a_full_disk_under_the_state_keeps_the_state(
    account: Any, tmp_path: Path, small_fs: Path
) -> None:
    """The good database is neither moved aside nor emptied: the run says there is no
    space (exit 1), and once there is, the next run goes on with the state intact,
    so a message deleted locally is deleted on the server, not downloaded again."""
    m = Mirror(account, tmp_path)
    m.state_dir = small_fs / "state"
    m.config.write_text(m.config.read_text().replace(str(tmp_path / "state"), str(m.state_dir)))
    for n in range(3):
        m.client.append("INBOX", message(n), flags=[b"\\Seen"])
    m.sync()
    db = m.state_dir / DB_NAME
    before = db.stat().st_ino
    m.files("INBOX")[0].unlink()
    filler = _fill(small_fs)
    r = m.run("sync")
    assert r.status == 1, r
    assert f"no space left for the state in {m.state_dir}" in r.err, r.err
    assert "internal error" not in r.err
    assert db.stat().st_ino == before
    assert not [p for p in m.state_dir.iterdir() if ".corrupt-" in p.name]
    assert len(m.server_uids("INBOX")) == 3  # nothing was done without its record
    filler.unlink()
    m.sync()
    assert len(m.server_uids("INBOX")) == 2 and len(m.files("INBOX")) == 2
    m.assert_mirrored()
    m.close()


def test_a_full_disk_under_the_maildir_is_one_line_and_the_rerun_completes(
    account: Any, tmp_path: Path, small_fs: Path
) -> None:
    """The Maildir on a real full file system: the downloads stop with one line
    (exit 1), no half-written file is left, and once space is freed the next run
    completes: every message once, the same on both sides."""
    m = Mirror(account, tmp_path)
    m.root = small_fs / "Mail"
    m.config.write_text(m.config.read_text().replace(str(tmp_path / "Mail"), str(m.root)))
    m.client.append("INBOX", message("first"), flags=[b"\\Seen"])
    m.sync()
    (m.root / "INBOX" / "new" / "1800000000.M1P1.reader").write_bytes(b"Subject: mine\n\nlocal\n")
    for n in range(12):
        m.client.append("INBOX", message(n, body="x" * 20_000), flags=[b"\\Seen"])
    filler = _fill(small_fs)
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "disk full" in line and "INBOX" in line and "internal error" not in line, line
    assert not any(p for tmp in m.root.rglob("tmp") for p in tmp.iterdir())
    filler.unlink()
    m.sync()
    snap = m.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 14 and set(snap["INBOX"].values()) == {1}
    m.close()
