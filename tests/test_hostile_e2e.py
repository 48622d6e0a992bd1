"""A server that answers badly for one folder or one message: a real Dovecot behind
tests/faultproxy.py, which rewrites some of its answers. The folder (or message)
concerned fails with one clear line naming it, exit 1; the other folders sync; and
nothing wrong is stored."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import TIMEOUT, FaultProxy, proxied_mirror
from tests.harness import message

LONG = "/".join(f"{i:02d}" + "x" * 198 for i in range(25))  # 25 components of 200 bytes


@pytest.fixture(autouse=True)
def _no_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan oracle reads on a connection of its own, which would go through the
    proxy too and take its faults and rewritten answers: what these tests judge is
    the run, so the oracle stays out of them."""
    monkeypatch.delenv("MIRRORSYNC_PLAN_ORACLE", raising=False)


def _with_listed(extra: bytes) -> Any:
    """A rewrite that lists `extra` (LIST and STATUS lines) right after INBOX's LIST."""

    def rewrite(response: bytes) -> bytes:
        if re.match(rb'\* LIST \([^)]*\) "/" "?INBOX"?\r\n', response):
            return response + extra
        return response

    return rewrite


def test_a_folder_path_too_long_for_the_file_system_fails_alone(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    m = proxied_mirror(account, fault_proxy, tmp_path)
    m.client.create_folder("Work")
    m.client.append("Work", message(1))
    m.client.append("INBOX", message(2))
    fault_proxy.arm(
        None,
        _with_listed(
            f'* LIST (\\HasNoChildren) "/" {LONG}\r\n'
            f"* STATUS {LONG} (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 7 HIGHESTMODSEQ 3)\r\n".encode()
        ),
    )
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "File name too long" in line and LONG[:20] in line and len(line) < 600, line
    assert "internal error" not in r.err
    snap = m.local()
    assert sum(snap["Work"].values()) == 1 and sum(snap["INBOX"].values()) == 1
    r = m.run("sync")  # the next run says the same, and nothing else changes
    assert r.status == 1 and "File name too long" in r.err, r
    fault_proxy.arm(None)
    m.sync()
    m.assert_mirrored()
    m.close()


def _status_refused(proxy: FaultProxy, folder: bytes) -> Any:
    """A rewrite under which the server cannot give `folder`'s STATUS: it is left out
    of LIST-STATUS answers (as RFC 5819 allows) and a STATUS of it is answered NO."""
    untagged = re.compile(rb'\* STATUS "?' + re.escape(folder) + rb'"? ')

    def rewrite(response: bytes) -> bytes:
        if untagged.match(response):
            return b""
        tag = response.split(b" ", 1)[0]
        line = proxy.tagged.get(tag, b"")
        if re.match(rb'\S+ STATUS "?' + re.escape(folder) + rb'"? ', line):
            return tag + b" NO [SERVERBUG] Internal error occurred. Refer to server log\r\n"
        return response

    return rewrite


def test_one_folders_status_refused_fails_that_folder_alone(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Like a refused SELECT, a refused STATUS is one folder's failure: the others
    sync, and the folder (whose state on the server is unknown) is neither deleted
    locally nor changed, until a later run can see it again."""
    m = proxied_mirror(account, fault_proxy, tmp_path)
    c = m.client
    c.create_folder("Archive")
    c.append("Archive", message("a"), flags=[b"\\Seen"])
    c.append("INBOX", message("i"), flags=[b"\\Seen"])
    m.sync()
    c.append("INBOX", message("i2"))
    c.append("Archive", message("a2"))
    local_new = m.folder_dir("Archive") / "new" / "1800000000.M1P1.reader"
    local_new.write_bytes(b"Subject: mine\n\nlocal\n")
    fault_proxy.arm(None, _status_refused(fault_proxy, b"Archive"))
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "Archive" in line and "SERVERBUG" in line and "internal error" not in line, line
    assert sum(m.local()["INBOX"].values()) == 2  # INBOX synced
    assert sum(m.local()["Archive"].values()) == 2  # kept, not deleted, not downloaded
    assert len(m.server_uids("Archive")) == 2  # nothing uploaded or deleted there
    fault_proxy.arm(None)
    m.sync()
    snap = m.assert_mirrored()
    assert sum(snap["Archive"].values()) == 3 and set(snap["Archive"].values()) == {1}
    m.close()


_BODY_LITERAL = re.compile(rb" BODY\[\] \{\d+\}\r\n.*\)\r\n\Z", re.DOTALL)


def _answer_of_m2(change: Any) -> Any:
    """A rewrite of the FETCH answer that carries message m2's body."""

    def rewrite(response: bytes) -> bytes:
        if b" FETCH (" in response and b"<m2@example.org>" in response:
            return change(response)
        return response

    return rewrite


def _listing_row(n: int, change: Any) -> Any:
    """A rewrite of the listing's row of message sequence number `n`."""
    row = re.compile(rb"\* %d FETCH \(UID \d+ FLAGS \([^)]*\) RFC822\.SIZE \d+\)\r\n\Z" % n)

    def rewrite(response: bytes) -> bytes:
        return change(response) if row.match(response) else response

    return rewrite


@pytest.mark.parametrize(
    ("rewrite", "words"),
    [
        (_answer_of_m2(lambda r: _BODY_LITERAL.sub(b")\r\n", r)), "without its body"),
        (_answer_of_m2(lambda r: re.sub(rb"UID \d+", b"UID 99", r)), "not asked for"),
        (_listing_row(2, lambda r: re.sub(rb"UID \d+", b"UID 1", r)), "listed for two messages"),
        (
            _listing_row(2, lambda r: re.sub(rb"FLAGS \([^)]*\)", b"FLAGS NIL", r)),
            "is not a list",
        ),
    ],
    ids=["no-body", "other-uid", "same-uid-twice", "flags-not-a-list"],
)
def test_a_misanswered_message_is_a_clear_failure_of_its_folder(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path, rewrite: Any, words: str
) -> None:
    """Before: each was skipped without a word (exit 0), or read as "no flags". Now
    the folder fails with one line naming it (exit 1), what came right is stored,
    nothing wrong is, and a run against a sane server completes the folder."""
    m = proxied_mirror(account, fault_proxy, tmp_path)
    m.client.create_folder("Other")
    m.client.append("Other", message("o"))
    for n in (1, 2, 3):
        m.client.append("INBOX", message(f"m{n}"), flags=[b"\\Seen"])
    fault_proxy.arm(None, rewrite)
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "INBOX" in line and words in line and "internal error" not in line, line
    server = m.server()
    local = m.local()
    assert local["Other"] == server["Other"]  # the other folder synced
    assert not local.get("INBOX", Counter()) - server["INBOX"]  # nothing wrong stored
    fault_proxy.arm(None)
    m.sync()
    snap = m.assert_mirrored()
    assert sum(snap["INBOX"].values()) == 3 and set(snap["INBOX"].values()) == {1}
    m.close()


def test_two_server_folders_with_one_local_name_are_neither_synced(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """'a/b' under delimiter '/' and 'a.b' under '.' (another namespace) both map
    to the folder a/b: syncing either would mix them up, so that name fails with one
    line naming both, the local copy is kept, and the other folders sync."""
    m = proxied_mirror(account, fault_proxy, tmp_path)
    m.client.create_folder("a/b")
    m.client.append("a/b", message("ab"), flags=[b"\\Seen"])
    m.sync()
    m.client.append("INBOX", message("i"))
    m.client.append("a/b", message("ab2"))
    fault_proxy.arm(
        None,
        _with_listed(
            b'* LIST (\\HasNoChildren) "." a.b\r\n'
            b"* STATUS a.b (MESSAGES 1 UIDNEXT 2 UIDVALIDITY 5 HIGHESTMODSEQ 1)\r\n"
        ),
    )
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "'a/b'" in line and "'a.b'" in line, line
    assert sum(m.local()["INBOX"].values()) == 1
    assert sum(m.local()["a/b"].values()) == 1  # kept, and not mixed with a.b
    fault_proxy.arm(None)
    m.sync()
    assert sum(m.assert_mirrored()["a/b"].values()) == 2
    m.close()


def test_a_literal_far_larger_than_the_message_is_refused_unread(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A 140-byte message answered as ``BODY[] {2147483648}`` followed by 20 MB: the
    announced size is checked against RFC822.SIZE before anything is read (memory
    followed the announcement). The connection must go (the rest of the answer
    cannot be skipped), but only INBOX fails, in one line (exit 1): the store logs in
    again and the folders synced before and after it are synced. A run against a
    sane server completes INBOX."""
    m = proxied_mirror(account, fault_proxy, tmp_path)
    for name in ("Aa", "Zz"):  # synced after and before INBOX (held folders go last first)
        m.client.create_folder(name)
        m.client.append(name, message(name), flags=[b"\\Seen"])
    m.client.append("INBOX", message("m1"), flags=[b"\\Seen"])
    m.client.append("INBOX", message("m2"), flags=[b"\\Seen"])

    def huge(response: bytes) -> bytes:
        head, _, rest = response.partition(b"\r\n")
        return re.sub(rb"\{\d+\}\Z", b"{2147483648}", head) + b"\r\n" + rest + b"x" * 20_000_000

    fault_proxy.arm(None, _answer_of_m2(huge))
    started = time.monotonic()
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "announced 2147483648 bytes" in line and "INBOX" in line, line
    assert "new connection" in line, line
    assert time.monotonic() - started < TIMEOUT  # refused, not waited for
    # the run logged in again, and fetched over the new connection
    used = list(zip(fault_proxy.commands, fault_proxy.command_conn, strict=True))
    again = max(c for cmd, c in used if cmd == "LOGIN")
    assert again > min(c for cmd, c in used if cmd == "UID FETCH"), used
    assert ("UID FETCH", again) in used, used
    local, server = m.local(), m.server()
    assert local["Aa"] == server["Aa"] and local["Zz"] == server["Zz"]
    assert sum(local["Aa"].values()) == 1 and sum(local["Zz"].values()) == 1
    assert not local.get("INBOX", Counter()) - server["INBOX"]  # nothing wrong stored
    fault_proxy.arm(None)
    m.sync()
    assert sum(m.assert_mirrored()["INBOX"].values()) == 2
    m.close()


def test_a_literal_refused_while_moves_are_looked_for_fails_that_folder_alone(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Another client moved m2 INBOX -> Work; looking for it among Work's new
    messages, the server announces its Message-ID field as a 2 GB literal. Work
    fails alone (exit 1), the store logs in again and the other folders sync; a run
    against a sane server ends with m2 in Work on both sides, once."""
    m = proxied_mirror(account, fault_proxy, tmp_path)
    c = m.client
    for name in ("Work", "Zz"):
        c.create_folder(name)
    for n in (1, 2):
        c.append("INBOX", message(f"m{n}"), flags=[b"\\Seen"])
    m.sync()
    c.select_folder("INBOX")
    (uid,) = c.search(["HEADER", "Message-ID", "<m2@example.org>"])
    c.move([uid], "Work")
    c.append("Zz", message("z"), flags=[b"\\Seen"])

    def huge(response: bytes) -> bytes:
        head, _, rest = response.partition(b"\r\n")
        return re.sub(rb"\{\d+\}\Z", b"{2147483648}", head) + b"\r\n" + rest + b"x" * 20_000_000

    fault_proxy.arm(None, _answer_of_m2(huge))
    r = m.run("sync")
    assert r.status == 1, r
    (line,) = r.err.strip().splitlines()
    assert "announced 2147483648 bytes" in line and "'Work'" in line, line
    assert sum(m.local()["Zz"].values()) == 1  # the others went on
    fault_proxy.arm(None)
    m.sync()
    snap = m.assert_mirrored()
    assert sum(snap["Work"].values()) == 1 and sum(snap["INBOX"].values()) == 1
    m.close()


def test_a_refused_literal_in_an_account_wide_answer_ends_the_run(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """A folder name announced as a 2 MB literal in the LIST answer: no folder can
    fail alone there, so the run ends in one line (exit 3), as a lost connection
    does, and changes nothing."""
    m = proxied_mirror(account, fault_proxy, tmp_path)
    m.client.append("INBOX", message("i"), flags=[b"\\Seen"])
    fault_proxy.arm(
        None,
        _with_listed(b'* LIST (\\HasNoChildren) "/" {2000000}\r\n' + b"x" * 2_000_000 + b"\r\n"),
    )
    r = m.run("sync")
    assert r.status == 3, r
    (line,) = r.err.strip().splitlines()
    assert "announced 2000000 bytes" in line, line
    assert not sum(m.local().get("INBOX", Counter()).values())
    fault_proxy.arm(None)
    m.sync()
    assert sum(m.assert_mirrored()["INBOX"].values()) == 1
    m.close()


def test_a_trickling_server_cannot_hold_a_run_past_its_deadline(
    account: Any, fault_proxy: FaultProxy, tmp_path: Path
) -> None:
    """Bodies answered 5 bytes every 50 ms: each read comes within the timeout, so
    before, the fetch of two 2 KB messages took 40 s; now the command's deadline
    (the timeout, plus what its bytes are worth at 16 KiB/s) ends it, exit 3."""
    m = proxied_mirror(account, fault_proxy, tmp_path, timeout=2)
    for n in (1, 2):
        m.client.append("INBOX", message(n, body="y" * 2000), flags=[b"\\Seen"])
    fault_proxy.arm(None, trickle=b"BODY.PEEK[]")
    started = time.monotonic()
    r = m.run("sync")
    took = time.monotonic() - started
    assert r.status == 3, r
    (line,) = r.err.strip().splitlines()
    assert "did not finish fetch 'INBOX' in time" in line, line
    assert took < 6, took
    fault_proxy.arm(None)
    m.sync()
    assert sum(m.assert_mirrored()["INBOX"].values()) == 2
    m.close()
