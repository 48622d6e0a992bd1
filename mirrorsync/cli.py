"""The command line: parse, run, and turn every typed error into one line.

`main` takes an `Environment` so the tests can run the CLI in-process with their own
streams and variables; nothing is read from the process at import time. Heavy
modules (imapclient, the engine) are imported only by the commands that need them,
so `--help` and config errors stay instant.

A `sync` that finds nothing to do is the common case (cron, a mail reader's hook),
and most of its time used to go to imports. So the `mirrorsync` command starts in
`mirrorsync.__main__`, whose quick check (`mirrorsync.quick`) decides whether the run
is provably a no-op before this module (and `errors`, whose enum alone costs 4 ms) is
imported, and hands what it learned to `main` (an `Outcome`); `main` here
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
from mirrorsync.words import counted

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator, Sequence
    from contextlib import AbstractContextManager
    from typing import Any, TextIO

    from mirrorsync.archive import ArchiveReport
    from mirrorsync.config import AccountConfig, ArchiveRule, Config
    from mirrorsync.imap.store import ImapStore
    from mirrorsync.maildir import Maildir
    from mirrorsync.model import FolderStatus
    from mirrorsync.quick import Outcome
    from mirrorsync.state import State
    from mirrorsync.sync.base import FolderReport


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
    _global_options(p, None)
    p.add_argument("--version", action="version", version=f"mirrorsync {__version__}")
    # The global options are taken after the command too (`mirrorsync sync -v`); there
    # they default to nothing, so that they do not undo the same options given before.
    common = _Parser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    sync = command("sync", help="synchronize accounts once")
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
        "--recover",
        choices=("keep", "local", "server"),
        help="without a state (lost, or moved aside as damaged), where messages that "
        "both sides hold in different folders go: keep every copy (the default), or "
        "follow the Maildir's (local) or the server's folders",
    )
    sync.add_argument(
        "--archive",
        action="store_true",
        help="then apply the account's archive: rules (see 'mirrorsync archive')",
    )
    sync.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    status = command("status", help="per-folder counts and pending local changes")
    status.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    status.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    command("check-config", help="validate the config and test each login")
    command("sample-config", help="print a commented configuration with every option")
    from mirrorsync import init

    init.add_arguments(
        command(
            "init",
            help="write a first configuration file, then check it",
            description="Write a commented configuration for one account (to -c FILE, "
            "or the default place) from the options given, asking on a terminal for "
            "what is missing; a known provider (--provider, or the address's domain) "
            "fills in the server. Then log in to check it, as check-config does.",
        )
    )
    completion = command(
        "completion",
        help="print a shell completion script",
        description="Print the completion script for SHELL. bash: "
        "'mirrorsync completion bash > ~/.local/share/bash-completion/completions/mirrorsync'; "
        "zsh: put 'mirrorsync completion zsh' in a file named _mirrorsync on $fpath; fish: "
        "'mirrorsync completion fish > ~/.config/fish/completions/mirrorsync.fish'.",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL")
    login = command(
        "login",
        help="sign in to an OAuth2 account (Gmail, Microsoft 365) and keep its refresh token",
        description="For an account with auth: xoauth2 or oauthbearer and an oauth2: "
        "section: sign in at the provider (the device flow, where you enter a code on "
        "a page, or a browser sign-in that returns to this machine), keep the refresh "
        "token (mode 0600 in the state directory, or the keyring) and test the login.",
    )
    login.add_argument("account", metavar="ACCOUNT")
    daemon = command(
        "daemon",
        help="keep running: sync on local changes and server push",
        description="Sync once, then whenever a folder changes locally or on the server, "
        "and fully every daemon.full_check_interval seconds. SIGUSR1 syncs now, SIGHUP "
        "reloads the configuration, SIGTERM or SIGINT stops after the sync under way.",
    )
    daemon.add_argument("accounts", nargs="*", metavar="ACCOUNT")
    archive = command(
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
    migrate = command(
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
    quota = command(
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


def _global_options(p: argparse.ArgumentParser, default: object) -> None:
    """-c, -v, -q: with `default` None the real defaults, else that (SUPPRESS)."""
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=default,
        help="config file (default: XDG location)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if default is None else default,
        help="more output; tracebacks",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if default is None else default,
        help="only errors",
    )


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
    argv: Sequence[str] | None = None,
    env: Environment | None = None,
    outcome: Outcome | None = None,
) -> int:
    """Run one command. `outcome` is the quick check's, when `mirrorsync.__main__`
    already found the run is not a provable no-op; without it, the check runs here."""
    env = env or Environment()
    args: argparse.Namespace | None = None
    try:
        if outcome is None:
            from mirrorsync.quick import try_quick

            # A sync that is provably a no-op ends here, before the imports below.
            outcome = try_quick(sys.argv[1:] if argv is None else list(argv), env)
            if outcome.status is not None:
                return outcome.status
        args = plain_sync(argv) or build_parser().parse_args(argv)
        args.quick = outcome  # what the full path takes over from the quick check
        _setup_logging(env, args.verbose, args.quiet)
        if not args.command:
            raise UsageError("no command given", "try 'mirrorsync sync' or 'mirrorsync --help'")
        command = {
            "sync": cmd_sync,
            "status": cmd_status,
            "check-config": cmd_check_config,
            "login": cmd_login,
            "daemon": cmd_daemon,
            "archive": cmd_archive,
            "quota": cmd_quota,
            "migrate": cmd_migrate,
            "sample-config": cmd_sample_config,
            "init": cmd_init,
            "completion": cmd_completion,
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
        recover=None,
        json=False,
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
    """Load and validate the file, and leave its digest (see `configcache`) for the
    quick check of the next run. The file as the quick check read it, when it did,
    is not read again."""
    import contextlib
    from pathlib import Path

    from mirrorsync import config, configcache, xdg

    given = args.config or xdg.default_config(env.environ)
    recorder = configcache.RecordingEnv(env.environ)
    found: tuple[str, os.stat_result, float] | None = None
    outcome: Outcome | None = getattr(args, "quick", None)
    loaded = outcome.loaded if outcome else None
    if outcome and loaded is not None and loaded.key == configcache.key_for(given):
        outcome.loaded = None  # taken: a reload reads the file again
        found = (loaded.key, loaded.st, loaded.before)
        cfg = config.load(Path(given), recorder, (loaded.text, loaded.document))
        if os.environ.get("MIRRORSYNC_PLAN_ORACLE") == "1":  # tests: mirrorsync/sync/oracle.py
            from mirrorsync.sync.oracle import check_config

            check_config(cfg, Path(given), env.environ)
    else:
        with contextlib.suppress(OSError):  # load() words the problem
            key = configcache.key_for(given)
            before = settle_now()
            # before reading: an edit made after this must not match the digest
            found = (key, os.stat(key), before)
        if outcome and (
            found is None or outcome.read != (key, configcache.file_identity(found[1]))
        ):
            outcome.forget_passwords()  # they are for the file it read, not this one
        cfg = config.load(Path(given), recorder)
    config.check_files(cfg)
    if found is not None:
        key, st, before = found
        # the digest is an optimisation: it never fails a run
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
    import functools
    import logging

    from mirrorsync import throttle
    from mirrorsync.model import canonical_folder

    cfg = _load_config(args, env)
    accounts = _select_accounts(cfg, args.accounts)
    folders = tuple(canonical_folder(f.strip("/")) for f in args.folder)
    from mirrorsync.sync.base import SyncOptions

    options = SyncOptions(
        dry_run=args.dry_run,
        force=args.force,
        folders=folders,
        verify=args.verify,
        recover=args.recover,
    )
    if args.archive and not any(a.archive for a in accounts):
        raise UsageError(
            "--archive: no archive: rules in the configuration for "
            + ", ".join(a.name for a in accounts),
            "add archive: rules to the account ('mirrorsync sample-config' shows them)",
        )
    out = SyncOutput(env, quiet=bool(args.quiet), json=bool(args.json))
    if any(a.hooks.every_run or a.hooks.new_mail for a in accounts) and not args.dry_run:
        from mirrorsync.hooks import scrubbed

        out.hooks_env = scrubbed(env.environ, cfg.accounts.values())

    def one(account: AccountConfig, out: SyncOutput) -> ExitStatus:
        started = time.monotonic()
        doc = out.documents[account.name]
        try:
            # a server that throttles (Outlook) gets the run again after a wait
            status = throttle.run_patiently(
                functools.partial(
                    sync_account,
                    account,
                    options,
                    out.env,
                    archive=args.archive,
                    out=out,
                    quick=args.quick,
                ),
                logging.getLogger("mirrorsync").warning,
                f"[{account.name}]",
            )
        except MirrorsyncError as e:
            status = report_error(e, out.env, verbose=bool(args.verbose))
            doc["error"] = str(e)
        doc["status"] = int(status)
        doc["seconds"] = round(time.monotonic() - started, 3)
        return status

    for account in accounts:
        out.account(account.name)  # the document lists them in the order given
    bound = min(cfg.parallel_accounts, len(accounts))
    if bound > 1 and not options.dry_run:
        worst = _in_parallel(accounts, bound, one, out)
    else:
        worst = max((one(account, out) for account in accounts), default=ExitStatus.OK)
    if args.json:
        out.write_json(worst)
    return worst


def _in_parallel(
    accounts: Sequence[AccountConfig],
    bound: int,
    one: Callable[[AccountConfig, SyncOutput], ExitStatus],
    out: SyncOutput,
) -> ExitStatus:
    """Sync `bound` accounts at a time, each in a thread with its own connection. Each
    one's lines are held and printed whole, in the order given, as soon as it and
    those before it are done, so that they never interleave; its progress lines go
    straight to standard error (no live bar: several would fight over the line).
    Daemon threads: Ctrl-C ends the run at once (the state is safe at any point)."""
    import io
    import threading

    from mirrorsync.environment import Environment

    slots = threading.Semaphore(bound)
    runs = []
    for account in accounts:
        held = Environment(io.StringIO(), io.StringIO(), out.env.environ, out.env.stdin)
        mine = out.sibling(held)
        result: list[ExitStatus | BaseException] = []

        def run(
            account: AccountConfig = account,
            mine: SyncOutput = mine,
            result: list[ExitStatus | BaseException] = result,
        ) -> None:
            with slots:
                try:
                    result.append(one(account, mine))
                except BaseException as e:  # a bug: raised again in the main thread
                    result.append(e)

        thread = threading.Thread(target=run, name=f"sync {account.name}", daemon=True)
        thread.start()
        runs.append((thread, held, result))
    worst = ExitStatus.OK
    for thread, held, result in runs:
        thread.join()
        assert isinstance(held.stdout, io.StringIO) and isinstance(held.stderr, io.StringIO)
        out.env.stdout.write(held.stdout.getvalue())
        out.env.stderr.write(held.stderr.getvalue())
        out.env.stdout.flush()
        (status,) = result
        if isinstance(status, BaseException):
            raise status
        worst = max(worst, status)
    return worst


class SyncOutput:
    """Where a sync's words go: the summary lines on standard output (none with -q),
    or, with --json, one document (see README.md, "Output for scripts") gathered
    here and printed at the end."""

    def __init__(self, env: Environment, quiet: bool, json: bool) -> None:
        self.env = env
        self.quiet = quiet
        self.json = json
        self.documents: dict[str, dict[str, object]] = {}
        # the environment hooks run in, without secrets; None: run no hooks
        self.hooks_env: dict[str, str] | None = None
        # where progress goes, when not to env.stderr (accounts run in parallel)
        self.progress_to: TextIO | None = None

    def sibling(self, env: Environment) -> SyncOutput:
        """The same settings and documents, for an account whose lines go to `env`
        (held there while accounts run in parallel); its progress lines go to this
        one's standard error, as they come."""
        other = SyncOutput(env, self.quiet, self.json)
        other.documents = self.documents
        other.hooks_env = self.hooks_env
        other.progress_to = self.env.stderr
        return other

    def account(self, name: str) -> dict[str, object]:
        doc: dict[str, object] = {
            "status": 0,
            "error": None,
            "seconds": 0.0,
            "folders": {},
            "archive": None,
            "hooks": {},
        }
        self.documents[name] = doc
        return doc

    def hooks(self, which: list[str], account: AccountConfig, **facts: Any) -> None:
        """Run the account's hooks named in `which` (mirrorsync/hooks.py), unless
        hooks are off for this run; each outcome goes into the account's document."""
        if self.hooks_env is None:
            return
        from mirrorsync.hooks import run_hooks

        outcomes = run_hooks(which, account, self.hooks_env, **facts)
        done = self.documents[account.name].setdefault("hooks", {})
        assert isinstance(done, dict)
        done.update(outcomes)

    def line(self, text: str) -> None:
        """A line for people; under --json it goes to the log (-v shows it)."""
        if self.json:
            import logging

            logging.getLogger("mirrorsync").info("%s", text)
        elif not self.quiet:
            self.env.stdout.write(text + "\n")

    def write_json(self, status: ExitStatus) -> None:
        import json

        document = {"version": 1, "status": int(status), "accounts": self.documents}
        self.env.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def account_session(
    account: AccountConfig, env: Environment, quick: Outcome | None = None
) -> AbstractContextManager[Session]:
    """The account's lock, a logged-in server connection, the state and the Maildir,
    for one run; all released whatever happens. A state database found damaged
    mid-run becomes one clear line (the file is moved aside at the next start); a
    full, read-only or failing file system under it, another (the state is kept).
    `quick` is the quick check's outcome: the password it got, what it learned."""
    import contextlib  # here, not at the top: the quick path does without it

    return contextlib.contextmanager(_session)(account, env, quick)


def _session(account: AccountConfig, env: Environment, quick: Outcome | None) -> Iterator[Session]:
    import sqlite3

    from mirrorsync import proof
    from mirrorsync.config import resolve_password
    from mirrorsync.imap.store import ImapStore
    from mirrorsync.maildir import Maildir
    from mirrorsync.naming import settle_prefix
    from mirrorsync.paths import check_account_paths
    from mirrorsync.state import AccountLock, State, state_error

    check_account_paths(account)
    with AccountLock(account.state_dir, account.name):
        # this session may change the state: the last sync's proof no longer holds
        proof.void_for_work(account.state_dir)
        password = quick.password(account.name) if quick else None
        if password is None:
            password = resolve_password(account.remote, env.environ)
        learned = quick.learned if quick else None
        remote = ImapStore.connect(account.remote, password, learned=learned)
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
    account: AccountConfig,
    options: object,
    env: Environment,
    archive: bool = False,
    out: SyncOutput | None = None,
    quick: Outcome | None = None,
) -> ExitStatus:
    """Lock, connect, run, report. Returns the account's exit status. With `archive`,
    the account's archive rules are applied after the sync, under the same lock and
    on the same connection, so they act on freshly synced folders. `quick` is the
    quick check's outcome (see `account_session`)."""
    from mirrorsync.progress import ProgressReporter, Reporter
    from mirrorsync.sync.base import SyncOptions
    from mirrorsync.sync.engine import AccountSync

    assert isinstance(options, SyncOptions)
    out = out or SyncOutput(env, quiet=False, json=False)
    doc = out.documents.get(account.name) or out.account(account.name)
    started = time.monotonic()

    def emit(line: str) -> None:
        if options.dry_run and not out.json:
            env.stdout.write(line + "\n")  # the plan asked for, even with -q
        else:
            out.line(line)

    if out.quiet:
        reporter = Reporter()
    elif out.progress_to is not None:
        reporter = ProgressReporter(account.name, out.progress_to, terminal=False)
    else:
        reporter = ProgressReporter(account.name, env.stderr)
    out.hooks(["pre_sync"], account)
    archived = None
    archive_lines: list[str] = []
    try:
        with account_session(account, env, quick) as s:
            run = AccountSync(account, s.remote, s.maildir, s.state, options, emit, reporter)
            report = run.run()
            if archive and account.archive:
                from mirrorsync import proof
                from mirrorsync.archive import run_archive

                proof.void_for_work(account.state_dir)  # the sync's proof is not the archive's
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
    except MirrorsyncError as e:
        out.hooks(["post_sync"], account, status=int(e.exit_status), error=str(e))
        raise
    finally:
        reporter.close()
    for f in report.folders:
        if f.error:
            env.stderr.write(f"mirrorsync: [{account.name}] {f.summary()}\n")
        elif any(f.counts.values()) and not options.dry_run:
            import logging

            logging.getLogger("mirrorsync").info("[%s] %s", account.name, f.summary())
    doc["folders"] = {
        f.name: _folder_document(f, run.statuses.get(f.name), reporter.seconds.get(f.name))
        for f in report.folders
    }
    # after the lock is released: a hook may run mirrorsync itself
    out.hooks(
        ["post_sync", "new_mail"],
        account,
        status=int(ExitStatus.PARTIAL if report.failed else ExitStatus.OK),
        done={f.name: f.counts for f in report.folders},
        failed={f.name: f.error for f in report.folders if f.error},
    )
    missing = [f for f in options.folders if f not in {r.name for r in report.folders}]
    if missing:
        raise UsageError(
            f"[{account.name}] no folder {missing[0]!r} on the server or in {account.local.path}",
            "names use '/' between levels (e.g. Work/Projects); 'mirrorsync status' lists "
            "the folders; the folders: patterns or local.local_only may leave it out",
        )
    totals: dict[str, int] = {}
    for f in report.folders:
        for k, n in f.counts.items():
            totals[k] = totals.get(k, 0) + n
    if not options.dry_run:
        done = ", ".join(f"{n} {k}" for k, n in sorted(totals.items()) if n) or "no changes"
        failed = f", {counted(len(report.failed), 'folder')} FAILED" if report.failed else ""
        out.line(
            f"{account.name}: {counted(len(report.folders), 'folder')}, {done}{failed} "
            f"({time.monotonic() - started:.1f}s)"
        )
    if archived is not None:
        doc["archive"] = {
            "dry_run": options.dry_run,
            "messages": archived.messages,
            "bytes": archived.bytes,
            "kept": archived.kept,
            "failed": dict(archived.failed),
        }
        for line in archive_lines:
            out.line(line)
        if not out.quiet and not out.json:
            _print_archived(account, archived, options.dry_run, env)
        if archived.failed:
            return ExitStatus.PARTIAL
    return ExitStatus.PARTIAL if report.failed else ExitStatus.OK


def _folder_document(
    f: FolderReport, status: FolderStatus | None, seconds: float | None
) -> dict[str, object]:
    """One folder's part of `sync --json`."""
    return {
        "done": {k: n for k, n in sorted(f.counts.items()) if n},
        "error": f.error,
        "seconds": round(seconds or 0.0, 3),
        # the server's numbers as the run found them (before its own changes)
        "server": None
        if status is None
        else {
            "messages": status.messages,
            "uidvalidity": status.uidvalidity,
            "uidnext": status.uidnext,
        },
    }


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
        line += f"; {counted(len(report.failed), 'folder')} FAILED"
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
    from mirrorsync.imap.store import ImapStore

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
    import json

    from mirrorsync.status import account_status, status_document

    cfg = _load_config(args, env)
    worst = ExitStatus.OK
    documents: dict[str, object] = {}
    for account in _select_accounts(cfg, args.accounts):
        try:
            if args.json:
                documents[account.name] = status_document(account)
            else:
                env.stdout.write(account_status(account))
        except MirrorsyncError as e:
            status = report_error(e, env, verbose=bool(args.verbose))
            documents[account.name] = {"error": str(e)}
            worst = max(worst, status)
    if args.json:
        document = {"version": 1, "status": int(worst), "accounts": documents}
        env.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return worst


def cmd_sample_config(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """The commented sample, shipped in the package (a pip user has no sources)."""
    from importlib.resources import files

    env.stdout.write(files("mirrorsync").joinpath("sample-config.yaml").read_text("utf-8"))
    return ExitStatus.OK


def cmd_init(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """See `mirrorsync.init`; then check-config, unless --no-check."""
    from mirrorsync import init, xdg

    path = args.config or xdg.default_config(env.environ)
    init.run(args, env, path)
    if args.no_check:
        return ExitStatus.OK
    args.config = path
    return cmd_check_config(args, env)


def cmd_completion(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from mirrorsync import shell

    make = {"bash": shell.bash, "zsh": shell.zsh, "fish": shell.fish}[args.shell]
    env.stdout.write(make(build_parser()))
    return ExitStatus.OK


def cmd_check_config(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from mirrorsync.config import resolve_password
    from mirrorsync.imap.store import ImapStore

    cfg = _load_config(args, env)
    accounts = counted(len(cfg.accounts), "account")
    env.stdout.write(f"{cfg.path}: configuration is valid ({accounts})\n")
    worst = ExitStatus.OK
    for account in cfg.accounts.values():
        try:
            remote = ImapStore.connect(
                account.remote, resolve_password(account.remote, env.environ)
            )
            try:
                folders = _folders_to_sync(account, remote)
            finally:
                remote.close()
            env.stdout.write(
                f"{account.name}: logged in to {account.remote.host}:{account.remote.port} "
                f"as {account.remote.username}; {folders}\n"
            )
        except MirrorsyncError as e:
            worst = max(worst, report_error(e, env, verbose=bool(args.verbose)))
    return worst


def _folders_to_sync(account: AccountConfig, remote: ImapStore) -> str:
    """The server folders a sync takes, counted as `sync` counts them (named as the
    syncs name them, without those excluded or kept local), and all it lists."""
    from mirrorsync.naming import recorded_prefix

    remote.use_namespace_prefix(recorded_prefix(account, remote))
    listed = [f.name for f in remote.list_folders() if f.selectable]
    synced = [
        n for n in listed if account.folders.matches(n) and not account.local.is_local_only(n)
    ]
    text = f"{counted(len(synced), 'folder')} to sync"
    if len(synced) != len(listed):
        text += f" (of {len(listed)} on the server)"
    return text


def cmd_login(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Get the first refresh token (see `mirrorsync.oauth.login`), then log in with
    it, so a mistake in the account's other settings shows now."""
    from mirrorsync import oauth
    from mirrorsync.imap.store import ImapStore

    (account,) = _select_accounts(_load_config(args, env), [args.account])

    def show(line: str) -> None:
        env.stdout.write(line + "\n")
        env.stdout.flush()

    where = oauth.login(account.remote, env.environ, show)
    env.stdout.write(f"{account.name}: signed in; refresh token kept in {where}\n")
    ImapStore.connect(account.remote, oauth.access_token(account.remote, env.environ)).close()
    env.stdout.write(
        f"{account.name}: logged in to {account.remote.host}:{account.remote.port} "
        f"as {account.remote.username}\n"
    )
    return ExitStatus.OK


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
