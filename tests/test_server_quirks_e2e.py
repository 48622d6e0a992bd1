"""What servers do differently from the full Dovecot, end to end against a real
Dovecot told to behave like them: UIDPLUS without MOVE (Courier)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness import Mirror, message


def test_a_local_move_without_move_keeps_its_copyuid(uidplus_account: Any, tmp_path: Path) -> None:
    """Courier has UIDPLUS but no MOVE: the move is a UID COPY whose COPYUID comes in
    the tagged answer. The state records the moved message at once, so a flag changed
    along with the move reaches the server in the same run and the next run has
    nothing to link."""
    m = Mirror(uidplus_account, tmp_path)
    c = m.client
    c.create_folder("Archive")
    for n in range(2):
        c.append("INBOX", message(n), flags=[b"\\Seen"])
    m.sync()
    f = m.files("INBOX")[0]
    f.rename(m.folder_dir("Archive") / "cur" / (f.name.split(":2,")[0] + ":2,FS"))
    r = m.sync()
    assert "moved" in r.out, r.out
    (flags,) = m.server_uids("Archive").values()
    assert {"\\Seen", "\\Flagged"} <= flags
    snap = m.assert_mirrored()
    again = m.sync()
    assert "linked" not in again.out, again.out
    assert m.assert_mirrored() == snap
    m.close()
