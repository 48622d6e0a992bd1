"""`mirrorsync init`: write a first configuration file, then check it.

The values come from the flags (for scripts) or, on a terminal, from a few questions
for those not given. A known provider (by `--provider` or the address's domain)
fills in the server. The file is the one a user would write by hand: commented, one
account, mode 0600; `mirrorsync sample-config` shows every other option. The
password itself is never asked for or written: the file names a command or an
environment variable that gives it.
"""

from __future__ import annotations

import os

from mirrorsync.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from mirrorsync.environment import Environment


# provider -> what it needs beyond the password, said in the file. The servers of the
# providers with a preset come from `mirrorsync.providers` (read only when init runs:
# this module is imported with the parser, on every full run); OTHER_HOSTS has the rest.
PROVIDERS = {
    "gmail": "Gmail needs an app password, or OAuth2: see README, Gmail and Microsoft 365.",
    "fastmail": "Fastmail needs an app password.",
    "outlook": "Microsoft 365 needs OAuth2: see README, Gmail and Microsoft 365.",
    "icloud": "iCloud needs an app-specific password.",
    "yahoo": "Yahoo needs an app password.",
    "posteo": "",
    "mailbox.org": "",
}
OTHER_HOSTS = {"posteo": "posteo.de", "mailbox.org": "imap.mailbox.org"}

# address domains that name a provider
_DOMAINS = {
    "gmail.com": "gmail",
    "googlemail.com": "gmail",
    "fastmail.com": "fastmail",
    "fastmail.fm": "fastmail",
    "outlook.com": "outlook",
    "hotmail.com": "outlook",
    "live.com": "outlook",
    "icloud.com": "icloud",
    "me.com": "icloud",
    "yahoo.com": "yahoo",
    "posteo.de": "posteo",
    "posteo.net": "posteo",
    "mailbox.org": "mailbox.org",
}


def provider_of(address: str) -> str | None:
    return _DOMAINS.get(address.rpartition("@")[2].lower())


def _preset(name: str | None) -> tuple[str | None, str]:
    """The server and the note for provider `name` (None, "" for none known)."""
    from mirrorsync.providers import PRESETS

    if name is None or name not in PROVIDERS:
        return None, ""
    host = PRESETS[name].remote["host"] if name in PRESETS else OTHER_HOSTS[name]
    return str(host), PROVIDERS[name]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--account", metavar="NAME", help="the account's name (default: mail)")
    p.add_argument("--email", metavar="ADDRESS", help="your address: the default login")
    p.add_argument(
        "--provider", choices=sorted(PROVIDERS), help="fill in the server (default: by address)"
    )
    p.add_argument("--host", help="the IMAP server")
    p.add_argument("--port", type=int, help="default: 993 with imaps, 143 otherwise")
    p.add_argument("--tls", choices=("imaps", "starttls", "none"), help="default: imaps")
    p.add_argument("--username", help="the login (default: the address)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-command", metavar="CMD", help="prints the password, e.g. 'pass show mail'"
    )
    secret.add_argument("--password-env", metavar="VAR", help="a variable holding it")
    p.add_argument("--path", metavar="DIR", help="the local Maildir (default: ~/Mail/NAME)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--no-check", action="store_true", help="do not log in to check it")


def run(args: argparse.Namespace, env: Environment, path: str) -> None:
    """Write the file at `path` (the caller checks it)."""
    if os.path.exists(path) and not args.force:
        raise UsageError(
            f"{path} already exists", "edit it, or give --force to replace it with a new one"
        )
    ask = _asker(env)
    account = args.account or ask("Account name", "mail") or "mail"
    email = args.email or ask("Your address (the login)", None)
    preset_name = args.provider or provider_of(email or "")
    preset_host, note = _preset(preset_name)
    host = args.host or preset_host or ask("IMAP server", None)
    tls = args.tls or "imaps"
    username = args.username or email or ask("Login name", None)
    password_command, password_env = args.password_command, args.password_env
    if not password_command and not password_env:
        password_command = ask("A command that prints the password", f"pass show mail/{account}")
    maildir = args.path or f"~/Mail/{account}"
    missing = [
        flag for flag, value in (("--host", host), ("--username or --email", username)) if not value
    ]
    if missing:
        raise UsageError(f"init: give {' and '.join(missing)}", "see 'mirrorsync init --help'")
    assert host is not None and username is not None
    text = render(
        account=account,
        host=host,
        port=args.port,
        tls=tls,
        username=username,
        password_command=password_command,
        password_env=password_env,
        path=maildir,
        note=note,
    )
    from mirrorsync.xdg import private_makedirs

    private_makedirs(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    from pathlib import Path

    from mirrorsync.config import load

    try:
        load(Path(path), env.environ)  # a bad value given (an account name) is said now
    except Exception:
        os.unlink(path)
        raise
    env.stdout.write(f"wrote {path}\n")


def render(
    *,
    account: str,
    host: str,
    port: int | None,
    tls: str,
    username: str,
    password_command: str | None,
    password_env: str | None,
    path: str,
    note: str = "",
) -> str:
    """The file's text. Strings are written as JSON strings, which YAML reads as
    written whatever they hold."""
    import json

    q = json.dumps
    secret = (
        f"password_command: {q(password_command)}   # prints the password"
        if password_command
        else f"password_env: {q(password_env)}   # the variable that holds the password"
    )
    lines = [
        "# Written by `mirrorsync init`. `mirrorsync sample-config` shows every option;",
        "# `mirrorsync check-config` checks this file and logs in.",
        "accounts:",
        f"  {account}:",
        "    remote:",
        f"      host: {q(host)}",
        *([f"      port: {port}"] if port else []),
        f"      tls: {tls}                 # imaps, starttls, or none (loopback only)",
        f"      username: {q(username)}",
        f"      {secret}",
        *([f"      # {note}"] if note else []),
        "    local:",
        f"      path: {q(path)}",
        "      layout: nested             # or maildir++",
        "    # folders:",
        '    #   exclude: ["Junk", "Trash/*"]',
        "    # hooks:",
        '    #   new_mail: "notmuch new --quiet"',
    ]
    return "\n".join(lines) + "\n"


def _asker(env: Environment) -> Callable[[str, str | None], str | None]:
    """Asks on the terminal; without one, every answer is the default."""
    from mirrorsync.progress import is_terminal

    interactive = is_terminal(env.stdin) and is_terminal(env.stderr)

    def ask(question: str, default: str | None) -> str | None:
        if not interactive:
            return default
        env.stderr.write(f"{question}" + (f" [{default}]" if default else "") + ": ")
        env.stderr.flush()
        answer = env.stdin.readline().strip()
        return answer or default

    return ask
