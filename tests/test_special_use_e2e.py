"""SPECIAL-USE (RFC 6154) folders in `folders:` patterns and in `status`, against a
Dovecot that marks its "Spam" folder \\Junk and "Sent" \\Sent: a pattern "\\\\Junk"
means the server's junk folder whatever its name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools.devserver import Dovecot
from mirrorsync.config import load
from mirrorsync.errors import ConfigError
from mirrorsync.names import included
from tests.harness import Mirror, message


@pytest.fixture(scope="module")
def dovecot_special() -> Iterator[Dovecot]:
    server = Dovecot(special_use={"Spam": "\\Junk", "Sent": "\\Sent"}).start()
    yield server
    server.cleanup()


@pytest.fixture
def special_account(dovecot_special: Dovecot, account_on: Any) -> Any:
    return account_on(dovecot_special)


def test_exclude_the_junk_folder_by_its_use(special_account: Any, tmp_path: Path) -> None:
    m = Mirror(special_account, tmp_path, folders={"exclude": ["\\Junk"]})
    c = special_account.client()
    for name in ("Spam", "Sent", "Junk"):  # "Junk" is an ordinary folder here
        c.create_folder(name)
        c.append(name, message(name))
    c.append("INBOX", message("i"))
    c.logout()
    r = m.sync()
    local = m.local()
    assert set(local) == {"INBOX", "Sent", "Junk"}, local  # Spam is the \Junk one
    status = m.run("status")
    assert status.status == 0, status
    rows = {line.split()[0]: line for line in status.out.splitlines()[2:-1]}
    assert "(\\Sent)" in rows["Sent"] and "(" not in rows["Junk"], status.out
    assert "Spam" not in rows
    # the quick path stays out of it (it could not resolve the pattern): a run with
    # nothing to do still says nothing new
    assert m.sync().out.splitlines()[-1].startswith("test: 3 folders, no changes"), r


def test_special_use_patterns_in_the_filter() -> None:
    assert included(["*"], ["\\Junk"], "Spam", "\\Junk") is False
    assert included(["*"], ["\\junk"], "Spam", "\\Junk") is False  # any case
    assert included(["*"], ["\\Junk"], "Spam") is True  # not marked: not excluded
    assert included(["\\Sent", "INBOX"], [], "Gesendet", "\\Sent") is True
    assert included(["\\Sent", "INBOX"], [], "Work") is False


def test_an_unknown_special_use_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    account = {
        "remote": {"host": "h", "username": "u", "password": "p"},
        "local": {"path": str(tmp_path / "Mail")},
        "folders": {"exclude": ["\\Spam"]},
    }
    path.write_text(yaml.safe_dump({"accounts": {"a": account}}))
    with pytest.raises(ConfigError) as e:
        load(path, {"HOME": str(tmp_path)})
    assert "accounts.a.folders.exclude[0]: '\\\\Spam' is not a special-use attribute" in str(
        e.value
    )
    assert "\\Junk" in str(e.value)
