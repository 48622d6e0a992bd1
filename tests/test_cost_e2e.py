"""A sync costs what changed: counted in server commands, against a real Dovecot
with QRESYNC and against one with no extensions (the fallback is correct, not cheap)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import maildir as maildir_mod
from mirrorsync import quick
from mirrorsync.imap.store import ImapStore
from tests.harness import Mirror, message

WATCHED = ("select", "select_changes", "list_messages", "fetch", "identities", "statuses")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    seen: Counter[str] = Counter()
    for name in WATCHED:
        real = getattr(ImapStore, name)

        def spy(self: Any, *a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            seen[_name] += 1
            return _real(self, *a, **kw)

        monkeypatch.setattr(ImapStore, name, spy)
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_FINE", -1.0)  # trust stamps at once
    monkeypatch.setattr(maildir_mod.Stamp, "SETTLE_COARSE", -1.0)
    # what the engine costs is counted here; the quick check (which finishes a no-op
    # run before the engine) is tested in test_quick_e2e.py
    monkeypatch.setattr(quick, "try_quick", lambda argv, env: quick.Outcome())
    return seen


@pytest.fixture(params=["full", "basic"])
def mirror(request: Any, tmp_path: Path) -> Any:
    account = request.getfixturevalue("account" if request.param == "full" else "basic_account")
    m = Mirror(account, tmp_path)
    for f in ("A", "B", "C"):
        m.client.create_folder(f)
        for n in range(5):
            m.client.append(f, message(f"{f}{n}"), flags=[b"\\Seen"])
    m.sync()
    m.sync()  # after our own downloads, the stamps settle
    yield m
    m.close()


def test_an_unchanged_account_selects_no_folder(mirror: Mirror, calls: Counter[str]) -> None:
    mirror.sync()
    if mirror.client.has_capability("CONDSTORE"):
        assert calls["select"] + calls["select_changes"] + calls["list_messages"] == 0
        assert calls["statuses"] == 1
    else:
        # Without MODSEQ a flag change leaves no trace in STATUS: every folder is listed.
        assert calls["list_messages"] == 4  # INBOX, A, B, C
    mirror.assert_mirrored()


def test_a_server_change_costs_one_incremental_select(mirror: Mirror, calls: Counter[str]) -> None:
    c = mirror.client
    c.select_folder("B")
    c.add_flags(min(c.search("ALL")), [b"\\Flagged"])
    mirror.sync()
    if mirror.client.has_capability("QRESYNC"):
        assert calls["select_changes"] == 1 and calls["list_messages"] == 0
    mirror.assert_mirrored()
    assert any("F" in fl for fl, _n in [(f, n) for (_h, f), n in mirror.local()["B"].items()])


def test_a_local_change_lists_only_that_folder(mirror: Mirror, calls: Counter[str]) -> None:
    f = mirror.files("C")[0]
    f.rename(f.with_name(f.name.replace(":2,S", ":2,FS")))
    mirror.sync()
    if mirror.client.has_capability("CONDSTORE"):
        assert calls["list_messages"] == 0 and calls["select"] + calls["select_changes"] == 1
    mirror.assert_mirrored()


def test_a_server_only_change_loads_only_the_pairs_it_names(
    mirror: Mirror, calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mirrorsync.state import State

    loaded: Counter[str] = Counter()
    real_pairs, real_for = State.pairs, State.pairs_for

    def pairs(self: Any, folder: str) -> Any:
        loaded["all"] += 1
        return real_pairs(self, folder)

    def pairs_for(self: Any, folder: str, uids: Any) -> Any:
        got = real_for(self, folder, uids)
        loaded["some"] += len(got)
        return got

    mirror.sync()  # records the local stamps, now trusted at once
    monkeypatch.setattr(State, "pairs", pairs)
    monkeypatch.setattr(State, "pairs_for", pairs_for)
    c = mirror.client
    c.select_folder("A")
    c.add_flags(min(c.search("ALL")), [b"\\Answered"])
    mirror.sync()
    if mirror.client.has_capability("QRESYNC"):
        assert loaded["all"] == 0 and loaded["some"] == 1
    mirror.assert_mirrored()


def test_a_server_batch_selects_each_changed_folder_once(
    mirror: Mirror, calls: Counter[str]
) -> None:
    """New mail in A and expunges in B and C: move detection looks at A's arrivals and
    the downloads need A selected, so A is gathered last and never selected again."""
    c = mirror.client
    for name in ("B", "C"):
        c.select_folder(name)
        gone = min(c.search("ALL"))
        c.delete_messages([gone])
        c.expunge()
    c.append("A", message("A-new"), flags=[])
    mirror.sync()
    if mirror.client.has_capability("QRESYNC"):
        assert calls["select_changes"] == 3 and calls["select"] == 0
    mirror.assert_mirrored()
