"""The `mirrorsync` command (`bin/mirrorsync`, `python -m mirrorsync`): the quick
check, then, unless it finished the run, the full CLI with what the check learned.
The CLI is imported only when the run needs it, and the quick check never imports
the CLI."""

import sys

from mirrorsync.environment import Environment
from mirrorsync.quick import try_quick


def main() -> int:
    env = Environment()
    try:
        outcome = try_quick(sys.argv[1:], env)
    except KeyboardInterrupt:
        from mirrorsync.cli import interrupted

        return interrupted(env)
    if outcome.status is not None:
        return outcome.status
    from mirrorsync import cli

    return cli.main(env=env, outcome=outcome)


if __name__ == "__main__":
    sys.exit(main())
