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
    except RecursionError:  # PyYAML's pure-Python composer, without libyaml's nesting limit
        raise PolicyError(file, None, "", f"invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    if node is None:
        return Document(file, {}, {})
    _measure(node, file)
    lines: dict[Path, int] = {}
    return Document(file, _convert(node, (), lines, file, yaml.constructor.SafeConstructor()), lines)


MAX_DEPTH = 32  # a policy nests 5 levels; deeper is refused well before Python's recursion limit
MAX_ALIAS_VALUES = 10_000  # values aliases may add to the document's own: a nested-alias bomb is refused
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _measure(root: yaml.Node, file: str) -> None:
    """Refuse a document nested deeper than MAX_DEPTH, or whose aliases would add more than
    MAX_ALIAS_VALUES values, from the composed node graph, where an alias is one shared node: one
    visit per distinct node, before anything is expanded."""
    size: dict[int, int] = {}  # id(node) -> its values once expanded

    def deep(node: yaml.Node) -> PolicyError:
        return PolicyError(file, node.start_mark.line + 1, "", f"nested more than {MAX_DEPTH} levels deep")

    def visit(node: yaml.Node, depth: int) -> int:
        if id(node) not in size:
            if depth > MAX_DEPTH:
                raise deep(node)
            children = (node.value if isinstance(node, yaml.SequenceNode) else
                        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            total = 1
            for child in children:  # a scalar (10,000 in a big allowlist) here, without a call of its own
                if not isinstance(child, yaml.ScalarNode):
                    total += visit(child, depth + 1)
                    continue
                if id(child) not in size:
                    if depth + 1 > MAX_DEPTH:
                        raise deep(child)
                    size[id(child)] = 1
                total += 1
            size[id(node)] = total
        return size[id(node)]

    if visit(root, 0) - len(size) > MAX_ALIAS_VALUES:
        raise PolicyError(file, root.start_mark.line + 1, "",
                          f"aliases would add more than {MAX_ALIAS_VALUES} values to the document")


def _convert(node: yaml.Node, path: Path, lines: dict[Path, int], file: str,
             constructor: yaml.constructor.SafeConstructor) -> Any:
    line = node.start_mark.line + 1
    lines[path] = line
    if not isinstance(node, yaml.ScalarNode) and node.tag not in _PLAIN:
        raise PolicyError(file, line, dotted(path), f"the tag {node.tag[:40]!r} is not allowed")
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                raise PolicyError(file, key_node.start_mark.line + 1, dotted(path), "merge keys (<<) are not supported")
            key = _scalar(key_node, constructor, file, path)
            if not isinstance(key, str):
                raise PolicyError(file, key_node.start_mark.line + 1, dotted(path), f"key {key!r} is not a string")
            if key in out:
                raise PolicyError(file, key_node.start_mark.line + 1, dotted(path + (key,)), "duplicate key")
            out[key] = _convert(value_node, path + (key,), lines, file, constructor)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        out_list = []
        for i, item in enumerate(node.value):
            if isinstance(item, yaml.ScalarNode) and item.tag == _STR:  # a CIDR, a name: without a call of its own
                lines[path + (i,)] = item.start_mark.line + 1
                out_list.append(item.value)
            else:
                out_list.append(_convert(item, path + (i,), lines, file, constructor))
        return out_list
    return _scalar(node, constructor, file, path)


def _scalar(node: yaml.Node, constructor: yaml.constructor.SafeConstructor, file: str, path: Path) -> Any:
    """A scalar's value with YAML's safe type rules (int, bool, null, str ...)."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    if node.tag == _STR:
        return node.value  # most scalars (CIDRs, names): no constructor needed
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:  # an unknown tag (!!python/...)
        raise PolicyError(file, node.start_mark.line + 1, dotted(path),
                          f"invalid YAML value: {getattr(exc, 'problem', exc)}") from None
    except (ValueError, OverflowError) as exc:  # a malformed timestamp (2024-13-45), an int over 4300 digits
        raise PolicyError(file, node.start_mark.line + 1, dotted(path),
                          f"not a valid {node.tag.rsplit(':', 1)[-1]}: {exc}") from None
