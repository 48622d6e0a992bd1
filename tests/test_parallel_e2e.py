"""`sync` of several accounts runs `parallel_accounts` of them at once, and prints
their lines whole, in the configuration's order."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import Mirror, message


def _meet(mine: Path, other: Path, tries: int) -> str:
    """A pre_sync hook that leaves `mine` and waits (`tries` x 50 ms at most) for
    `other`: both succeed only if the two accounts' syncs run at the same time."""
    return (
        f"touch {shlex.quote(str(mine))}; i=0; "
        f"while [ ! -e {shlex.quote(str(other))} ]; do "
        f'i=$((i+1)); [ "$i" -gt {tries} ] && exit 1; sleep 0.05; done'
    )


def _two(make_account: Callable[[], Any], tmp_path: Path, parallel: int) -> Mirror:
    tries = 200 if parallel > 1 else 10  # long enough to meet; short to wait in vain
    one, two = Mirror(make_account(), tmp_path / "one"), Mirror(make_account(), tmp_path / "two")
    a, b = tmp_path / "a", tmp_path / "b"
    accounts = {}
    for name, m, hook in (("one", one, _meet(a, b, tries)), ("two", two, _meet(b, a, tries))):
        acct = yaml.safe_load(m.config.read_text())["accounts"]["test"]
        acct["hooks"] = {"pre_sync": hook, "timeout": 20}
        accounts[name] = acct
        m.client.append("INBOX", message(f"{name}-1"))
        m.client.create_folder("Only" + name)
    config = tmp_path / "both.yaml"
    doc = {"parallel_accounts": parallel, "accounts": accounts}
    config.write_text(yaml.safe_dump(doc, allow_unicode=True))
    one.config = config
    return one


def test_accounts_run_at_once_and_print_in_order(
    make_account: Callable[[], Any], tmp_path: Path
) -> None:
    m = _two(make_account, tmp_path, parallel=2)
    r = m.run("sync")
    assert r.status == 0 and r.err == "", r  # both hooks met: the syncs overlapped
    lines = [x for x in r.out.splitlines() if not x.startswith("[")]
    assert [x.split(":")[0] for x in lines] == ["one", "two"]
    assert all("2 folders, 1 downloaded" in x for x in lines), lines
    doc = json.loads(m.run("sync", "--json").out)
    assert list(doc["accounts"]) == ["one", "two"]
    assert set(doc["accounts"]["two"]["folders"]) == {"INBOX", "Onlytwo"}


def test_a_bound_of_one_syncs_one_account_at_a_time(
    make_account: Callable[[], Any], tmp_path: Path
) -> None:
    m = _two(make_account, tmp_path, parallel=1)
    r = m.run("sync")
    assert r.status == 0
    # the first account's hook waited in vain for the second: they did not overlap
    assert "[one] hook pre_sync failed: exited with status 1" in r.err


@pytest.mark.parametrize("bad", [0, 65, "many"])
def test_the_bound_is_checked(tmp_path: Path, bad: object) -> None:
    from mirrorsync.config import load
    from mirrorsync.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "parallel_accounts": bad,
                "accounts": {"a": {"remote": {"host": "h", "username": "u", "password": "p"},
                                   "local": {"path": "/tmp/x"}}},
            }
        )
    )  # fmt: skip
    with pytest.raises(ConfigError, match="parallel_accounts"):
        load(path, {"HOME": str(tmp_path)})
