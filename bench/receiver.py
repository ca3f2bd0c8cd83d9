"""The benchmark's loopback HTTP receiver: it counts deliveries and nothing else.

Owns the sink that every tool under benchmark posts to. It must never be the
bottleneck, so it is an asyncio server on one background thread with HTTP/1.1
keep-alive and TCP_NODELAY, it reads only what framing needs (Content-Length or
chunked bodies), and it answers ``200 {}`` as soon as a body is in. Each body is
parsed as JSON only to count its records: a top-level array, an object's
``records`` list (tidegate's ``tidegate.batch`` document), an object's first
list-valued member (any other batch wrapper), else one record. It parses with
simdjson (pysimdjson), which validates the whole document but makes Python
objects only for what counting reads: a 1,000-record body (about 120 KB) takes
it about 0.07 ms, orjson 0.4 ms (building every record as a dict), the
standard library's parser a millisecond. Any of the latter two would make the
receiver the slowest part of a run with several requests in flight.

    GET  /stats   the counts as JSON
    POST /reset   zero the counts; answers the counts from before
    any other     one delivery: counted, then ``200 {}`` (``400`` if not JSON)

Import it (``CountingReceiver().start()``, ``.url``, ``.counts``, ``.reset()``,
``.stop()``), run it (``python bench/receiver.py --port 8799``), or measure it
(``python bench/receiver.py --check``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from typing import Any

import simdjson

_OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
       b"content-length: 2\r\n\r\n{}")
_OK_CLOSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
             b"content-length: 2\r\nconnection: close\r\n\r\n{}")
# Request heads are small, but the stream's default 64 KiB limit also bounds a
# chunk-size line; a generous limit keeps a malformed client from looking like
# a receiver failure.
_STREAM_LIMIT = 1 << 20


# One parser, reused: the receiver parses on its event loop's thread only.
_PARSER = simdjson.Parser()


def count_records(body: bytes) -> int:
    """How many records one delivery body holds; ``ValueError`` if it is not JSON."""
    if not body.strip():
        return 0
    # The document's proxies must be gone before the parser is used again: they
    # live only in this call.
    doc: Any = _PARSER.parse(body)
    if isinstance(doc, simdjson.Array):
        return len(doc)
    if isinstance(doc, simdjson.Object):
        records = doc.get("records")
        if isinstance(records, simdjson.Array):
            return len(records)
        for value in doc.values():
            if isinstance(value, list):
                return len(value)
    return 1


class CountingReceiver:
    """Counts requests, records and body bytes; ``start()`` serves on a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/ingest") -> None:
        self.host, self.port, self.path = host, port, path
        self.requests = 0
        self.records = 0
        self.bytes = 0
        self.errors = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)
        self._server: asyncio.Server | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """Where tools under benchmark post their batches."""
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def counts(self) -> dict[str, int]:
        """A consistent snapshot of the counters."""
        with self._lock:
            return {"requests": self.requests, "records": self.records, "bytes": self.bytes,
                    "errors": self.errors, "connections": self.connections}

    def reset(self) -> dict[str, int]:
        """Zero the counters; returns what they held."""
        with self._lock:
            before = {"requests": self.requests, "records": self.records, "bytes": self.bytes,
                      "errors": self.errors, "connections": self.connections}
            self.requests = self.records = self.bytes = self.errors = self.connections = 0
        return before

    def start(self) -> CountingReceiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("receiver did not start within 10 s")
        if self._failure is not None:
            raise RuntimeError(f"receiver could not listen: {self._failure}") from self._failure
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        # wait_closed() also waits for open keep-alive connections on newer
        # Pythons, so bound it rather than hang a benchmark on an idle client.
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> CountingReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._serve, self.host, self.port, backlog=512, limit=_STREAM_LIMIT))
        except OSError as exc:
            self._failure = exc
            self._ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Replies are tiny; Nagle would hold each one back for the client's
            # delayed ACK and add ~40 ms to every request.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests: the normal end
                request_line, _, header_block = head[:-4].partition(b"\r\n")
                method, target, version = [*request_line.split(b" "), b"", b""][:3]
                headers: dict[bytes, bytes] = {}
                for line in header_block.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    body = await _read_chunked(reader)
                else:
                    length = int(headers.get(b"content-length", b"0") or b"0")
                    body = await reader.readexactly(length) if length else b""
                connection = headers.get(b"connection", b"").lower()
                close = connection == b"close" or (version == b"HTTP/1.0"
                                                   and connection != b"keep-alive")
                writer.write(self._respond(method, target, body, close))
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def _respond(self, method: bytes, target: bytes, body: bytes, close: bool) -> bytes:
        path = target.split(b"?", 1)[0]
        if path == b"/stats" and method == b"GET":
            return _json_response(200, self.counts, close)
        if path == b"/reset" and method == b"POST":
            return _json_response(200, self.reset(), close)
        try:
            records = count_records(body)
        except ValueError:
            with self._lock:
                self.errors += 1
            return _json_response(400, {"error": "body is not JSON"}, close)
        with self._lock:
            self.requests += 1
            self.records += records
            self.bytes += len(body)
        return _OK_CLOSE if close else _OK


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, if any, end with an empty line like the head does.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _json_response(status: int, doc: Any, close: bool) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    reason = {200: "OK", 400: "Bad Request"}[status]
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json",
             f"content-length: {len(body)}"]
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def throughput_check(requests: int = 200, records: int = 1_000,
                     connections: int = 1) -> dict[str, Any]:
    """Post ``requests`` bodies of ``records`` records over keep-alive sockets; time it.

    The client is a raw socket sending prebuilt requests, so nearly all of the
    measured time is the receiver's: reading, JSON-parsing, counting, replying.
    Bodies alternate between tidegate's document and a bare JSON array.
    """
    row = ('{{"id":{i},"email":"user{i}@example.com","name":"User {i}","score":{s},'
           '"updated_at":"2024-01-01T00:00:00"}}')
    rows = ",".join(row.format(i=i, s=i % 101) for i in range(records))
    bodies = [
        ('{"type":"tidegate.batch","sync":"users","run_id":"r","object":"users",'
         '"operation":"upsert","records":[' + rows + "]}").encode(),
        ("[" + rows + "]").encode(),
    ]
    with CountingReceiver() as receiver:
        messages = [
            (f"POST {receiver.path} HTTP/1.1\r\nhost: {receiver.host}:{receiver.port}\r\n"
             f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
            + body
            for body in bodies
        ]

        def client(share: int) -> None:
            with socket.create_connection((receiver.host, receiver.port)) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for n in range(share):
                    sock.sendall(messages[n % 2])
                    reply = b""
                    while not reply.endswith(b"{}"):
                        chunk = sock.recv(4096)
                        if not chunk:
                            raise ConnectionError("receiver closed the connection")
                        reply += chunk
                    if not reply.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"unexpected reply: {reply[:80]!r}")

        shares = [requests // connections + (1 if i < requests % connections else 0)
                  for i in range(connections)]
        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(share,)) for share in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        counts = receiver.counts
    expected = requests * records
    return {
        "requests": counts["requests"], "records": counts["records"],
        "connections": counts["connections"], "seconds": round(elapsed, 4),
        "requests_per_s": round(requests / elapsed), "records_per_s": round(expected / elapsed),
        "mb_per_s": round(counts["bytes"] / elapsed / 1e6, 1),
        "ok": counts["requests"] == requests and counts["records"] == expected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--check", action="store_true",
                        help="measure 200 requests of 1,000 records (1 and 4 connections), "
                             "print JSON, exit non-zero if any took a second or more")
    args = parser.parse_args()
    if args.check:
        results = [throughput_check(connections=n) for n in (1, 4)]
        print(json.dumps(results))
        sys.exit(0 if all(r["ok"] and r["seconds"] < 1.0 for r in results) else 1)
    receiver = CountingReceiver(args.host, args.port).start()
    print(f"counting at {receiver.url} (GET /stats, POST /reset)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        receiver.stop()


if __name__ == "__main__":
    main()
