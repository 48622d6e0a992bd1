"""Shell completion (bash, zsh, fish) and the man page, made from the parser itself
(`cli.build_parser`), so that neither can drift from the options the command takes.

`mirrorsync completion SHELL` prints a script; `man/mirrorsync.1` is this module's
`manpage()` (a test holds the file equal to it; `python -m mirrorsync.shell` writes
it anew) and is installed with the package (setup.cfg, data_files).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    help: str
    metavar: str | None  # None: takes no value
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    usage: str
    description: str
    options: tuple[Option, ...]
    words: tuple[str, ...] = ()  # what a positional argument may be (its choices)


def _options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    found = []
    for action in parser._actions:  # argparse has no public way to list them
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        takes = action.nargs != 0
        metavar = action.metavar or (action.dest.upper() if takes else None)
        found.append(
            Option(
                tuple(action.option_strings),
                str(action.help or ""),
                str(metavar) if takes else None,
                tuple(str(c) for c in action.choices or ()),
            )
        )
    return tuple(found)


def commands(parser: argparse.ArgumentParser) -> Iterator[Command]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: str(a.help or "") for a in action._choices_actions}
            for name, sub in action.choices.items():
                usage = " ".join(sub.format_usage().split())
                words = tuple(
                    str(c) for a in sub._actions if not a.option_strings for c in a.choices or ()
                )
                yield Command(
                    name,
                    helps.get(name, ""),
                    usage.removeprefix("usage: "),
                    sub.description or "",
                    _options(sub),
                    words,
                )


def global_options(parser: argparse.ArgumentParser) -> tuple[Option, ...]:
    return _options(parser)


def _words(options: tuple[Option, ...]) -> str:
    return " ".join(f for o in options for f in o.flags if f.startswith("--") or len(o.flags) == 1)


# -- bash and zsh


def bash(parser: argparse.ArgumentParser) -> str:
    cmds = list(commands(parser))
    top = global_options(parser)
    valued = sorted(
        {f for o in (*top, *(o for c in cmds for o in c.options)) if o.metavar for f in o.flags}
    )
    arms = [f'        {c.name}) opts="{" ".join((_words(c.options), *c.words))}" ;;' for c in cmds]
    choice_arms = [
        f"            {'|'.join(f'{c.name}:{f}' for f in o.flags)}) "
        f'COMPREPLY=($(compgen -W "{" ".join(o.choices)}" -- "$cur")); return ;;'
        for c in cmds
        for o in c.options
        if o.choices
    ]
    return f"""# bash completion for mirrorsync; made by `mirrorsync completion bash`
_mirrorsync() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local cmd="" i opts
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            {"|".join(valued)}) ((i++)) ;;
            -*) ;;
            *) cmd=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    case $cmd:$prev in
{chr(10).join(choice_arms)}
            *:-c|*:--config|*:--state|*:--path) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    esac
    case $prev in
        {"|".join(valued)}) return ;;
    esac
    case $cmd in
        "") opts="{_words(top)} {" ".join(c.name for c in cmds)}" ;;
{chr(10).join(arms)}
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -o default -F _mirrorsync mirrorsync
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    """zsh runs the bash function through its own bashcompinit."""
    return "#compdef mirrorsync\nautoload -U +X bashcompinit && bashcompinit\n" + bash(parser)


# -- fish


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(o: Option, condition: str) -> str:
    parts = ["complete -c mirrorsync", f"-n {_fish_quote(condition)}"]
    for f in o.flags:
        parts.append(f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}")
    if o.choices:
        parts.append(f"-x -a {_fish_quote(' '.join(o.choices))}")
    elif o.metavar:
        parts.append("-r")
    parts.append(f"-d {_fish_quote(o.help)}")
    return " ".join(parts)


def fish(parser: argparse.ArgumentParser) -> str:
    cmds = list(commands(parser))
    names = " ".join(c.name for c in cmds)
    lines = ["# fish completion for mirrorsync; made by `mirrorsync completion fish`"]
    lines.append("complete -c mirrorsync -f")
    for o in global_options(parser):
        lines.append(_fish_option(o, "true"))
    for c in cmds:
        lines.append(
            f"complete -c mirrorsync -n {_fish_quote('not __fish_seen_subcommand_from ' + names)}"
            f" -a {c.name} -d {_fish_quote(c.help)}"
        )
        for o in c.options:
            lines.append(_fish_option(o, f"__fish_seen_subcommand_from {c.name}"))
    return "\n".join(lines) + "\n"


# -- the man page


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.MULTILINE)


def _option_lines(options: tuple[Option, ...]) -> list[str]:
    lines = []
    for o in options:
        flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in o.flags)
        value = f" \\fI{_roff(o.metavar)}\\fR" if o.metavar else ""
        if o.choices:
            value = f" {{{_roff(','.join(o.choices))}}}"
        lines += [".TP", flags + value, _roff(o.help)]
    return lines


def manpage(parser: argparse.ArgumentParser) -> str:
    from mirrorsync import __version__
    from mirrorsync.errors import ExitStatus

    lines = [
        f'.TH MIRRORSYNC 1 "" "mirrorsync {__version__}" "User Commands"',
        ".SH NAME",
        "mirrorsync \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        ".B mirrorsync",
        "[\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-v\\fR] [\\fB\\-q\\fR] \\fICOMMAND\\fR "
        "[\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        "mirrorsync keeps a local Maildir a two\\-way mirror of an IMAP account. The "
        "configuration is read from \\fI$XDG_CONFIG_HOME/mirrorsync/config.yaml\\fR; "
        "\\fBmirrorsync sample\\-config\\fR prints one with every option, "
        "\\fBmirrorsync init\\fR writes a first one.",
        ".SH GLOBAL OPTIONS",
        "These may be given before or after the command.",
        *_option_lines(global_options(parser)),
        ".SH COMMANDS",
    ]
    common = {o.flags for o in global_options(parser)}
    for c in commands(parser):
        lines += [f'.SS "{_roff(c.usage)}"', _roff(c.description or c.help)]
        lines += _option_lines(tuple(o for o in c.options if o.flags not in common))
    lines += [".SH EXIT STATUS"]
    words = {
        ExitStatus.OK: "done",
        ExitStatus.PARTIAL: "done, but some folders failed; each is named on standard error",
        ExitStatus.USAGE: "usage or configuration error",
        ExitStatus.CONNECTION: "connection, TLS or authentication failure",
        ExitStatus.INTERNAL: "internal error (a bug: re\\-run with \\-v and report it)",
        ExitStatus.DAEMON_RUNNING: "daemon only: another daemon already runs for the account",
    }
    for status in ExitStatus:
        lines += [".TP", f"\\fB{int(status)}\\fR", words[status]]
    lines += [
        ".SH FILES",
        ".TP",
        "\\fI$XDG_CONFIG_HOME/mirrorsync/config.yaml\\fR",
        "the configuration (\\fI~/.config/mirrorsync/config.yaml\\fR by default)",
        ".TP",
        "\\fI$XDG_STATE_HOME/mirrorsync/ACCOUNT/\\fR",
        "each account's state, unless state_dir says otherwise",
        ".TP",
        "\\fI$XDG_CACHE_HOME/mirrorsync/\\fR",
        "the parsed configuration, which may be deleted at any time",
        ".SH SEE ALSO",
        "\\fBmutt\\fR(1), \\fBneomutt\\fR(1), \\fBnotmuch\\fR(1), \\fBmbsync\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m mirrorsync.shell: write man/mirrorsync.1 anew
    from pathlib import Path

    from mirrorsync.cli import build_parser

    target = Path(__file__).resolve().parent.parent / "man" / "mirrorsync.1"
    target.parent.mkdir(exist_ok=True)
    target.write_text(manpage(build_parser()))
    print(f"wrote {target}")
