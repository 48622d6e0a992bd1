"""Completion scripts, the man page and `mirrorsync init`, all made from one parser."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mirrorsync import cli, shell
from mirrorsync.config import load
from mirrorsync.environment import Environment

REPO = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), Environment(out, err, {"HOME": "/nonexistent"}))
    return status, out.getvalue(), err.getvalue()


def _complete(script: str, line: str) -> list[str]:
    """What bash offers for `line` (completing its last word)."""
    words = line.split(" ")
    program = (
        script
        + f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        + '_mirrorsync; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    p = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return p.stdout.split()


def test_bash_completes_commands_options_and_choices() -> None:
    status, script, _ = _run("completion", "bash")
    assert status == 0
    assert _complete(script, "mirrorsync sy") == ["sync"]
    assert _complete(script, "mirrorsync -c cfg sync --dr") == ["--dry-run"]
    assert _complete(script, "mirrorsync sync -v --js") == ["--json"]
    assert _complete(script, "mirrorsync migrate --from mb") == ["mbsync"]
    assert _complete(script, "mirrorsync completion f") == ["fish"]
    assert "--older-than" in _complete(script, "mirrorsync archive --")
    assert _complete(script, "mirrorsync sync --folder ") == []  # a value: not an option


def test_zsh_and_fish_scripts_are_made_from_the_same_parser() -> None:
    status, zsh, _ = _run("completion", "zsh")
    assert status == 0 and zsh.startswith("#compdef mirrorsync\n") and "_mirrorsync()" in zsh
    status, fish, _ = _run("completion", "fish")
    assert status == 0
    assert "-a sync -d 'synchronize accounts once'" in fish
    assert "'__fish_seen_subcommand_from sync' -l dry-run" in fish
    assert "-l from -x -a 'mbsync offlineimap'" in fish
    if shutil.which("fish"):
        subprocess.run(["fish", "--no-execute"], input=fish, text=True, check=True)
    if shutil.which("zsh"):
        subprocess.run(["zsh", "-n"], input=zsh, text=True, check=True)


def test_the_man_page_is_made_from_the_parser_and_is_up_to_date() -> None:
    made = shell.manpage(cli.build_parser())
    assert (REPO / "man" / "mirrorsync.1").read_text() == made, "run: python -m mirrorsync.shell"
    for command in ("sync", "status", "init", "completion", "daemon", "migrate"):
        assert f'.SS "mirrorsync {command}' in made
    assert "\\-\\-dry\\-run" in made and "\\fB5\\fR" in made
    if shutil.which("groff"):
        p = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z"], input=made, capture_output=True, text=True
        )
        assert p.returncode == 0 and p.stderr == "", p.stderr


def test_the_man_page_is_installed_with_the_package() -> None:
    setup = (REPO / "setup.cfg").read_text()
    assert "share/man/man1 = man/mirrorsync.1" in setup


# -- init


def test_init_writes_a_commented_config_from_flags(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.yaml"
    status, out, err = _run(
        "-c", str(path), "init", "--email", "alice@gmail.com",
        "--password-command", "pass show mail/gmail", "--path", str(tmp_path / "Mail"),
        "--no-check",
    )  # fmt: skip
    assert (status, err) == (0, ""), err
    assert out == f"wrote {path}\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert "# Gmail needs an app password" in text
    account = load(path, {"HOME": str(tmp_path)}).accounts["mail"]
    assert (account.remote.host, account.remote.port, account.remote.tls) == (
        "imap.gmail.com",
        993,
        "imaps",
    )
    assert account.remote.username == "alice@gmail.com"
    assert account.remote.password_command == "pass show mail/gmail"
    assert account.local.path == tmp_path / "Mail"
    # never replaced by accident
    status, _, err = _run("-c", str(path), "init", "--host", "x", "--username", "y")
    assert status == 2 and "already exists" in err and "--force" in err


def test_init_without_a_server_says_what_to_give(tmp_path: Path) -> None:
    status, _, err = _run("-c", str(tmp_path / "c.yaml"), "init", "--email", "a@example.org")
    assert status == 2 and "--host" in err
    assert not (tmp_path / "c.yaml").exists()


def test_init_refuses_a_bad_account_name_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    status, _, err = _run(
        "-c", str(path), "init", "--account", "my mail", "--host", "h", "--username", "u",
        "--password-env", "PW", "--no-check",
    )  # fmt: skip
    assert status == 2 and "accounts.my mail" in err and "may only use letters" in err
    assert not path.exists()


def test_init_asks_on_a_terminal(tmp_path: Path) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    answers = Tty("work\nbob@example.org\nimap.example.org\n\n")
    out, err = io.StringIO(), Tty()
    env = Environment(out, err, {"HOME": str(tmp_path)}, stdin=answers)
    path = tmp_path / "c.yaml"
    assert cli.main(["-c", str(path), "init", "--no-check"], env) == 0
    assert "IMAP server: " in err.getvalue()
    account = load(path, {"HOME": str(tmp_path)}).accounts["work"]
    assert account.remote.host == "imap.example.org"
    assert account.remote.password_command == "pass show mail/work"  # the default taken


def test_init_then_checks_the_login(account: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    env = {"HOME": str(tmp_path), "PW": account.password}
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(
        [
            "-c", str(path), "init", "--host", account.host, "--port", str(account.port),
            "--tls", "none", "--username", account.user, "--password-env", "PW",
            "--path", str(tmp_path / "Mail"),
        ],
        Environment(out, err, env),
    )  # fmt: skip
    assert status == 0, err.getvalue()
    assert "configuration is valid (1 account)" in out.getvalue()
    assert f"as {account.user}; " in out.getvalue()
    assert os.path.exists(path)


@pytest.mark.parametrize("shell_name", ["bash", "zsh", "fish"])
def test_completion_is_a_usage_error_only_for_an_unknown_shell(shell_name: str) -> None:
    assert _run("completion", shell_name)[0] == 0
    assert _run("completion", "tcsh")[0] == 2
