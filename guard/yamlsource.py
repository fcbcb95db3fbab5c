"""The only YAML reader: plain data plus the line of every field, so errors can name it.

PyYAML's ``safe_load`` forgets where values came from and silently keeps the
last of two duplicate keys; we compose the node tree ourselves to keep both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from .errors import PolicyError

Path = tuple  # of str keys and int list indices


@dataclass(frozen=True)
class Document:
    """Parsed YAML: ``data`` and the 1-based line of every path in it."""

    file: str
    data: Any
    lines: dict[Path, int]

    def line_of(self, path: Path) -> int | None:
        """Line of ``path``, or of its nearest parent that exists (a missing key)."""
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, path: Path, message: str) -> PolicyError:
        return PolicyError(self.file, self.line_of(path), dotted(path), message)


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster on big allowlists
_STR = "tag:yaml.org,2002:str"


def load_document(text: str, file: str) -> Document:
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise PolicyError(file, line, "", f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(file, None, "", f"invalid YAML: {exc}") from None
    lines: dict[Path, int] = {}
    budget = [MAX_NODES]
    data = _convert(node, (), lines, file, yaml.constructor.SafeConstructor(), budget) if node is not None else {}
    return Document(file, data, lines)


MAX_NODES = 1_000_000  # values after aliases are expanded: a nested-alias bomb is refused, not built
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _convert(node: yaml.Node, path: Path, lines: dict[Path, int], file: str,
             constructor: yaml.constructor.SafeConstructor, budget: list[int]) -> Any:
    line = node.start_mark.line + 1
    budget[0] -= 1
    if budget[0] < 0:
        raise PolicyError(file, line, dotted(path), f"more than {MAX_NODES} values once aliases are expanded")
    lines[path] = line
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN:
        raise PolicyError(file, line, dotted(path), f"the tag {node.tag[:40]!r} is not allowed")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                raise PolicyError(file, key_node.start_mark.line + 1, dotted(path), "merge keys (<<) are not supported")
            key = _scalar(key_node, constructor, file)
            if not isinstance(key, str):
                raise PolicyError(file, key_node.start_mark.line + 1, dotted(path), f"key {key!r} is not a string")
            if key in out:
                raise PolicyError(file, key_node.start_mark.line + 1, dotted(path + (key,)), "duplicate key")
            out[key] = _convert(value_node, path + (key,), lines, file, constructor, budget)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), lines, file, constructor, budget) for i, item in enumerate(node.value)]
    return _scalar(node, constructor, file)


def _scalar(node: yaml.Node, constructor: yaml.constructor.SafeConstructor, file: str) -> Any:
    """A scalar's value with YAML's safe type rules (int, bool, null, str ...)."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == _STR:
        return node.value  # most scalars (CIDRs, names): no constructor needed
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:  # an unknown tag (!!python/...), a malformed timestamp ...
        raise PolicyError(file, node.start_mark.line + 1, "", f"invalid YAML value: {getattr(exc, 'problem', exc)}") from None
