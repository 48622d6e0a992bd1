"""The command line: parse, run, and turn every typed error into one line.

`main` takes an `Environment` so the tests can run the CLI in-process with their own
streams and variables; nothing is read from the process at import time. Heavy
modules (imapclient, the engine) are imported only by the commands that need them,
so `--help` and config errors stay instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mirrorsync import __version__
from mirrorsync.errors import ExitStatus, MirrorsyncError, UsageError

if TYPE_CHECKING:
    from mirrorsync.config import AccountConfig, Config

log = logging.getLogger("mirrorsync")


@dataclass
class Environment:
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message}", f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mirrorsync", description="Keep a local Maildir a two-way mirror of IMAP.")
    p.add_argument("-c", "--config", metavar="FILE", help="config file (default: XDG location)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output; tracebacks")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    p.add_argument("--version", action="version", version=f"mirrorsync {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sync = sub.add_parser("sync", help="synchronize accounts once")
    sync.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    sync.add_argument(
        "--folder", action="append", default=[], metavar="NAME", help="only this folder"
    )
    sync.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sync.add_argument(
        "--force", action="store_true", help="allow deleting more than max_delete_share"
    )
    status = sub.add_parser("status", help="per-folder counts and pending local changes")
    status.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    sub.add_parser("check-config", help="validate the config and test each login")
    daemon = sub.add_parser(
        "daemon",
        help="keep running: sync on local changes and server push",
        description="Sync once, then whenever a folder changes locally or on the server, "
        "and fully every daemon.full_check_interval seconds. SIGUSR1 syncs now, SIGHUP "
        "reloads the configuration, SIGTERM or SIGINT stops after the sync under way.",
    )
    daemon.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    return p


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    env = env or Environment()
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(env, args.verbose, args.quiet)
        if not args.command:
            raise UsageError("no command given", "try 'mirrorsync sync' or 'mirrorsync --help'")
        command = {
            "sync": cmd_sync,
            "status": cmd_status,
            "check-config": cmd_check_config,
            "daemon": cmd_daemon,
        }
        return int(command[args.command](args, env))
    except MirrorsyncError as e:
        return int(report_error(e, env, verbose=bool(args and args.verbose)))
    except KeyboardInterrupt:
        env.stderr.write("mirrorsync: interrupted; state is saved, re-run to finish\n")
        return 130
    except Exception as e:  # a bug: still one line unless -v
        if args is not None and args.verbose:
            raise
        env.stderr.write(
            f"mirrorsync: internal error: {type(e).__name__}: {e} "
            "(re-run with -v for a traceback and report it)\n"
        )
        return int(ExitStatus.INTERNAL)


def report_error(e: MirrorsyncError, env: Environment, verbose: bool) -> ExitStatus:
    """The one place where a typed error becomes words and an exit status."""
    if verbose:
        import traceback

        traceback.print_exception(e, file=env.stderr)
    env.stderr.write(f"mirrorsync: {e}\n")
    return e.exit_status


def _setup_logging(env: Environment, verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else logging.INFO if verbose == 1 else logging.WARNING
    if verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(env.stderr)
    handler.setFormatter(logging.Formatter("mirrorsync: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)
    logging.getLogger("mirrorsync").setLevel(level)


def _load_config(args: argparse.Namespace, env: Environment) -> Config:
    from mirrorsync import config

    path = Path(args.config) if args.config else config.default_path(env.environ)
    return config.load(path, env.environ)


def _select_accounts(cfg: Config, names: Sequence[str]) -> list[AccountConfig]:
    if not names:
        return list(cfg.accounts.values())
    unknown = [n for n in names if n not in cfg.accounts]
    if unknown:
        raise UsageError(
            f"no account named {', '.join(unknown)} in {cfg.path}",
            f"known accounts: {', '.join(cfg.accounts) or 'none'}",
        )
    return [cfg.accounts[n] for n in names]


def cmd_sync(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from mirrorsync.model import canonical_folder

    cfg = _load_config(args, env)
    accounts = _select_accounts(cfg, args.accounts)
    folders = tuple(canonical_folder(f.strip("/")) for f in args.folder)
    from mirrorsync.engine import SyncOptions

    options = SyncOptions(dry_run=args.dry_run, force=args.force, folders=folders)
    worst = ExitStatus.OK
    for account in accounts:
        try:
            status = sync_account(account, options, env)
        except MirrorsyncError as e:
            status = report_error(e, env, verbose=bool(args.verbose))
        worst = max(worst, status)
    return worst


def sync_account(account: AccountConfig, options: object, env: Environment) -> ExitStatus:
    """Lock, connect, run, report. Returns the account's exit status."""
    from mirrorsync.config import resolve_password
    from mirrorsync.engine import AccountSync, SyncOptions
    from mirrorsync.imapstore import ImapStore
    from mirrorsync.maildir import Maildir
    from mirrorsync.state import AccountLock, State

    assert isinstance(options, SyncOptions)
    started = time.monotonic()
    with AccountLock(account.state_dir, account.name):
        password = resolve_password(account.remote, env.environ)
        remote = ImapStore.connect(account.remote, password)
        try:
            state = State.open(account.state_dir)
            try:
                maildir = Maildir(account.local.path, account.local.layout)

                def emit(line: str) -> None:
                    env.stdout.write(line + "\n")

                report = AccountSync(account, remote, maildir, state, options, emit).run()
            finally:
                state.close()
        finally:
            remote.close()
    for f in report.folders:
        if f.error:
            env.stderr.write(f"mirrorsync: [{account.name}] {f.summary()}\n")
        elif any(f.counts.values()) and not options.dry_run:
            log.info("[%s] %s", account.name, f.summary())
    totals: dict[str, int] = {}
    for f in report.folders:
        for k, n in f.counts.items():
            totals[k] = totals.get(k, 0) + n
    if not options.dry_run:
        done = ", ".join(f"{n} {k}" for k, n in sorted(totals.items()) if n) or "no changes"
        failed = f", {len(report.failed)} folders FAILED" if report.failed else ""
        env.stdout.write(
            f"{account.name}: {len(report.folders)} folders, {done}{failed} "
            f"({time.monotonic() - started:.1f}s)\n"
        )
    return ExitStatus.PARTIAL if report.failed else ExitStatus.OK


def cmd_status(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from mirrorsync.status import account_status

    cfg = _load_config(args, env)
    for account in _select_accounts(cfg, args.accounts):
        env.stdout.write(account_status(account))
    return ExitStatus.OK


def cmd_check_config(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from mirrorsync.config import resolve_password
    from mirrorsync.imapstore import ImapStore

    cfg = _load_config(args, env)
    env.stdout.write(f"{cfg.path}: configuration is valid ({len(cfg.accounts)} accounts)\n")
    worst = ExitStatus.OK
    for account in cfg.accounts.values():
        try:
            remote = ImapStore.connect(
                account.remote, resolve_password(account.remote, env.environ)
            )
            try:
                n = len(remote.list_folders())
            finally:
                remote.close()
            env.stdout.write(
                f"{account.name}: logged in to {account.remote.host}:{account.remote.port} "
                f"as {account.remote.username}; {n} folders\n"
            )
        except MirrorsyncError as e:
            worst = max(worst, report_error(e, env, verbose=bool(args.verbose)))
    return worst


def cmd_daemon(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Load and check everything up front (exit 2 on a bad config, 3 when the first
    login fails), then run until a signal stops it; see `mirrorsync.daemon`."""
    from mirrorsync import daemon

    accounts = _select_accounts(_load_config(args, env), args.accounts)

    def reload_accounts() -> list[AccountConfig]:
        return _select_accounts(_load_config(args, env), args.accounts)

    return daemon.run(
        accounts,
        env,
        quiet=bool(args.quiet),
        verbose=bool(args.verbose),
        reload_accounts=reload_accounts,
    )


if __name__ == "__main__":
    sys.exit(main())
