"""``nodeguard`` verbs. Each error becomes one line on stderr and an exit code:
0 ok, 1 runtime failure, 2 bad input or cannot run here (the kernel is untouched in both).

The group loads a verb's module only when that verb runs (or ``--help`` lists it), and each verb
imports the policy, model, renderers and backends inside its body: ``nodeguard --version`` and
``--help`` import click and nothing heavy (bench/startup.py measures it).

| module | verbs |
|---|---|
| ``ruleset`` | check, apply, status, uninstall |
| ``bans`` | ban, bans, unban |
| ``daemon`` | watch, run, sample, healthz |
| ``review`` | report, tune |
| ``demo`` | demo |
"""

from __future__ import annotations

import gc
import importlib
import sys

import click

from ..errors import NodeguardError, PolicyError

# verb -> "module:function", relative to this package
VERBS = {
    "check": "ruleset:check", "apply": "ruleset:apply", "status": "ruleset:status", "uninstall": "ruleset:uninstall_cmd",
    "ban": "bans:ban", "bans": "bans:bans", "unban": "bans:unban",
    "watch": "daemon:watch", "run": "daemon:run", "sample": "daemon:sample", "healthz": "daemon:healthz",
    "report": "review:report", "tune": "review:tune",
    "demo": "demo:demo",
}


# One-shot verbs: what their process allocates (imports, the policy, the render: ~53,000 tracked
# objects, ~83,000 with 10,000 allow CIDRs) lives until it exits, so the cyclic garbage collector's
# passes are pure cost there (~8 ms of an apply of the default policy, ~35 ms with 10,000 allow CIDRs).
# report frees what it reads as it goes, by reference counts (records and tallies hold no cycles),
# while the passes rescan its bounded tallies: half of a million-source report's time (issue 19).
# main() starts with it off; every other verb (the daemons, the other log readers) turns it back on.
ONE_SHOT = frozenset({"check", "apply", "status", "ban", "bans", "unban", "uninstall", "healthz", "report"})


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented pattern)."""

    def __init__(self, *args, lazy_subcommands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_subcommands and cmd_name not in self.commands:
            module, name = self.lazy_subcommands[cmd_name].split(":")
            self.add_command(getattr(importlib.import_module(f"{__name__}.{module}"), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy_subcommands=VERBS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nodeguard")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Host-level DoS protection for Kubernetes nodes."""
    if ctx.invoked_subcommand not in ONE_SHOT:
        gc.enable()


_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2


def _fail(message: str, code: int) -> None:
    from ..logs import escape

    click.echo(escape(message), err=True)
    sys.exit(code)


def main() -> None:
    gc.disable()  # see ONE_SHOT
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except _HELP as exc:  # no verb: the help
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:  # a usage error: one line, as bad input is everywhere
        _fail(f"nodeguard: {exc.format_message()}", exc.exit_code)
    except NodeguardError as exc:
        _fail(str(exc) if isinstance(exc, PolicyError) else f"nodeguard: {exc}", exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
