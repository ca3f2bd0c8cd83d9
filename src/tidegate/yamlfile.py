"""Reads a YAML file into plain data, remembering the line of every key.

Configuration errors must name file, line and key, so loading keeps a map from
each key path (``("syncs", "aps", "source")``) to its line. Strings are
interpolated from the environment here (``${VAR}``, ``${VAR:-default}``,
``$$`` for a literal ``$``), so a missing variable is reported where it is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tidegate.errors import Problem

Path_ = tuple[str | int, ...]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass
class YamlDoc:
    """A loaded YAML document: its data, the line of each key path, its problems."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    env_vars: set[str] = field(default_factory=set)
    unresolved: set[Path_] = field(default_factory=set)

    def line_of(self, path: Path_) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def load_yaml(path: Path, display: str, env: Mapping[str, str] | None = None) -> YamlDoc:
    """Load ``path``; YAML syntax errors become problems, never exceptions."""
    doc = YamlDoc(file=display, data=None)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        doc.problems.append(Problem(f"cannot read the file ({exc.strerror})", file=display))
        return doc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        doc.problems.append(
            Problem(
                f"invalid YAML: {problem}",
                file=display,
                line=mark.line + 1 if mark else None,
                fix="check the indentation and quoting on that line",
            )
        )
        return doc
    finally:
        loader.dispose()
    if node is None:
        doc.data = {}
        return doc
    walker = _Walker(doc, loader, os.environ if env is None else env)
    doc.data = walker.walk(node, ())
    return doc


class _Walker:
    def __init__(self, doc: YamlDoc, loader: yaml.SafeLoader, env: Mapping[str, str]) -> None:
        self.doc, self.loader, self.env = doc, loader, env

    def walk(self, node: yaml.Node, path: Path_) -> Any:
        self.doc.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            return self._interpolate(value, path, node.start_mark.line + 1)
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.loader.construct_object(key_node, deep=True)
            key = str(key) if not isinstance(key, str) else key
            line = key_node.start_mark.line + 1
            if key in out:
                self.doc.problems.append(
                    Problem(
                        "key given twice",
                        file=self.doc.file,
                        line=line,
                        key=_dotted((*path, key)),
                        fix="keep one of them",
                    )
                )
                continue
            self.doc.lines[(*path, key)] = line
            out[key] = self.walk(value_node, (*path, key))
        return out

    def _interpolate(self, text: str, path: Path_, line: int) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            self.doc.env_vars.add(name)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                self.doc.unresolved.add(path)
                self.doc.problems.append(
                    Problem(
                        f"environment variable {name} is not set",
                        file=self.doc.file,
                        line=line,
                        key=_dotted(path),
                        fix=f"export {name}=... before running, or give a default: "
                        f"${{{name}:-value}}",
                    )
                )
                return ""
            return value

        return _VAR.sub(replace, text)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)
