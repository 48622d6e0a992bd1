"""The command line: parse, run, and turn every typed error into one line.

`main` takes an `Environment` so the tests can run the CLI in-process with their own
streams and variables; nothing is read from the process at import time. Heavy
modules (imapclient, the engine) are imported only by the commands that need them,
so `--help` and config errors stay instant.

A `sync` that finds nothing to do is the common case (cron, a mail reader's hook),
and most of its time used to go to imports. So the `mirrorsync` command starts in
`mirrorsync.quick.main`, which decides whether the run is provably a no-op before
this module (and `errors`, whose enum alone costs 4 ms) is imported; `main` here
asks the same question for callers that start here (tests, mostly). Argparse,
logging, dataclasses, pathlib and typing wait for the full path.
"""

from __future__ import annotations

import os
import sys
import time

from mirrorsync import __version__
from mirrorsync.dirstamp import settle_now
from mirrorsync.environment import Environment
from mirrorsync.errors import ExitStatus, MirrorsyncError, UsageError

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence
    from contextlib import AbstractContextManager

    from mirrorsync.archive import ArchiveReport
    from mirrorsync.config import AccountConfig, ArchiveRule, Config
    from mirrorsync.imapstore import ImapStore
    from mirrorsync.maildir import Maildir
    from mirrorsync.state import State


class Session:
    """What one account's run works with (see `account_session`)."""

    __slots__ = ("maildir", "remote", "state")

    def __init__(self, remote: ImapStore, state: State, maildir: Maildir) -> None:
        self.remote = remote
        self.state = state
        self.maildir = maildir


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"{message}", f"see '{self.prog} --help'")

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
        "--verify",
        action="store_true",
        help="list every folder on both sides and compare with the state (finds drift)",
    )
    sync.add_argument(
        "--force", action="store_true", help="allow deleting more than max_delete_share"
    )
    sync.add_argument(
        "--archive",
        action="store_true",
        help="then apply the account's archive: rules (see 'mirrorsync archive')",
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
    archive = sub.add_parser(
        "archive",
        help="free server space: move mail into local-only folders",
        description="Move the server messages a rule selects into a local-only folder "
        "(local.local_only) and expunge them from the server. The rule is given with "
        "--folder and at least one of --older-than, --larger-than; without --folder the "
        "account's archive: rules apply. Every message is verified against the "
        "server's bytes before its server copy goes; an interrupted run is finished by "
        "the next one.",
    )
    archive.add_argument("account", nargs="?", metavar="ACCOUNT", help="default: every account")
    _add_rule_options(archive)
    archive.add_argument(
        "--dry-run", action="store_true", help="print what would be archived, change nothing"
    )
    migrate = sub.add_parser(
        "migrate",
        help="take over a Maildir from mbsync or offlineimap, with its state",
        description="Read the state mbsync or offlineimap left (which server UID each "
        "file is, and the flags at its last run), check it against the server, and "
        "write mirrorsync's state from it, so that the next sync applies exactly what "
        "changed since that tool's last run. Folder directories the tool named in "
        "modified UTF-7 or its own layout are renamed where mirrorsync keeps them. "
        "Prints the plan and changes nothing without --yes; the tool's own files are "
        "never changed.",
    )
    migrate.add_argument("account", metavar="ACCOUNT")
    migrate.add_argument(
        "--from", dest="tool", required=True, choices=("mbsync", "offlineimap"), help="the tool"
    )
    migrate.add_argument(
        "--state",
        metavar="PATH",
        help="mbsync's SyncState directory (default: .mbsyncstate in each folder, else "
        "~/.mbsync/); offlineimap's metadata directory (default: ~/.offlineimap)",
    )
    confirm = migrate.add_mutually_exclusive_group()
    confirm.add_argument("--yes", action="store_true", help="rename and write the state")
    confirm.add_argument(
        "--dry-run", action="store_true", help="print the plan, change nothing (the default)"
    )
    migrate.add_argument(
        "--force", action="store_true", help="replace a state mirrorsync already has"
    )
    quota = sub.add_parser(
        "quota",
        help="server quota, folder sizes, and what archiving would free",
        description="Show the server's quota, every folder's message count and size "
        "(largest first) and how much the archive rules (--folder ..., or the "
        "account's archive: rules) would free. Changes nothing.",
    )
    quota.add_argument("account", nargs="?", metavar="ACCOUNT", help="default: every account")
    quota.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    _add_rule_options(quota)
    return p


def _add_rule_options(p: argparse.ArgumentParser) -> None:
    """The options that make one archive rule on the command line."""
    import argparse

    p.add_argument(
        "--folder", metavar="PATTERN", help="server folders to archive from (* and %% match)"
    )
    p.add_argument("--older-than", metavar="AGE", help="e.g. 1y, 6m, 30d, 2w or 2024-01-31")
    p.add_argument("--larger-than", metavar="SIZE", help="e.g. 5M, 200K or bytes")
    p.add_argument(
        "--keep-flagged",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave flagged messages on the server (default: yes)",
    )
    p.add_argument(
        "--keep-unread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave unread messages on the server (default: yes)",
    )
    p.add_argument(
        "--to", metavar="LOCAL_FOLDER", help="local-only destination (default: Archive/<folder>)"
    )


def main(
    argv: Sequence[str] | None = None, env: Environment | None = None, quick: bool = True
) -> int:
    """Run one command. `quick=False` when `mirrorsync.quick.main` already found the
    run is not a provable no-op."""
    env = env or Environment()
    args: argparse.Namespace | None = None
    try:
        if quick:
            from mirrorsync.quick import try_quick

            # A sync that is provably a no-op ends here, before the imports below.
            status = try_quick(sys.argv[1:] if argv is None else list(argv), env)
            if status is not None:
                return status
        args = plain_sync(argv) or build_parser().parse_args(argv)
        _setup_logging(env, args.verbose, args.quiet)
        if not args.command:
            raise UsageError("no command given", "try 'mirrorsync sync' or 'mirrorsync --help'")
        command = {
            "sync": cmd_sync,
            "status": cmd_status,
            "check-config": cmd_check_config,
            "daemon": cmd_daemon,
            "archive": cmd_archive,
            "quota": cmd_quota,
            "migrate": cmd_migrate,
        }
        return int(command[args.command](args, env))
    except MirrorsyncError as e:
        return int(report_error(e, env, verbose=bool(args and args.verbose)))
    except KeyboardInterrupt:
        return interrupted(env)
    except Exception as e:  # a bug: still one line unless -v
        if args is not None and args.verbose:
            raise
        env.stderr.write(
            f"mirrorsync: internal error: {type(e).__name__}: {e} "
            "(re-run with -v for a traceback and report it)\n"
        )
        return int(ExitStatus.INTERNAL)


def plain_sync(argv: Sequence[str] | None) -> argparse.Namespace | None:
    """A plain ``[-c FILE] sync [ACCOUNT...]`` (as the quick check reads it) parsed
    as argparse would parse it, without importing argparse and building the parser
    (8 ms of a run); None for any other command line."""
    from mirrorsync.quick import parse_argv

    gate = parse_argv(sys.argv[1:] if argv is None else list(argv))
    if gate is None:
        return None
    import types

    config, names = gate
    args = types.SimpleNamespace(
        config=config,
        verbose=0,
        quiet=False,
        command="sync",
        accounts=names,
        folder=[],
        dry_run=False,
        verify=False,
        force=False,
        archive=False,
    )
    return args  # type: ignore[return-value]  # read by attribute, as a Namespace is


def interrupted(env: Environment) -> int:
    env.stderr.write("mirrorsync: interrupted; state is saved, re-run to finish\n")
    return 130


def report_error(e: MirrorsyncError, env: Environment, verbose: bool) -> ExitStatus:
    """The one place where a typed error becomes words and an exit status."""
    if verbose:
        import traceback

        traceback.print_exception(e, file=env.stderr)
    env.stderr.write(f"mirrorsync: {e}\n")
    return e.exit_status


def _setup_logging(env: Environment, verbose: int, quiet: bool) -> None:
    import logging

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
    """Load and validate the file, and leave it in the parsed-config cache (see
    `configcache`) for `mirrorsync.quick` and for the next run, which then takes it
    from there while the file is provably unchanged, without YAML."""
    import contextlib
    from pathlib import Path

    from mirrorsync import config, configcache, xdg

    given = args.config or xdg.default_config(env.environ)
    found: tuple[str, os.stat_result, float] | None = None
    with contextlib.suppress(OSError):  # load() words the problem
        key = configcache.key_for(given)
        cached = configcache.load_config(key, env.environ)
        if cached is not None:
            if os.environ.get("MIRRORSYNC_PLAN_ORACLE") == "1":  # tests: mirrorsync/sync/oracle.py
                from mirrorsync.sync.oracle import check_config

                check_config(cached, Path(given), env.environ)
            return cached
        before = settle_now()
        # before reading: an edit made after this must not match the cache
        found = (key, os.stat(key), before)
    recorder = configcache.RecordingEnv(env.environ)
    cfg = config.load(Path(given), recorder)
    if found is not None:
        key, st, before = found
        # the cache is an optimisation: it never fails a run
        with contextlib.suppress(Exception):
            configcache.store(
                cfg,
                key,
                configcache.file_identity(st),
                configcache.settled(st, before),
                recorder,
                env.environ,
            )
    return cfg


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
    from mirrorsync.sync.base import SyncOptions

    options = SyncOptions(
        dry_run=args.dry_run, force=args.force, folders=folders, verify=args.verify
    )
    if args.archive and not any(a.archive for a in accounts):
        raise UsageError(
            "--archive: no archive: rules in the configuration for "
            + ", ".join(a.name for a in accounts),
            "add archive: rules to the account (see sample-config.yaml)",
        )
    worst = ExitStatus.OK
    for account in accounts:
        try:
            status = sync_account(account, options, env, archive=args.archive)
        except MirrorsyncError as e:
            status = report_error(e, env, verbose=bool(args.verbose))
        worst = max(worst, status)
    return worst


def account_session(account: AccountConfig, env: Environment) -> AbstractContextManager[Session]:
    """The account's lock, a logged-in server connection, the state and the Maildir,
    for one run; all released whatever happens. A state database found damaged
    mid-run becomes one clear line (the file is moved aside at the next start); a
    full, read-only or failing file system under it, another (the state is kept)."""
    import contextlib  # here, not at the top: the quick path does without it

    return contextlib.contextmanager(_session)(account, env)


def _session(account: AccountConfig, env: Environment) -> Iterator[Session]:
    import sqlite3

    from mirrorsync.config import resolve_password
    from mirrorsync.imapstore import ImapStore
    from mirrorsync.maildir import Maildir
    from mirrorsync.naming import settle_prefix
    from mirrorsync.state import AccountLock, State, state_error

    with AccountLock(account.state_dir, account.name):
        remote = ImapStore.connect(account.remote, resolve_password(account.remote, env.environ))
        try:
            state = State.open(account.state_dir)
            try:
                # Every command of the session names folders as the syncs do; only a
                # sync records the choice (`AccountSync.run` settles it again).
                maildir = Maildir.of(account.local)
                settle_prefix(account, remote, state, False, maildir.list_folders)
                yield Session(remote, state, maildir)
            except sqlite3.DatabaseError as e:
                raise state_error(e, state.path) from e
            finally:
                state.close()
        finally:
            remote.close()


def sync_account(
    account: AccountConfig, options: object, env: Environment, archive: bool = False
) -> ExitStatus:
    """Lock, connect, run, report. Returns the account's exit status. With `archive`,
    the account's archive rules are applied after the sync, under the same lock and
    on the same connection, so they act on freshly synced folders."""
    from mirrorsync.sync.base import SyncOptions
    from mirrorsync.sync.engine import AccountSync

    assert isinstance(options, SyncOptions)
    started = time.monotonic()

    def emit(line: str) -> None:
        env.stdout.write(line + "\n")

    archived = None
    archive_lines: list[str] = []
    with account_session(account, env) as s:
        report = AccountSync(account, s.remote, s.maildir, s.state, options, emit).run()
        if archive and account.archive:
            from mirrorsync.archive import run_archive

            # printed after the sync's summary line, in the order things happened
            archived = run_archive(
                account,
                s.remote,
                s.maildir,
                s.state,
                account.archive,
                options.dry_run,
                archive_lines.append,
            )
    for f in report.folders:
        if f.error:
            env.stderr.write(f"mirrorsync: [{account.name}] {f.summary()}\n")
        elif any(f.counts.values()) and not options.dry_run:
            import logging

            logging.getLogger("mirrorsync").info("[%s] %s", account.name, f.summary())
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
    if archived is not None:
        env.stdout.writelines(line + "\n" for line in archive_lines)
        _print_archived(account, archived, options.dry_run, env)
        if archived.failed:
            return ExitStatus.PARTIAL
    return ExitStatus.PARTIAL if report.failed else ExitStatus.OK


# -- archive and quota


def _cli_rule(args: argparse.Namespace) -> ArchiveRule | None:
    """The rule given by --folder and friends, or None (use the config's rules)."""
    from mirrorsync import archive_rules
    from mirrorsync.config import ArchiveRule
    from mirrorsync.model import SEP, canonical_folder

    if args.folder is None:
        given = [
            o
            for o, v in (
                ("--older-than", args.older_than),
                ("--larger-than", args.larger_than),
                ("--to", args.to),
            )
            if v is not None
        ]
        if given:
            raise UsageError(f"{given[0]} needs --folder", "name the folders: --folder 'INBOX'")
        return None
    if args.older_than is None and args.larger_than is None:
        raise UsageError(
            "--folder needs --older-than or --larger-than (or both)",
            "without either it would archive the whole folder",
        )
    if args.older_than is not None:
        try:
            archive_rules.parse_age(args.older_than)
        except ValueError as e:
            raise UsageError(f"--older-than: {e}") from None
    larger = None
    if args.larger_than is not None:
        try:
            larger = archive_rules.parse_size(args.larger_than)
        except ValueError as e:
            raise UsageError(f"--larger-than: {e}") from None
    to = None
    if args.to is not None:
        to = canonical_folder(args.to.strip(SEP))
        if not to or "*" in to or "%" in to:
            raise UsageError(f"--to: expected a folder name, got {args.to!r}")
    return ArchiveRule(
        folder=args.folder,
        older_than=args.older_than,
        larger_than=larger,
        keep_flagged=args.keep_flagged,
        keep_unread=args.keep_unread,
        to=to,
    )


def _rules_for(account: AccountConfig, rule: ArchiveRule | None) -> tuple[ArchiveRule, ...]:
    if rule is None:
        return account.archive
    dest = rule.destination(rule.folder)
    if not account.local.is_local_only(dest):
        raise UsageError(
            f"[{account.name}] archive destination {dest!r} is not a local-only folder",
            f"add it to accounts.{account.name}.local.local_only in the configuration",
        )
    return (rule,)


def cmd_archive(args: argparse.Namespace, env: Environment) -> ExitStatus:
    cfg = _load_config(args, env)
    accounts = _select_accounts(cfg, [args.account] if args.account else [])
    rule = _cli_rule(args)
    worst = ExitStatus.OK
    for account in accounts:
        try:
            rules = _rules_for(account, rule)
            if not rules:
                raise UsageError(
                    f"account {account.name} has no archive: rules",
                    "give --folder with --older-than or --larger-than, or add rules",
                )
            status = archive_account(account, rules, args.dry_run, env)
        except MirrorsyncError as e:
            status = report_error(e, env, verbose=bool(args.verbose))
        worst = max(worst, status)
    return worst


def archive_account(
    account: AccountConfig, rules: Sequence[ArchiveRule], dry_run: bool, env: Environment
) -> ExitStatus:
    """Lock, connect, finish any interrupted archive, apply `rules`, report."""
    from mirrorsync.archive import recover_archive, run_archive
    from mirrorsync.archive_rules import messages

    started = time.monotonic()

    def emit(line: str) -> None:
        env.stdout.write(line + "\n")

    with account_session(account, env) as s:
        if not dry_run:
            settled = recover_archive(s.remote, s.maildir, s.state)
            if settled:
                emit(
                    f"[{account.name}] settled an interrupted archive of {messages(settled)} first"
                )
        report = run_archive(account, s.remote, s.maildir, s.state, rules, dry_run, emit)
    _print_archived(account, report, dry_run, env, time.monotonic() - started)
    return ExitStatus.PARTIAL if report.failed else ExitStatus.OK


def _print_archived(
    account: AccountConfig,
    report: ArchiveReport,
    dry_run: bool,
    env: Environment,
    seconds: float | None = None,
) -> None:
    from mirrorsync.archive_rules import format_size, messages

    for folder, why in report.failed.items():
        env.stderr.write(f"mirrorsync: [{account.name}] {folder}: archive FAILED: {why}\n")
    size = format_size(report.bytes)
    if dry_run:
        line = (
            f"{account.name}: would archive {messages(report.messages)} ({size}); nothing changed"
        )
    else:
        line = f"{account.name}: archived {messages(report.messages)}, {size} freed on the server"
    if report.kept:
        line += f"; {messages(report.kept)} selected stay on the server (see above)"
    if report.failed:
        line += f"; {len(report.failed)} folders FAILED"
    if seconds is not None:
        line += f" ({seconds:.1f}s)"
    env.stdout.write(line + "\n")


def cmd_quota(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Read-only: no lock is taken, so it works while a sync or daemon runs."""
    import json

    cfg = _load_config(args, env)
    accounts = _select_accounts(cfg, [args.account] if args.account else [])
    rule = _cli_rule(args)
    worst = ExitStatus.OK
    documents: dict[str, object] = {}
    for account in accounts:
        try:
            documents[account.name] = quota_account(account, _rules_for(account, rule), env)
        except MirrorsyncError as e:
            worst = max(worst, report_error(e, env, verbose=bool(args.verbose)))
    if args.json:
        env.stdout.write(json.dumps({"accounts": documents}, indent=2, ensure_ascii=False) + "\n")
    else:
        for name, doc in documents.items():
            env.stdout.write(_quota_text(name, doc))
    return worst


def quota_account(
    account: AccountConfig, rules: Sequence[ArchiveRule], env: Environment
) -> dict[str, object]:
    """The quota, folder sizes (largest first) and the rules' estimate, as plain data
    (what --json prints; the table is made from it too)."""
    from mirrorsync.archive import estimate
    from mirrorsync.config import resolve_password
    from mirrorsync.imapstore import ImapStore

    remote = ImapStore.connect(account.remote, resolve_password(account.remote, env.environ))
    try:
        from mirrorsync.naming import recorded_prefix

        # folders named as the syncs name them
        remote.use_namespace_prefix(recorded_prefix(account, remote))
        quota = remote.quota()
        sizes = remote.folder_sizes()
        found = estimate(account, remote, rules) if rules else None
    finally:
        remote.close()
    doc: dict[str, object] = {
        "quota": [
            {
                "root": q.root,
                "resource": q.name,
                "usage": q.usage,
                "limit": q.limit,
                **(
                    {"usage_bytes": q.usage_bytes, "limit_bytes": q.limit_bytes}
                    if q.usage_bytes is not None
                    else {}
                ),
            }
            for q in quota
        ],
        "folders": [
            {"name": name, "messages": n, "bytes": b}
            for name, (n, b) in sorted(sizes.items(), key=lambda kv: (-kv[1][1], kv[0]))
        ],
        "archive": None,
    }
    if found is not None:
        doc["archive"] = {
            "messages": sum(n for _t, n, _b in found),
            "bytes": sum(b for _t, _n, b in found),
            "folders": [
                {"folder": t.folder, "to": t.dest, "messages": n, "bytes": b}
                for t, n, b in found
                if n
            ],
        }
    return doc


def _quota_text(name: str, doc: object) -> str:
    """The table for people, from `quota_account`'s data."""
    from mirrorsync.archive_rules import format_size, messages

    assert isinstance(doc, dict)
    lines = []
    if not doc["quota"]:
        lines.append(f"{name}: the server reports no quota")
    for q in doc["quota"]:
        used, limit = q["usage"], q["limit"]
        share = f" ({100 * used / limit:.1f}%)" if limit else ""
        if "usage_bytes" in q:
            used, limit = format_size(q["usage_bytes"]), format_size(q["limit_bytes"])
        lines.append(f"{name}: {q['resource']} {used} of {limit} used{share}")
    folders = doc["folders"]
    width = max([len("FOLDER"), *(len(f["name"]) for f in folders)])
    lines.append(f"  {'FOLDER':<{width}}  {'MESSAGES':>8}  {'SIZE':>10}")
    for f in folders:
        lines.append(f"  {f['name']:<{width}}  {f['messages']:>8}  {format_size(f['bytes']):>10}")
    total_n = sum(f["messages"] for f in folders)
    total_b = sum(f["bytes"] for f in folders)
    lines.append(f"  {'total':<{width}}  {total_n:>8}  {format_size(total_b):>10}")
    archive = doc["archive"]
    if archive is not None:
        lines.append(
            f"  archiving would free {messages(archive['messages'])}, "
            f"{format_size(archive['bytes'])}" + (":" if archive["folders"] else "")
        )
        for f in archive["folders"]:
            lines.append(
                f"    {f['folder']} -> {f['to']}: {messages(f['messages'])}, "
                f"{format_size(f['bytes'])}"
            )
    return "\n".join(lines) + "\n"


def cmd_migrate(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """See `mirrorsync.migrate`."""
    from pathlib import Path

    from mirrorsync.migrate import migrate_account

    cfg = _load_config(args, env)
    (account,) = _select_accounts(cfg, [args.account])

    def emit(line: str) -> None:
        env.stdout.write(line + "\n")

    def wanted(name: str) -> bool:
        return account.folders.matches(name) and not account.local.is_local_only(name)

    state = Path(os.path.expanduser(args.state)) if args.state else None
    with account_session(account, env) as s:
        migrate_account(
            account.name,
            args.tool,
            state,
            s.remote,
            s.maildir,
            s.state,
            write=args.yes,
            force=args.force,
            emit=emit,
            wanted=wanted,
        )
    return ExitStatus.OK


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
