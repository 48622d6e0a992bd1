"""Hooks (mirrorsync/hooks.py): run around each sync by `sync` and by the daemon,
told what changed, never seeing a secret, and never holding up or failing a sync."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync.config import load
from mirrorsync.errors import ConfigError
from tests.conftest import SettleClock
from tests.harness import Mirror, QuickRuns, message
from tests.test_daemon import FAST, DaemonProcess, run_daemon  # noqa: F401 (a fixture)


def _record(out: Path) -> str:
    """A hook that keeps its environment and its standard input."""
    return f"env > {shlex.quote(str(out))}.env; cat > {shlex.quote(str(out))}.json"


def _env(out: Path) -> dict[str, str]:
    text = Path(f"{out}.env").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _doc(out: Path) -> Any:
    return json.loads(Path(f"{out}.json").read_text())


def test_hooks_are_told_what_changed_and_see_no_secret(
    account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_IMAP_PW", account.password)
    monkeypatch.setenv("SOME_API_TOKEN", "t0ken")
    pre, post, new = tmp_path / "pre", tmp_path / "post", tmp_path / "new"
    hooks = {"pre_sync": _record(pre), "post_sync": _record(post), "new_mail": _record(new)}
    m = Mirror(account, tmp_path / "m", hooks=hooks)
    doc = yaml.safe_load(m.config.read_text())
    remote = doc["accounts"]["test"]["remote"]
    del remote["password"]
    remote["password_env"] = "MY_IMAP_PW"
    m.config.write_text(yaml.safe_dump(doc))
    m.client.create_folder("Lists/dev")
    m.client.append("INBOX", message(1))
    m.client.append("Lists/dev", message(2))
    m.client.append("Lists/dev", message(3))
    r = m.sync()
    assert r.err == ""
    for out in (pre, post, new):
        env = _env(out)
        assert "MY_IMAP_PW" not in env and "SOME_API_TOKEN" not in env
        assert account.password not in Path(f"{out}.env").read_text()
        assert account.password not in Path(f"{out}.json").read_text()
        assert env["MIRRORSYNC_ACCOUNT"] == "test"
    assert _env(pre)["MIRRORSYNC_HOOK"] == "pre_sync"
    assert _env(post)["MIRRORSYNC_NEW"] == "3" and _env(post)["MIRRORSYNC_STATUS"] == "0"
    folders = Path(f"{new}.env").read_text().split("MIRRORSYNC_NEW_FOLDERS=")[1]
    assert folders.startswith("1\tINBOX\n2\tLists/dev\n")
    got = _doc(post)
    assert got["hook"] == "post_sync" and got["status"] == 0
    assert got["new"] == {"INBOX": 1, "Lists/dev": 2}
    assert got["done"]["Lists/dev"] == {"downloaded": 2}
    assert got["failed"] == {} and got["error"] is None
    assert _doc(new)["hook"] == "new_mail"
    # nothing new: pre_sync and post_sync run, new_mail does not
    for out in (pre, post, new):
        Path(f"{out}.json").unlink()
    m.sync()
    assert Path(f"{pre}.json").exists() and Path(f"{post}.json").exists()
    assert not Path(f"{new}.json").exists()
    assert _doc(post)["new"] == {}


def test_a_failing_or_hanging_hook_is_reported_and_the_sync_goes_on(
    account: Any, tmp_path: Path
) -> None:
    hooks = {
        "pre_sync": "echo about to fail >&2; exit 7",
        "post_sync": "sleep 60",
        "timeout": 0.5,
    }
    m = Mirror(account, tmp_path / "m", hooks=hooks)
    m.client.append("INBOX", message(1))
    r = m.run("sync", "--json")
    assert r.status == 0
    assert m.local()["INBOX"]  # synced all the same
    lines = r.err.splitlines()
    assert len(lines) == 2, r.err
    assert "hook pre_sync failed: exited with status 7" in lines[0]
    assert lines[0].endswith(": about to fail")
    assert "hook post_sync failed: timed out after 0.5s" in lines[1]
    hooks_doc = json.loads(r.out)["accounts"]["test"]["hooks"]
    assert hooks_doc["pre_sync"].startswith("exited with status 7")
    assert hooks_doc["post_sync"].startswith("timed out")
    r = m.run("-q", "sync")  # a failed hook is an error: -q shows it
    assert r.out == "" and r.err.count("hook") == 2


def test_post_sync_is_told_when_the_account_failed(account: Any, tmp_path: Path) -> None:
    post = tmp_path / "post"
    m = Mirror(account, tmp_path / "m", hooks={"post_sync": _record(post)})
    doc = yaml.safe_load(m.config.read_text())
    doc["accounts"]["test"]["remote"]["password"] = "wrong"
    m.config.write_text(yaml.safe_dump(doc))
    assert m.run("sync").status == 3
    got = _doc(post)
    assert got["status"] == 3 and "login" in got["error"]


def test_hooks_that_run_every_time_keep_the_quick_check_away(
    account: Any, tmp_path: Path, settle_clock: SettleClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = QuickRuns(monkeypatch)
    post = tmp_path / "post"
    m = Mirror(account, tmp_path / "m", hooks={"post_sync": _record(post)})
    for _ in range(3):
        settle_clock.advance()
        Path(f"{post}.json").unlink(missing_ok=True)
        before = runs.finished
        m.sync()
        assert runs.finished == before and Path(f"{post}.json").exists()


def test_hook_settings_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    base = (
        "accounts:\n  a:\n    remote: {host: h, username: u, password: p}\n"
        "    local: {path: /tmp/x}\n"
    )
    path.write_text(base + "    hooks: {post_sync: 'notmuch new', timeout: 5}\n")
    hooks = load(path, {"HOME": str(tmp_path)}).accounts["a"].hooks
    assert (hooks.post_sync, hooks.timeout, hooks.pre_sync) == ("notmuch new", 5.0, None)
    path.write_text(base + "    hooks: {after_sync: x}\n")
    with pytest.raises(ConfigError, match="after_sync"):
        load(path, {"HOME": str(tmp_path)})
    path.write_text(base + "    hooks: {new_mail: ''}\n")
    with pytest.raises(ConfigError, match="must not be empty"):
        load(path, {"HOME": str(tmp_path)})


def test_the_daemon_runs_the_hooks(
    account: Any,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],  # noqa: F811
) -> None:
    new = tmp_path / "new"
    m = Mirror(account, tmp_path / "m", daemon=FAST, hooks={"new_mail": _record(new)})
    d = run_daemon(m)
    d.ready()
    assert not Path(f"{new}.json").exists()
    m.client.append("INBOX", message("pushed"))
    d.wait_for(lambda: Path(f"{new}.json").exists(), 10, "the new_mail hook")
    d.wait_for(lambda: Path(f"{new}.json").stat().st_size > 0, 10, "its input")
    assert _doc(new)["new"] == {"INBOX": 1}
    assert d.stop() == 0
