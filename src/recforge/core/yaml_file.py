"""YAML files read with the line of every key, so a bad value is reported at its line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from recforge.core.errors import DataError


def key_lines(text: str) -> dict[tuple, int]:
    """Line (1-based) of every mapping key and list item of a YAML document, by its path of keys
    and list positions."""
    lines: dict[tuple, int] = {}

    def walk(node, prefix):
        children: list[tuple[str | int, yaml.Node, yaml.Node]]
        if isinstance(node, yaml.MappingNode):
            children = [(str(key.value), key, value) for key, value in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(i, item, item) for i, item in enumerate(node.value)]
        else:
            return
        for key, marked, value in children:  # `marked`: the node whose line is the key's
            lines[prefix + (key,)] = marked.start_mark.line + 1
            walk(value, prefix + (key,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def read_yaml(path: Path, what: str) -> tuple[Any, dict[tuple, int]]:
    """A YAML document and the lines of its keys; a file that is not YAML text is a DataError."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text), key_lines(text)
    except UnicodeDecodeError:
        raise DataError(path, None, None, f"not {what} (not UTF-8 text)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DataError(
            path, mark.line + 1 if mark else None, None, f"invalid YAML: {getattr(e, 'problem', e)}"
        ) from None
