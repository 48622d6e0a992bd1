"""Two ways a sync could lose track for good, end to end: a reader's rename during a
sync must not let the recorded MODSEQ pass a server change that was not applied, and
a full disk under the state directory must not throw the good state away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mirrorsync.engine import AccountSync
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
