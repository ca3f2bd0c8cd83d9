"""A local Iterable project that follows Iterable's documented API contract.

It owns the server side of what the Iterable destination talks to:
``POST /api/users/bulkUpdate``, ``POST /api/lists/subscribe`` and
``/api/lists/unsubscribe``, ``POST /api/events/trackBulk``, the list
endpoints (``GET /api/lists``, ``POST /api/lists``, ``GET /api/lists/getUsers``)
and the project's user fields (``GET /api/users/getFields``), behind the
``Api-Key`` header. Users, lists and events live in memory; tests
read them back with ``users``, ``members`` and ``events``.

The contract is Iterable's API documentation (https://api.iterable.com/api/docs,
whose request and response shapes and rate limits each handler follows):

- bulk endpoints answer **200 even when some users fail**: ``successCount``,
  ``failCount`` and ``failedUpdates`` list the failing emails and userIds by
  cause — malformed (``invalidEmails`` / ``invalidUserIds``), not found
  (``notFound…``, subscribe and unsubscribe only), a data field of the wrong
  type for the project (``invalidData…``), GDPR-forgotten (``forgotten…``) —
  with the deprecated top-level ``invalidEmails`` / ``invalidUserIds`` as well;
- a field's type is set by the first value it gets (an array's by its items) and
  never changes after; ``getFields`` lists each field with its type (``string``,
  ``long``, ``double``, ``boolean``, ``date``, ``object``);
- ``updateExistingUsersOnly`` subscribes only users that already exist;
- malformed bodies answer 400 ``BadJsonBody`` / ``BadParams``; a wrong key 401
  ``BadApiKey``; bodies over 4 MB, or more than ``max_items`` users or events,
  400 ``BatchTooLarge``;
- documented rate limits per project (bulkUpdate 5/s, trackBulk 10/s,
  getFields 3/s) answer 429 ``RateLimitExceeded`` when exceeded.

Fault knobs, turned while it runs: ``fail_next`` (5xx), ``throttle_next`` (429),
``forget`` (GDPR-forgotten users) and ``disallow_events``; ``on_request`` sees
each request first (the base's hook), so a test can hold one or fault the next.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tidegate.sandbox.server import LocalServer, Reply, exit_on_config_error, serve_forever

__all__ = ["DEFAULT_KEY", "MAX_BODY_BYTES", "IterableSandbox", "main", "serve"]

DEFAULT_KEY = "tidegate-sandbox-iterable-key"
MAX_BODY_BYTES = 4 * 1024 * 1024  # "Max size of request body: 4MB" (users/bulkUpdate)
MAX_ITEMS = 1000  # users or events a bulk request; not stated by Iterable, configurable
# "Rate limit: N requests/second, per project" in each endpoint's documentation.
RATE_LIMITS = {"/api/users/bulkUpdate": 5.0, "/api/events/trackBulk": 10.0,
               "/api/users/getFields": 3.0, "/api/lists": 100.0}
# The identifiers every project has (User Profile Fields Used by Iterable).
_SYSTEM_FIELDS = {"email": "string", "userId": "string"}
_JSON = {"content-type": "application/json"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2}( [+-]\d{2}:\d{2})?)?$")
_FAILED_USERS = ("conflictEmails", "conflictUserIds", "forgottenEmails", "forgottenUserIds",
                 "invalidDataEmails", "invalidDataUserIds", "invalidEmails", "invalidUserIds",
                 "notFoundEmails", "notFoundUserIds")
_FAILED_EVENTS = ("forgottenEmails", "forgottenUserIds", "invalidEmails", "invalidUserIds",
                  "notFoundEmails", "notFoundUserIds")


@dataclass
class _User:
    email: str | None
    user_id: str | None
    data: dict[str, Any] = field(default_factory=dict)
    lists: set[int] = field(default_factory=set)


class _Refusal(Exception):
    def __init__(self, status: int, code: str, msg: str, params: Any = None) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg, self.params = status, code, msg, params

    def reply(self) -> Reply:
        return self.status, dict(_JSON), json.dumps(
            {"msg": self.msg, "code": self.code, "params": self.params}).encode()


class _Failures:
    """The ``failedUpdates`` of one answer, by cause."""

    def __init__(self, causes: tuple[str, ...]) -> None:
        self.by_cause: dict[str, list[str]] = {c: [] for c in causes}
        self.failed = 0

    def add(self, cause: str, ident: str) -> None:
        self.by_cause[cause].append(ident)
        self.failed += 1

    def answer(self, succeeded: int, **extra: Any) -> dict[str, Any]:
        emails = [i for c, ids in self.by_cause.items() if c.endswith("Emails") for i in ids]
        user_ids = [i for c, ids in self.by_cause.items() if c.endswith("UserIds") for i in ids]
        return {"successCount": succeeded, "failCount": self.failed, "invalidEmails": emails,
                "invalidUserIds": user_ids, "filteredOutFields": [], "createdFields": [],
                "failedUpdates": self.by_cause, **extra}


class IterableSandbox(LocalServer):
    """An in-memory, thread-safe Iterable project on ``host:port``; a context manager.

    ``api_key`` is the server-side key it accepts; ``lists`` maps list ids to
    names (a list ``1`` named ``Sandbox list`` by default).
    """

    name = "iterable"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str = DEFAULT_KEY,
        lists: dict[int, str] | None = None,
        max_items: int = MAX_ITEMS,
        rate_limits: dict[str, float] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.api_key = api_key
        self.max_items = max_items
        self.rate_limits = dict(RATE_LIMITS if rate_limits is None else rate_limits)
        self.request_count = 0
        self.requests: list[tuple[str, str, int]] = []  # method, path, items
        self._lock = threading.RLock()
        self._users: list[_User] = []
        self._by_email: dict[str, _User] = {}
        self._by_id: dict[str, _User] = {}
        self._lists: dict[int, str] = dict(lists if lists is not None else {1: "Sandbox list"})
        self._events: dict[str, dict[str, Any]] = {}
        self._field_types: dict[str, str] = {}
        self._forgotten: set[str] = set()
        self._disallowed: set[str] = set()
        self._failures: list[int] = []
        self._throttles = 0
        self._buckets: dict[str, tuple[float, float]] = {}  # path -> (tokens, updated)
        super().__init__(host, port, log)

    # Setup and knobs -------------------------------------------------------------

    def add_list(self, list_id: int, name: str) -> None:
        with self._lock:
            self._lists[list_id] = name

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status`` (a 5xx), applying nothing."""
        with self._lock:
            self._failures = [status] * n

    def throttle_next(self, n: int) -> None:
        """Answer the next ``n`` requests with 429 ``RateLimitExceeded``."""
        with self._lock:
            self._throttles = n

    def forget(self, identifiers: Iterable[str]) -> None:
        """Treat these emails or userIds as GDPR-forgotten (an empty list clears)."""
        with self._lock:
            self._forgotten = {i.lower() for i in identifiers}

    def disallow_events(self, names: Iterable[str]) -> None:
        with self._lock:
            self._disallowed = set(names)

    # Inspection ----------------------------------------------------------------

    def users(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"email": u.email, "userId": u.user_id, "dataFields": dict(u.data),
                     "emailListIds": sorted(u.lists)} for u in self._users]

    def members(self, list_id: int) -> dict[str, dict[str, Any]]:
        """The users on a list, by userId (or email when they have none) → dataFields."""
        with self._lock:
            return {str(u.user_id or u.email): dict(u.data) for u in self._users
                    if list_id in u.lists}

    def events(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._events.items()}

    def calls(self, path: str) -> list[int]:
        """Items per request of every request to ``path``."""
        with self._lock:
            return [n for _, p, n in self.requests if p == path]

    # Requests ------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Reply:
        parts = urlsplit(target)
        path = parts.path
        self.observe(method, path)
        try:
            body = self._parse(path, raw) if method == "POST" else None
            with self._lock:
                self.request_count += 1
                items = next((len(v) for k, v in (body or {}).items()
                              if k in ("users", "subscribers", "events") and isinstance(v, list)),
                             0)
                self.requests.append((method, path, items))
            self._authenticate(headers, path)
            self._admit(path)
            if len(raw) > MAX_BODY_BYTES:
                raise _Refusal(400, "BatchTooLarge", f"[{path}] Request body is larger than "
                                                     "4MB")
            if items > self.max_items:
                raise _Refusal(400, "BatchTooLarge",
                               f"[{path}] At most {self.max_items} items a request")
            return self._route(method, path, parse_qs(parts.query), body)
        except _Refusal as exc:
            self.say(f"refused {method} {path}: {exc.status} {exc.code}")
            return exc.reply()

    def _parse(self, path: str, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise _Refusal(400, "BadJsonBody", f"[{path}] Invalid JSON body") from None
        if not isinstance(body, dict):
            raise _Refusal(400, "BadJsonBody", f"[{path}] Invalid JSON body")
        return body

    def _authenticate(self, headers: dict[str, str], path: str) -> None:
        # "Include the key in an Api-Key or Api_Key header."
        key = headers.get("api-key") or headers.get("api_key")
        if key != self.api_key:
            raise _Refusal(401, "BadApiKey", "Invalid API key",
                           {"ip": "127.0.0.1", "endpoint": path})

    def _admit(self, path: str) -> None:
        with self._lock:
            if self._failures:
                status = self._failures.pop(0)
                raise _Refusal(status, "GenericError", "Service unavailable, try again")
            if self._throttles:
                self._throttles -= 1
                raise _Refusal(429, "RateLimitExceeded", "Rate limit exceeded")
            rate = self.rate_limits.get(path)
            if rate is None:
                return
            now = time.monotonic()
            tokens, updated = self._buckets.get(path, (rate, now))
            tokens = min(rate, tokens + (now - updated) * rate)
            if tokens < 1:
                self._buckets[path] = (tokens, now)
                raise _Refusal(429, "RateLimitExceeded", "Rate limit exceeded")
            self._buckets[path] = (tokens - 1, now)

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               body: dict[str, Any] | None) -> Reply:
        with self._lock:
            if method == "POST" and path == "/api/users/bulkUpdate":
                return _ok(self._bulk_update(_items(body, "users", path)))
            if method == "POST" and path == "/api/lists/subscribe":
                return _ok(self._subscribe(body, path))
            if method == "POST" and path == "/api/lists/unsubscribe":
                return _ok(self._unsubscribe(body, path))
            if method == "POST" and path == "/api/events/trackBulk":
                return _ok(self._track(_items(body, "events", path)))
            if method == "GET" and path == "/api/lists":
                return _ok({"lists": [{"id": i, "name": n, "listType": "Standard",
                                       "createdAt": 1_700_000_000_000}
                                      for i, n in sorted(self._lists.items())]})
            if method == "GET" and path == "/api/users/getFields":
                return _ok({"fields": {**_SYSTEM_FIELDS, **self._field_types}})
            if method == "POST" and path == "/api/lists":
                name = (body or {}).get("name")
                if not isinstance(name, str) or not name:
                    raise _Refusal(400, "BadParams", f"[{path}] name is required")
                new_id = max(self._lists, default=0) + 1
                self._lists[new_id] = name
                return _ok({"listId": new_id})
            if method == "GET" and path == "/api/lists/getUsers":
                list_id = _int((query.get("listId") or [""])[0])
                if list_id not in self._lists:
                    raise _Refusal(400, "BadParams", f"[{path}] list {list_id} not found")
                text = "\n".join(str(u.email or u.user_id) for u in self._users
                                 if list_id in u.lists)
                return 200, {"content-type": "text/plain"}, text.encode()
        raise _Refusal(404, "NotFound", f"[{path}] not found")

    # Users -----------------------------------------------------------------------

    def _bulk_update(self, users: list[dict[str, Any]]) -> dict[str, Any]:
        ok, failures = self._write_users(users, create=True, list_id=None)
        self.say(f"users/bulkUpdate: {ok} updated, {failures.failed} failed")
        return failures.answer(ok)

    def _subscribe(self, body: dict[str, Any] | None, path: str) -> dict[str, Any]:
        list_id = self._list_id(body, path)
        existing_only = bool((body or {}).get("updateExistingUsersOnly"))
        ok, failures = self._write_users(_items(body, "subscribers", path),
                                         create=not existing_only, list_id=list_id)
        self.say(f"lists/subscribe {list_id}: {ok} subscribed, {failures.failed} failed")
        return failures.answer(ok)

    def _write_users(self, items: list[Any], *, create: bool, list_id: int | None
                     ) -> tuple[int, _Failures]:
        """Set each item's dataFields (and list membership); how many succeeded, and why
        the others failed."""
        failures = _Failures(_FAILED_USERS)
        ok = 0
        for item in items:
            found = self._identify(item, failures, create=create)
            if found is None:
                continue
            user, ident, suffix = found
            if not self._set_data(user, item.get("dataFields"), ident, suffix, failures,
                                  merge=bool(item.get("mergeNestedObjects"))):
                continue
            if list_id is not None:
                user.lists.add(list_id)
            ok += 1
        return ok, failures

    def _unsubscribe(self, body: dict[str, Any] | None, path: str) -> dict[str, Any]:
        list_id = self._list_id(body, path)
        failures = _Failures(_FAILED_USERS)
        ok = 0
        for item in _items(body, "subscribers", path):
            found = self._identify(item, failures, create=False)
            if found is not None:
                found[0].lists.discard(list_id)
                ok += 1
        self.say(f"lists/unsubscribe {list_id}: {ok} unsubscribed, {failures.failed} failed")
        return failures.answer(ok)

    def _identify(self, item: Any, failures: _Failures, *, create: bool
                  ) -> tuple[_User, str, str] | None:
        """The user an item names (made if ``create``), or None with the failure noted."""
        if not isinstance(item, dict):
            raise _Refusal(400, "BadJsonBody", "Invalid JSON body: a user must be an object")
        email, user_id = item.get("email"), item.get("userId")
        for name, value in (("email", email), ("userId", user_id)):
            if value is not None and not isinstance(value, str):
                raise _Refusal(400, "BadJsonBody", "Invalid JSON body",
                               {f"obj.{name}": "String value expected"})
        if email is None and user_id is None:
            raise _Refusal(400, "BadParams", "Either email or userId must be provided")
        ident, suffix = (user_id, "UserIds") if user_id is not None else (email, "Emails")
        assert ident is not None
        if suffix == "Emails" and not _EMAIL.match(ident):
            failures.add("invalidEmails", ident)
            return None
        if suffix == "UserIds" and not _valid_user_id(ident):
            failures.add("invalidUserIds", ident)
            return None
        if ident.lower() in self._forgotten:
            failures.add(f"forgotten{suffix}", ident)
            return None
        user = (self._by_id.get(ident) if suffix == "UserIds"
                else self._by_email.get(ident.lower()))
        if user is None:
            if not create:
                failures.add(f"notFound{suffix}", ident)
                return None
            user = _User(email.lower() if email else None, user_id)
            self._users.append(user)
            if user.user_id:
                self._by_id[user.user_id] = user
            if user.email:
                self._by_email[user.email] = user
        return user, ident, suffix

    def _set_data(self, user: _User, data: Any, ident: str, suffix: str, failures: _Failures,
                  *, merge: bool) -> bool:
        if data is None:
            return True
        if not isinstance(data, dict):
            raise _Refusal(400, "BadJsonBody", "Invalid JSON body",
                           {"obj.dataFields": "Object value expected"})
        # "Once set, a field's data type cannot be changed": check every field first.
        for name, value in data.items():
            known = self._field_types.get(name)
            if value is not None and known is not None and not _fits(known, value):
                failures.add(f"invalidData{suffix}", ident)
                return False
        for name, value in data.items():
            kind = _type_of(value)
            if kind is not None:
                self._field_types.setdefault(name, kind)
            if merge and isinstance(value, dict) and isinstance(user.data.get(name), dict):
                user.data[name] = {**user.data[name], **value}
            else:
                user.data[name] = value
        return True

    def _list_id(self, body: dict[str, Any] | None, path: str) -> int:
        list_id = (body or {}).get("listId")
        if not isinstance(list_id, int) or isinstance(list_id, bool):
            raise _Refusal(400, "BadJsonBody", f"[{path}] Invalid JSON body",
                           {"obj.listId": "Long value expected"})
        if list_id not in self._lists:
            raise _Refusal(400, "BadParams", f"[{path}] List {list_id} does not exist")
        return list_id

    # Events ----------------------------------------------------------------------

    def _track(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        failures = _Failures(_FAILED_EVENTS)
        disallowed: list[str] = []
        ok = 0
        for event in events:
            name = event.get("eventName") if isinstance(event, dict) else None
            if not isinstance(name, str) or not name:
                raise _Refusal(400, "BadJsonBody", "Invalid JSON body",
                               {"obj.eventName": "eventName is required"})
            created = event.get("createdAt")
            if created is not None and (not isinstance(created, int) or isinstance(created,
                                                                                   bool)):
                raise _Refusal(400, "BadJsonBody", "Invalid JSON body",
                               {"obj.createdAt": "Long value expected"})
            if name in self._disallowed:
                disallowed.append(name)
                continue
            # An event by email makes its user; an unknown userId is not found.
            found = self._identify(event, failures, create=event.get("userId") is None)
            if found is None:
                continue
            user, _ident, _suffix = found
            event_id = str(event.get("id") or f"evt-{len(self._events) + 1}")
            self._events[event_id] = {
                "eventName": name, "email": user.email, "userId": user.user_id,
                "createdAt": created if created is not None else int(time.time()),
                "dataFields": dict(event.get("dataFields") or {})}
            ok += 1
        self.say(f"events/trackBulk: {ok} tracked, {failures.failed + len(disallowed)} failed")
        answer = failures.answer(ok, disallowedEventNames=sorted(set(disallowed)))
        answer["failCount"] += len(disallowed)
        return answer


def _items(body: dict[str, Any] | None, name: str, path: str) -> list[Any]:
    items = (body or {}).get(name)
    if not isinstance(items, list):
        raise _Refusal(400, "BadJsonBody", f"[{path}] Invalid JSON body",
                       {f"obj.{name}": "Array value expected"})
    return items


def _ok(doc: dict[str, Any]) -> Reply:
    return 200, dict(_JSON), json.dumps(doc).encode()


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _valid_user_id(value: str) -> bool:
    # "Malformed userId values (e.g. empty, too long, or containing non-ASCII or
    # non-printable characters or a trailing space)."
    return bool(value) and len(value) <= 512 and value.isascii() and value.isprintable() \
        and not value.endswith(" ")


def _type_of(value: Any) -> str | None:
    """The type a value gives a new field; None for a null or an array with no items."""
    if value is None:
        return None
    if isinstance(value, list):  # "Iterable also supports arrays for all data types"
        return next((t for t in map(_type_of, value) if t is not None), None)
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "date" if _DATE.match(value) else "string"
    return "object"


def _fits(known: str, value: Any) -> bool:
    if isinstance(value, list):
        return all(_fits(known, v) for v in value if v is not None)
    kind = _type_of(value)
    if kind is None or known in ("geo_location", "nested") or known == kind:
        return True
    if known == "double" and kind == "long":  # a whole number is a valid double
        return True
    # Text is coerced to a date field's type when it parses as one, and vice versa.
    return {known, kind} == {"string", "date"} and known == "string"


def serve(port: int, api_key: str = DEFAULT_KEY, lists: dict[int, str] | None = None) -> None:
    """Run a sandbox project on 127.0.0.1 in the foreground, printing one line per request."""
    def make() -> IterableSandbox:
        return IterableSandbox(port=port, api_key=api_key, lists=lists,
                               log=lambda line: print(line, flush=True))

    def banner(server: IterableSandbox) -> str:
        shown = ", ".join(f"list:{i} ({n})" for i, n in sorted(server._lists.items()))
        return (f"iterable sandbox listening on {server.url}\n"
                f"  base_url: {server.url}\n"
                f"  api_key:  {api_key}\n"
                f"  objects:  users, events, {shown}")

    serve_forever(make, port, banner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tidegate.sandbox.iterable",
                                     description="Run a local Iterable sandbox project.")
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--api-key", default=DEFAULT_KEY)
    args = parser.parse_args(argv)
    exit_on_config_error(lambda: serve(args.port, args.api_key))


if __name__ == "__main__":
    main()
