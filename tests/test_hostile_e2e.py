"""A server that answers badly for one folder or one message: a real Dovecot behind
tests/faultproxy.py, which rewrites some of its answers. The folder (or message)
concerned fails with one clear line naming it, exit 1; the other folders sync; and
nothing wrong is stored."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.faultproxy import FaultProxy, proxied_mirror
from tests.harness import message

LONG = "/".join(f"{i:02d}" + "x" * 198 for i in range(25))  # 25 components of 200 bytes


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
    assert "File name too long" in line and LONG[:20] in line, line
    assert "internal error" not in r.err
    snap = m.local()
    assert sum(snap["Work"].values()) == 1 and sum(snap["INBOX"].values()) == 1
    r = m.run("sync")  # the next run says the same, and nothing else changes
    assert r.status == 1 and "File name too long" in r.err, r
    fault_proxy.arm(None)
    m.sync()
    m.assert_mirrored()
    m.close()
