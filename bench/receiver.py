"""A loopback HTTP receiver for benchmarks that must never be the bottleneck.

asyncio streams on one thread, HTTP/1.1 keep-alive, TCP_NODELAY, and no
parsing beyond what is needed to count records: the body's JSON is loaded only
to count its records (a top-level list, or the list under ``records``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
from typing import Any


class CountingReceiver:
    """Counts requests and records; ``start()`` runs it on a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.requests = 0
        self.records = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/ingest"

    def reset(self) -> None:
        self.requests = self.records = 0

    def start(self) -> CountingReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, self.host, self.port, backlog=512))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                body = await reader.readexactly(length) if length else b""
                self.requests += 1
                self.records += _count(body)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                             b"content-type: application/json\r\n\r\n{}")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _count(body: bytes) -> int:
    if not body:
        return 0
    doc: Any = json.loads(body)
    if isinstance(doc, list):
        return len(doc)
    if isinstance(doc, dict) and isinstance(doc.get("records"), list):
        return len(doc["records"])
    return 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    receiver = CountingReceiver(port=args.port).start()
    print(f"counting at {receiver.url}", flush=True)
    threading.Event().wait()
