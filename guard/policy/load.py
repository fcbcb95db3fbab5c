"""Finding and reading the policy: the file given, else /etc/nodeguard/config.yaml, else the built-in
default; a validation error comes back as ``FILE:LINE: field.path: message`` (pydantic's error
location mapped back to the YAML line).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import pydantic

from ..configfile import read_config, read_regular
from ..errors import PolicyError
from ..yamlsource import load_document
from .fields import too_many
from .schema import Policy

DEFAULT_CONFIG = Path("/etc/nodeguard/config.yaml")
BUILT_IN = "<built-in rules/default.yaml>"


def configured_path(config: str | Path | None) -> Path | None:
    """The policy file the operator configured: ``config`` (-c), else /etc/nodeguard/config.yaml if
    it exists. None: the built-in default (shipped in the package, nothing to refuse)."""
    if config is not None:
        return Path(config)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_policy(path: str | Path | None = None, *, trusted: bool = False) -> tuple[Policy, str]:
    """Read the policy from ``path``, else /etc/nodeguard/config.yaml, else the built-in default.
    ``trusted``: for the verbs that change the firewall, a file someone other than root could have
    written is refused (configfile.read_config), and what is parsed is what was checked.

    Returns the policy and the name of the file it came from.
    """
    policy, source, _text = read_policy(path, trusted=trusted)
    return policy, source


def read_policy(path: str | Path | None = None, *, trusted: bool = False) -> tuple[Policy, str, str]:
    """As load_policy, plus the text it was parsed from."""
    path = configured_path(path)
    if path is None:
        text = resources.files("guard.rules").joinpath("default.yaml").read_text()
        return parse_policy(text, BUILT_IN), BUILT_IN, text
    try:
        data = read_config(path)[0] if trusted else read_regular(path)
        text = data.decode()
    except OSError as exc:
        raise PolicyError(str(path), None, "", exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise PolicyError(str(path), None, "", f"not UTF-8 text (byte {exc.start})") from None
    return parse_policy(text, str(path)), str(path), text


def parse_policy(text: str, file: str) -> Policy:
    """The policy in ``text``, or PolicyError: whatever the text holds, nothing else is raised, so a
    reloading daemon always falls back to the policy it has."""
    try:
        return _parse(text, file)
    except PolicyError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a gap in the checks above
        raise PolicyError(file, None, "", f"cannot be read: {exc}") from None


def _parse(text: str, file: str) -> Policy:
    doc = load_document(text, file)
    if not isinstance(doc.data, dict):
        raise doc.error((), "the policy must be a mapping of keys to values")
    try:
        return Policy.model_validate(doc.data)
    except pydantic.ValidationError as exc:
        located = [(tuple(p for p in e["loc"] if not _is_union_tag(p)), e) for e in exc.errors()]
        # a union's most specific complaint: the deepest, and a wrong value before "not the literal"
        loc, err = max(located, key=lambda pair: (len(pair[0]), pair[1]["type"] != "literal_error"))
        raise doc.error(loc, _message(err)) from None


def _is_union_tag(part: Any) -> bool:
    """pydantic puts the tried union member in the location ('literal[...]', 'tuple[...]')."""
    return isinstance(part, str) and ("[" in part or part in ("function-before", "function-after"))


def _message(err: dict) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "too_long":
        return too_many(err["ctx"]["actual_length"], err["ctx"]["max_length"])
    return msg
