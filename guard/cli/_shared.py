"""What several verbs share: the common options, the trusted config file, the kernel handle and
the text-or-JSON output. Imports nothing heavy at load (see the package docstring)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

import click

from .. import jsontext

if TYPE_CHECKING:
    from ..backend.nft import Nft

config_option = click.option(
    "-c", "--config", "config", type=click.Path(dir_okay=False), default=None,
    help="Policy YAML (default: /etc/nodeguard/config.yaml if it exists, else the built-in default).")


def common(func: Callable) -> Callable:
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="Print data as JSON.")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    return wrapper


def trusted_config(config: str | None) -> str | None:
    """The policy file a daemon will use (and re-read trusted), refused before it starts when not
    root's alone (configfile.check_config_file); None: the built-in default."""
    from ..configfile import check_config_file
    from ..policy.load import configured_path

    path = configured_path(config)
    if path is not None:
        check_config_file(path)
    return str(path) if path is not None else None


def kernel() -> Nft:
    from ..backend.nft import Nft, require_net_admin

    require_net_admin()
    return Nft()


def emit(data: Any, as_json: bool, text: str) -> None:
    """``data`` as JSON, where ensure_ascii has escaped every control character (escaping it again
    would change what it says), else ``text``, escaped (show)."""
    if as_json:
        click.echo(jsontext.dumps(data, indent=2, sort_keys=True, ensure_ascii=True))
    else:
        show(text)


def show(text: str) -> None:
    """Every verb's output to a terminal: each line escaped (logs.escape_lines)."""
    from ..logs import escape_lines

    click.echo(escape_lines(text), nl=not text.endswith("\n"))


def reading_plan(policy, nft: Nft):
    """The plan, for reading state: with ``interfaces: auto`` and no default route for now, the set
    names (which do not depend on the interfaces) still come out right."""
    from ..apply import make_plan
    from ..errors import EnvironmentProblem

    try:
        return make_plan(policy, nft)
    except EnvironmentProblem:
        return make_plan(policy, nft, interfaces=("none",))


class Stop(BaseException):
    """SIGTERM: not an error, so the watcher's per-iteration error handling lets it through."""


def raise_stop(signum: int, frame: Any) -> None:
    raise Stop()
