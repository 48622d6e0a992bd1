"""`mirrorsync archive` and `mirrorsync quota` end to end, through the CLI, against a
Dovecot with the quota plugin: what is archived and what is kept, the quota before
and after, --dry-run, the JSON, and a run killed before each state commit in turn."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from mirrorsync.content import message_id
from tests.harness import Mirror, message

pytestmark = pytest.mark.dovecot

SEEN, FLAGGED = b"\\Seen", b"\\Flagged"
OLD = datetime(2020, 3, 1, 12, tzinfo=timezone.utc)
BIG = "y" * 300_000  # ~300 KB: a quota change the 1 KiB granularity cannot hide


def mirror(account: Any, tmp: Path, **overrides: Any) -> Mirror:
    """A Mirror whose account has Archive local-only and two rules: old mail of
    INBOX, large mail of Lists."""
    settings: dict[str, Any] = {
        "local": {"path": str(tmp / "Mail"), "local_only": ["Archive", "Archive/*"]},
        "archive": [
            {"folder": "INBOX", "older_than": "1y"},
            {"folder": "Lists", "larger_than": "200K"},
        ],
    }
    settings.update(overrides)
    return Mirror(account, tmp, **settings)


def fill(m: Mirror) -> dict[str, set[str]]:
    """Server mail of every kind the rules tell apart; returns the Message-IDs that
    are to be archived ("archived") and those to stay ("kept")."""
    c = m.client
    c.create_folder("Lists")
    plan = [
        ("INBOX", "old1", [SEEN], OLD, "", True),
        ("INBOX", "old2", [SEEN, b"\\Answered"], OLD, BIG, True),
        ("INBOX", "old-flagged", [SEEN, FLAGGED], OLD, "", False),
        ("INBOX", "old-unread", [], OLD, "", False),
        ("INBOX", "new", [SEEN], None, "", False),
        ("Lists", "big", [SEEN], None, BIG, True),
        ("Lists", "big-unread", [], None, BIG, False),
        ("Lists", "small", [SEEN], OLD, "", False),
    ]
    out: dict[str, set[str]] = {"archived": set(), "kept": set()}
    for folder, name, flags, when, body, archived in plan:
        c.append(folder, message(name, body=body), flags=flags, msg_time=when)
        out["archived" if archived else "kept"].add(f"<{name}@example.org>")
    return out


def more_on_server(m: Mirror) -> set[str]:
    """Old mail that arrived after the last sync: archived from the server's bytes."""
    c = m.client
    c.append("INBOX", message("late1"), flags=[SEEN], msg_time=OLD)
    c.append("Lists", message("late2", body=BIG), flags=[SEEN])
    return {"<late1@example.org>", "<late2@example.org>"}


def server_ids(m: Mirror) -> dict[str, Counter[str]]:
    c = m.client
    out: dict[str, Counter[str]] = {}
    for folder in ("INBOX", "Lists"):
        c.select_folder(folder, readonly=True)
        uids = c.search("ALL")
        bodies = c.fetch(uids, ["BODY.PEEK[HEADER]"]).values() if uids else []
        out[folder] = Counter(str(message_id(d[b"BODY[HEADER]"])) for d in bodies)
    return out


def local_ids(m: Mirror) -> dict[str, Counter[str]]:
    out: dict[str, Counter[str]] = {}
    for cur in sorted(m.root.rglob("cur")):
        folder = cur.parent.relative_to(m.root).as_posix()
        files = [p for sub in ("cur", "new") for p in (cur.parent / sub).iterdir()]
        out[folder] = Counter(str(message_id(p.read_bytes())) for p in files)
    return out


def storage_kib(m: Mirror) -> int:
    r = m.run("quota", "--json")
    assert r.status == 0, r
    (q,) = [q for q in json.loads(r.out)["accounts"]["test"]["quota"] if q["resource"] == "STORAGE"]
    return int(q["usage"])


def check_archived(m: Mirror, ids: dict[str, set[str]]) -> None:
    """Every archived message exactly once on disk, in its Archive folder, and gone
    from the server; every kept one still on the server and in its synced folder."""
    server, local = server_ids(m), local_ids(m)
    everywhere_local = sum(local.values(), Counter())
    for mid in ids["archived"]:
        assert everywhere_local[mid] == 1, (mid, local)
        assert (
            local.get("Archive/INBOX", Counter())[mid] + local.get("Archive/Lists", Counter())[mid]
            == 1
        ), (mid, local)
        assert not any(server[f][mid] for f in server), (mid, server)
    for mid in ids["kept"]:
        assert sum(server[f][mid] for f in server) == 1, (mid, server)
        assert everywhere_local[mid] <= 1, (mid, local)


def test_archive_by_age_and_size_frees_quota(quota_account: Any, tmp_path: Path) -> None:
    m = mirror(quota_account, tmp_path)
    ids = fill(m)
    m.sync()
    ids["archived"] |= more_on_server(m)
    before_server, before_local = server_ids(m), local_ids(m)
    usage_before = storage_kib(m)

    # quota: a table for people, with what the rules would free
    r = m.run("quota")
    assert r.status == 0, r
    assert "STORAGE" in r.out and "of 1.0 GiB used" in r.out
    assert "INBOX" in r.out and "Lists" in r.out
    assert "archiving would free 5 messages" in r.out
    assert "INBOX -> Archive/INBOX: 3 messages" in r.out

    # --dry-run says what it would do and changes nothing
    r = m.run("archive", "--dry-run")
    assert r.status == 0, r
    assert "would archive 5 messages" in r.out and "nothing changed" in r.out
    assert server_ids(m) == before_server and local_ids(m) == before_local

    r = m.run("archive")
    assert r.status == 0, r
    assert "test: archived 5 messages," in r.out and "freed on the server" in r.out
    check_archived(m, ids)
    assert set(local_ids(m)["Archive/INBOX"]) == {
        "<old1@example.org>",
        "<old2@example.org>",
        "<late1@example.org>",
    }
    # synced files kept their flags; the archive never reached the server
    assert any(p.name.endswith(":2,RS") for p in m.files("Archive/INBOX"))
    assert not any("Archive" in name for _a, _d, name in m.client.list_folders())
    freed = storage_kib(m)
    assert usage_before - freed >= 3 * 290, (usage_before, freed)  # three ~300 KB messages

    # quota --json: parses, folders largest first, nothing left to archive
    r = m.run("quota", "--json")
    doc = json.loads(r.out)["accounts"]["test"]
    sizes = [f["bytes"] for f in doc["folders"]]
    assert sizes == sorted(sizes, reverse=True)
    assert {f["name"] for f in doc["folders"]} == {"INBOX", "Lists"}
    assert doc["archive"] == {"messages": 0, "bytes": 0, "folders": []}

    # a second run finds nothing to do
    r = m.run("archive")
    assert r.status == 0 and "archived 0 messages" in r.out, r
    m.close()


def test_command_line_rule_and_sync_archive(quota_account: Any, tmp_path: Path) -> None:
    m = mirror(quota_account, tmp_path)
    ids = fill(m)
    r = m.run("sync", "--archive")  # sync, then the config's rules, in one run
    assert r.status == 0, r
    assert "archived 3 messages" in r.out, r
    check_archived(m, ids)

    c = m.client
    c.append("INBOX", message("flagged-big", body=BIG), flags=[SEEN, FLAGGED])
    r = m.run(
        "archive", "test", "--folder", "INBOX", "--larger-than", "100K", "--no-keep-flagged",
        "--to", "Archive/big", "--dry-run",
    )  # fmt: skip
    assert r.status == 0 and "would archive 1 message " in r.out, r
    r = m.run(
        "archive", "--folder", "INBOX", "--larger-than", "100K", "--no-keep-flagged",
        "--to", "Archive/big",
    )  # fmt: skip
    assert r.status == 0 and "archived 1 message," in r.out, r
    assert set(local_ids(m)["Archive/big"]) == {"<flagged-big@example.org>"}
    # a destination that is not local-only is refused before anything happens
    r = m.run("archive", "--folder", "INBOX", "--older-than", "1d", "--to", "Elsewhere")
    assert r.status == 2 and "not a local-only folder" in r.err, r
    r = m.run("archive", "--folder", "INBOX")
    assert r.status == 2 and "--older-than or --larger-than" in r.err, r
    r = m.run("archive", "--folder", "INBOX", "--older-than", "soon")
    assert r.status == 2 and "--older-than: cannot read 'soon'" in r.err, r
    m.close()


def test_killed_before_each_commit_then_rerun_loses_and_duplicates_nothing(
    make_quota_account: Any, tmp_path: Path
) -> None:
    """For each state commit of an archive run in turn: die just before it (after
    the change it records), run again, and check that every archived message is on
    disk exactly once, in its archive folder, and gone from the server."""
    kill_at = 1
    while True:
        m = mirror(make_quota_account(), tmp_path / f"k{kill_at}")
        ids = fill(m)
        m.sync()
        ids["archived"] |= more_on_server(m)
        killed = m.run_killed("archive", kill_at)
        check_archived(m, ids)
        m.close()
        if not killed:
            break
        kill_at += 1
        assert kill_at < 30, "an archive that never finishes"
    assert kill_at >= 4, "the scenario should pass through several commits"
