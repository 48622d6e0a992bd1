"""Throttling as Outlook does it, against a Dovecot with CONDSTORE, QRESYNC and
LIST-STATUS taken away (as Outlook has none of them), behind the fault proxy
(tests/faultproxy.py) that turns some answers into throttling ones: ``NO Request is
throttled. Suggested Backoff Time: N milliseconds``, or ``* BYE``. The run waits
(an injected sleep: the test never waits) and tries again, and gives up with one
clear line when the server keeps on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.devserver import Dovecot
from mirrorsync import throttle
from mirrorsync.sync.oracle import ENV as PLAN_ORACLE_ENV
from tests.faultproxy import FaultProxy, proxied_mirror
from tests.harness import message

NO_THROTTLED = b" NO Request is throttled. Suggested Backoff Time: 1500 milliseconds\r\n"


@pytest.fixture(scope="module")
def outlook_proxy(dovecot_uidplus: Dovecot) -> Iterator[FaultProxy]:
    p = FaultProxy(dovecot_uidplus.host, dovecot_uidplus.port)
    yield p
    p.close()


@pytest.fixture
def waited(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the runs made; the proxy's connections would take the plan
    oracle's faults too, so it is off here."""
    monkeypatch.delenv(PLAN_ORACLE_ENV, raising=False)
    waits: list[float] = []
    monkeypatch.setattr(throttle, "sleep", waits.append)
    return waits


def _throttling(proxy: FaultProxy, command: bytes, times: int, answer: bytes) -> Any:
    """A rewrite that answers the first `times` commands named `command` with
    `answer` (after their tag) instead of the server's answer."""
    done = [0]

    def rewrite(response: bytes) -> bytes:
        tag = response.split(b" ", 1)[0]
        line = proxy.tagged.get(tag, b"")
        if re.match(rb"\S+ " + command + rb" ", line) and done[0] < times:
            done[0] += 1
            return answer if answer.startswith(b"*") else tag + answer
        return response

    return rewrite


def _mirror(uidplus_account: Any, proxy: FaultProxy, tmp_path: Path) -> Any:
    m = proxied_mirror(uidplus_account, proxy, tmp_path)
    c = uidplus_account.client()
    c.create_folder("Work")
    c.append("INBOX", message(1))
    c.append("Work", message(2))
    c.logout()
    return m


def test_no_throttled_is_waited_out(
    uidplus_account: Any, outlook_proxy: FaultProxy, tmp_path: Path, waited: list[float]
) -> None:
    m = _mirror(uidplus_account, outlook_proxy, tmp_path)
    outlook_proxy.arm(None, _throttling(outlook_proxy, b"SELECT", 2, NO_THROTTLED))
    r = m.run("sync")
    assert r.status == 0, r
    assert waited == [1.5, 1.5]  # as the server suggested
    lines = r.err.strip().splitlines()
    assert len(lines) == 2, r.err
    assert all("is throttling this account" in x for x in lines)
    assert lines[0].endswith("; trying again in 1.5s"), lines[0]
    outlook_proxy.arm(None)
    m.assert_mirrored()
    assert m.sync().err == ""  # and the next run has nothing left to do twice


def test_bye_throttled_is_waited_out(
    uidplus_account: Any, outlook_proxy: FaultProxy, tmp_path: Path, waited: list[float]
) -> None:
    m = _mirror(uidplus_account, outlook_proxy, tmp_path)
    bye = b"* BYE Request is throttled, closing the connection\r\n"
    outlook_proxy.arm(None, _throttling(outlook_proxy, b"UID FETCH", 1, bye))
    r = m.run("sync")
    assert r.status == 0, r
    assert waited == [throttle.FIRST_WAIT]  # no suggestion: the first default wait
    outlook_proxy.arm(None)
    m.assert_mirrored()


def test_a_server_that_keeps_throttling_gets_one_clear_line(
    uidplus_account: Any, outlook_proxy: FaultProxy, tmp_path: Path, waited: list[float]
) -> None:
    m = _mirror(uidplus_account, outlook_proxy, tmp_path)
    outlook_proxy.arm(None, _throttling(outlook_proxy, b"SELECT", 1000, NO_THROTTLED))
    r = m.run("sync")
    assert r.status == 3, r
    lines = r.err.strip().splitlines()
    assert len(waited) == throttle.MAX_TRIES - 1 == len(lines) - 1
    assert lines[-1] == (
        f"mirrorsync: {outlook_proxy.host}:{outlook_proxy.port} is throttling this account "
        "(Request is throttled. Suggested Backoff Time: 1500 milliseconds; gave up after "
        f"{throttle.MAX_TRIES} tries and 7.5s of waiting); run again later; a smaller "
        "max_connections may help"
    )
    outlook_proxy.arm(None)
    m.sync()
    m.assert_mirrored()
