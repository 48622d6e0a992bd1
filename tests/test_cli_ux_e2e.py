"""What a terminal-mail user meets on the command line (issue 14): quiet runs,
one-line errors for bad local paths, global options after the command, wording,
the JSON documents, and the progress shown while work goes on."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from mirrorsync import cli
from mirrorsync.environment import Environment
from mirrorsync.progress import LINE_EVERY, ProgressReporter
from tests.conftest import SettleClock
from tests.harness import Mirror, QuickRuns, message


def _edit(m: Mirror, **remote: Any) -> None:
    doc = yaml.safe_load(m.config.read_text())
    doc["accounts"]["test"]["remote"].update(remote)
    m.config.write_text(yaml.safe_dump(doc))


@pytest.fixture
def synced(account: Any, tmp_path: Path) -> Mirror:
    m = Mirror(account, tmp_path / "m")
    for name in ("A", "B"):
        m.client.create_folder(name)
    m.client.append("INBOX", message(1))
    m.sync()
    return m


# -- quiet, and options after the command


def test_quiet_prints_nothing_on_the_full_path_and_the_quick_path(
    synced: Mirror, settle_clock: SettleClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = QuickRuns(monkeypatch)
    synced.client.append("A", message(2))
    r = synced.run("-q", "sync")
    assert (r.status, r.out, r.err) == (0, "", "")
    assert synced.local()["A"]  # it did sync
    settle_clock.advance()
    assert synced.run("sync", "-q").out == ""  # records the settled stamps
    before = runs.finished
    r = synced.run("sync", "-q")  # nothing to do: the quick check finishes it
    assert (r.status, r.out, r.err) == (0, "", "")
    assert runs.finished == before + 1


def test_global_options_are_taken_after_the_command(synced: Mirror) -> None:
    r = synced.run("sync", "-q")
    assert (r.status, r.out) == (0, "")
    r = cli.main(["sync", "-c", str(synced.config), "--quiet"], Environment(io.StringIO()))
    assert r == 0
    args = cli.build_parser().parse_args(["-v", "-c", "x", "status", "-v"])
    assert (args.config, args.verbose, args.quiet) == ("x", 1, False)
    args = cli.build_parser().parse_args(["-c", "x", "-v", "status"])
    assert (args.config, args.verbose) == ("x", 1)  # not undone by the command's defaults


def test_an_unknown_folder_is_a_usage_error(synced: Mirror) -> None:
    r = synced.run("sync", "--folder", "NoSuch")
    assert r.status == 2 and r.out == ""
    assert r.err.count("\n") == 1 and "no folder 'NoSuch'" in r.err
    assert synced.run("sync", "--folder", "A").status == 0


# -- bad local paths: one line, exit 2


def _one_line(r: Any, *words: str) -> None:
    assert r.status == 2, r
    assert r.err.count("\n") == 1 and "internal error" not in r.err, r.err
    for w in words:
        assert w in r.err, r.err


def test_bad_local_paths_are_configuration_errors(account: Any, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    under = Mirror(account, tmp_path / "a", local={"path": str(a_file / "Mail")})
    _one_line(under.run("sync"), "local.path", f"{a_file} is a file")
    is_file = Mirror(account, tmp_path / "b", local={"path": str(a_file)})
    _one_line(is_file.run("sync"), "local.path", "is a file, not a directory")
    state = Mirror(account, tmp_path / "c", state_dir=str(a_file / "state"))
    _one_line(state.run("sync"), "state_dir", f"{a_file} is a file")
    _one_line(state.run("daemon"), "state_dir", f"{a_file} is a file")
    assert a_file.read_text() == "x"


def test_an_unwritable_parent_is_a_configuration_error(
    account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the tests run as root, whom no mode stops: the check is told what a user's is
    parent = tmp_path / "ro"
    parent.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) != str(parent) and real(p, mode))
    m = Mirror(account, tmp_path / "a", local={"path": str(parent / "Mail")})
    _one_line(m.run("sync"), "local.path", f"no permission to write in {parent}")
    m = Mirror(account, tmp_path / "b", state_dir=str(parent / "state"))
    _one_line(m.run("sync"), "state_dir", f"no permission to write in {parent}")
    assert not list(parent.iterdir())


def test_an_unwritable_maildir_root_fails_each_folder_once(
    account: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Mirror(account, tmp_path / "m")
    for name in ("A", "B"):
        m.client.create_folder(name)
    m.root.mkdir()
    real = os.mkdir

    def refused(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).startswith(str(m.root)):
            raise PermissionError(13, "Permission denied", str(path))
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)
    r = m.run("sync")
    assert r.status == 1
    assert r.out.startswith("test: 3 folders, no changes, 3 folders FAILED")
    lines = r.err.splitlines()
    assert len(lines) == 3 and all("permission denied creating folder" in x for x in lines)
    assert {x.split("folder ")[1].split(" ")[0] for x in lines} == {
        str(m.root / n) for n in ("A", "B", "INBOX")
    }


# -- wording


def test_counts_are_worded_and_check_config_counts_as_sync(account: Any, tmp_path: Path) -> None:
    m = Mirror(account, tmp_path / "m", folders={"exclude": ["Junk", "Junk/*"]})
    for name in ("Junk", "Junk/Old", "Work"):
        m.client.create_folder(name)
    r = m.sync()
    assert r.out.splitlines()[-1].startswith("test: 2 folders, no changes")
    r = m.run("check-config")
    assert r.status == 0
    assert "configuration is valid (1 account)" in r.out
    assert "; 2 folders to sync (of 4 on the server)" in r.out
    r = m.run("sync", "--folder", "Work")
    assert r.out.startswith("test: 1 folder, no changes")


def test_a_missing_ca_file_is_a_configuration_error(synced: Mirror) -> None:
    _edit(synced, tls="starttls", ca_file=str(synced.root.parent / "nope.pem"))
    for command in ("check-config", "sync"):
        r = synced.run(command)
        assert r.status == 2 and r.out == "", r
        assert "remote.ca_file: no such file" in r.err and r.err.count("\n") == 1


def test_status_says_when_the_maildir_root_is_gone(synced: Mirror) -> None:
    shutil.rmtree(synced.root)
    r = synced.run("status")
    assert r.status == 1 and r.out == ""
    assert "Maildir" in r.err and "is gone" in r.err and "pending" not in r.err


def test_sample_config_is_shipped_and_valid(tmp_path: Path) -> None:
    out = io.StringIO()
    assert cli.main(["sample-config"], Environment(out, io.StringIO())) == 0
    path = tmp_path / "config.yaml"
    path.write_text(out.getvalue())
    from mirrorsync.config import load

    assert load(path, {"HOME": str(tmp_path)}).accounts


# -- JSON


def test_sync_json_is_one_document(synced: Mirror) -> None:
    synced.client.append("A", message(2))
    synced.client.append("A", message(3))
    r = synced.run("sync", "--json")
    assert r.status == 0, r
    doc = json.loads(r.out)
    assert doc["version"] == 1 and doc["status"] == 0
    acct = doc["accounts"]["test"]
    assert acct["status"] == 0 and acct["error"] is None and acct["seconds"] >= 0
    assert set(acct["folders"]) == {"INBOX", "A", "B"}
    a = acct["folders"]["A"]
    assert a["done"] == {"downloaded": 2} and a["error"] is None and a["seconds"] > 0
    assert a["server"]["messages"] == 2
    assert acct["folders"]["B"]["done"] == {}


def test_sync_json_names_failures_and_keeps_the_exit_status(synced: Mirror) -> None:
    _edit(synced, password="wrong")
    r = synced.run("sync", "--json")
    assert r.status == 3
    doc = json.loads(r.out)
    assert doc["status"] == 3
    assert doc["accounts"]["test"]["status"] == 3
    assert "login" in doc["accounts"]["test"]["error"]


def test_status_json(synced: Mirror) -> None:
    (synced.files("INBOX")[0]).unlink()
    r = synced.run("status", "--json")
    assert r.status == 0
    doc = json.loads(r.out)
    inbox = doc["accounts"]["test"]["folders"]["INBOX"]
    assert inbox["local"] == 0 and inbox["server_at_last_sync"] == 1 and inbox["deleted"] == 1


# -- progress


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_is_a_line_every_few_seconds() -> None:
    out, clock = io.StringIO(), _Clock()
    p = ProgressReporter("acct", out, clock, terminal=False)
    p.folder("INBOX")
    p.begin("download", 4, 4 * 1_048_576)
    p.advance(1, 1_048_576)
    assert out.getvalue() == ""  # quick work says nothing
    clock.now += LINE_EVERY
    p.advance(1, 1_048_576)
    clock.now += 1
    p.advance(1, 1_048_576)  # too soon for another line
    p.folder_done("INBOX")
    p.close()
    assert out.getvalue() == (
        "mirrorsync: [acct] INBOX: download 2/4 messages, 2.0 MB/4.0 MB, 0.4 MB/s, ETA 0:05\n"
    )
    assert p.seconds == {"INBOX": LINE_EVERY + 1}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_live_bar_for_long_work_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mirrorsync import progress

    monkeypatch.setattr(progress, "BAR_EVERY", 0.0)  # every update drawn
    out = _Tty()
    p = ProgressReporter("acct", out)
    p.folder("Small")
    p.begin("download", 3, 3000)
    p.advance(3, 3000)
    p.folder_done("Small")
    assert out.getvalue() == ""
    p.folder("Big")
    p.begin("download", 500, 500 * 1024)
    for _ in range(500):
        p.advance(1, 1024)
    p.folder_done("Big")
    shown = out.getvalue()
    assert "acct Big: download" in shown and "500/500 messages" in shown
    assert "500k/500k" in shown


def test_without_tqdm_a_terminal_gets_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    out, clock = _Tty(), _Clock()
    p = ProgressReporter("acct", out, clock)
    p.folder("INBOX")
    p.begin("upload", 1000, None)
    clock.now += LINE_EVERY
    p.advance(10, 1_048_576)
    assert out.getvalue().startswith("mirrorsync: [acct] INBOX: upload 10/1000 messages, 1.0 MB")


def test_a_long_sync_reports_progress(synced: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine feeds the reporter: off a terminal, a long download is a line."""
    from mirrorsync import progress

    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    for i in range(5):
        synced.client.append("B", message(f"b{i}"))
    r = synced.sync()
    assert "mirrorsync: [test] B: download 1/5 messages" in r.err
    assert "mirrorsync: [test] B: download 5/5 messages" in r.err


def test_the_demo_keeps_its_cache_in_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache holds the demo's password: it must go when the demo's files go."""
    import subprocess

    from devtools import demo

    seen: list[dict[str, str]] = []

    def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append(kwargs["env"])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(demo.subprocess, "run", run)
    demo.run_mirrorsync(tmp_path / "config.yaml", "sync")
    assert seen[0]["XDG_CACHE_HOME"] == str(tmp_path / "cache")


@pytest.mark.parametrize("bindir", [".local/bin", ".local/share/mirrorsync/venv/bin"])
def test_the_systemd_unit_finds_a_pipx_or_venv_install(tmp_path: Path, bindir: str) -> None:
    """The two installs README.md shows (pipx; a venv in ~/.local/share/mirrorsync)."""
    repo = Path(__file__).resolve().parent.parent
    unit = (repo / "contrib" / "mirrorsync.service").read_text()
    assert f"~/{bindir}" in (repo / "README.md").read_text()
    (exec_start,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    path = exec_start.split("PATH=", 1)[1].split()[0].replace("%h", str(tmp_path))
    command = tmp_path / bindir / "mirrorsync"
    command.parent.mkdir(parents=True)
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    assert shutil.which("mirrorsync", path=path) == str(command)
