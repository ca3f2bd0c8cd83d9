"""Request and response bodies checked against a vendor's published OpenAPI 3.0 documents.

A local server that follows a vendor's API (``sandbox/hubspot.py``) routes
requests itself, then asks ``Contract`` whether a body is what the vendor's
document allows for that method, path and status: the vendor's word, not ours,
so the server cannot drift from the real API. Schemas are checked with
``jsonschema`` (draft 4, which OpenAPI 3.0's schema objects follow); ``$ref``\\s
resolve inside the document they were found in.

The documents ship with tidegate (``sandbox/specs/``), unchanged from the
vendor. ``jsonschema`` comes with the ``sandbox`` extra; without it, creating a
``Contract`` raises ``ConfigError`` with the install command.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote

from tidegate.errors import ConfigError, Problem

INSTALL_HINT = "pip install 'tidegate[sandbox]'"
_METHODS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class _Route:
    document: str  # the URI its $refs resolve against
    template: str
    pattern: re.Pattern[str]
    literal_segments: int  # more literal segments: a more specific route
    operation: dict[str, Any]


def load_documents(folder: str) -> dict[str, dict[str, Any]]:
    """Every ``*.json`` document under ``tidegate/sandbox/specs/<folder>``, by file name."""
    root = resources.files("tidegate.sandbox").joinpath("specs", folder)
    return {entry.name: json.loads(entry.read_text(encoding="utf-8"))
            for entry in sorted(root.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".json")}


class Contract:
    """The operations of one or more OpenAPI documents, ready to check bodies against."""

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        try:
            import jsonschema
            from referencing import Registry, Resource
            from referencing.jsonschema import DRAFT4
        except ImportError:
            raise ConfigError(Problem(
                "the local HubSpot server checks requests against HubSpot's OpenAPI documents "
                "with jsonschema, which is not installed",
                fix=INSTALL_HINT)) from None
        self._jsonschema = jsonschema
        registry: Any = Registry()
        self._routes: list[_Route] = []
        for name, document in documents.items():
            uri = f"urn:tidegate:spec:{name}"
            registry = registry.with_resource(
                uri, Resource.from_contents(document, default_specification=DRAFT4))
            for template, item in document.get("paths", {}).items():
                for method, operation in item.items():
                    if method in _METHODS:
                        self._routes.append(_route(uri, template, method, operation))
        self._registry = registry
        self._validators: dict[str, Any] = {}

    def operation(self, method: str, path: str) -> tuple[str, str, dict[str, Any]] | None:
        """(document URI, path template, operation) of the most specific matching route."""
        method = method.lower()
        best: _Route | None = None
        for route in self._routes:
            if route.pattern.fullmatch(f"{method} {path}") is None:
                continue
            if best is None or route.literal_segments > best.literal_segments:
                best = route
        return None if best is None else (best.document, best.template, best.operation)

    def request_problems(self, method: str, path: str, body: Any) -> list[str]:
        """What is wrong with ``body`` for ``method path``; empty when the document allows it."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method.upper()} {path} is not an operation of the API"]
        uri, template, operation = found
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            return []
        pointer = _pointer("paths", template, method.lower(), "requestBody", "content",
                           "application/json", "schema")
        return self._problems(uri, pointer, body)

    def response_problems(self, method: str, path: str, status: int, body: Any) -> list[str]:
        """What is wrong with a response ``body`` for ``method path`` answered with ``status``."""
        found = self.operation(method, path)
        if found is None:
            return [f"{method.upper()} {path} is not an operation of the API"]
        uri, template, operation = found
        responses = operation.get("responses", {})
        code = str(status) if str(status) in responses else "default"
        response = responses.get(code)
        if response is None:
            return [f"status {status} is not a documented answer of {method.upper()} {template}"]
        prefix: tuple[str, ...] = ("paths", template, method.lower(), "responses", code)
        if "$ref" in response:  # a shared response (components/responses/Error)
            prefix = tuple(response["$ref"].removeprefix("#/").split("/"))
            response = self._resolve(uri, response["$ref"])
        content = response.get("content") or {}
        if not content:
            return [] if body is None else [f"status {status} of {template} has no body"]
        # The documents declare some media types as */*; the schema is what counts.
        media = next(iter(content))
        return self._problems(uri, _pointer(*prefix, "content", media, "schema"), body)

    def _resolve(self, uri: str, ref: str) -> Any:
        return self._registry.resolver(base_uri=uri).lookup(ref).contents

    def _problems(self, uri: str, pointer: str, body: Any) -> list[str]:
        key = f"{uri}#{pointer}"
        validator = self._validators.get(key)
        if validator is None:
            validator = self._jsonschema.Draft4Validator({"$ref": key},
                                                         registry=self._registry)
            self._validators[key] = validator
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        return [f"{_where(e.absolute_path)}: {e.message}" for e in errors[:20]]


def _route(uri: str, template: str, method: str, operation: dict[str, Any]) -> _Route:
    parts = []
    literal = 0
    for segment in template.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            parts.append("[^/]+")
        else:
            parts.append(re.escape(segment))
            literal += 1
    pattern = re.compile(f"{method} /" + "/".join(parts))
    return _Route(uri, template, pattern, literal, operation)


def _pointer(*parts: str) -> str:
    escaped = (p.replace("~", "~0").replace("/", "~1") for p in parts)
    return "/" + "/".join(quote(p, safe="~") for p in escaped)


def _where(path: Any) -> str:
    out = "body"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out
