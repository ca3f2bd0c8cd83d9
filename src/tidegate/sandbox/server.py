"""The plumbing every local vendor server shares: a threaded HTTP/1.1 server on loopback.

A subclass implements ``handle(method, target, headers, body)`` and returns
``(status, headers, body)``; a status of ``None`` closes the connection
unanswered, as a server (or the network) that dies mid-request would. This
base owns binding, starting and stopping (``down`` / ``up`` keep what the
server holds), keep-alive connections (closed on stop, so a stopped server
really is unreachable and leaves no handler thread behind), the HTTP methods a
server answers (others get 501), the ``on_request`` hook tests hold or fault a
request in, and the foreground ``serve_forever`` loop for ``tidegate sandbox …``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self, TypeVar

from tidegate.errors import ConfigError, Problem

Reply = tuple[int | None, dict[str, str], bytes]  # status None: close without answering
# Called with (method, path) on the server's thread before a request is handled:
# a test blocks there to hold the request, or turns a fault knob for it.
RequestHook = Callable[[str, str], None]
LENGTH_REQUIRED: Reply = (411, {"content-type": "text/plain"}, b"content-length required")
_JOIN_TIMEOUT_S = 5.0
_POLL_S = 0.05  # how fast stop() is noticed; the default 0.5 s slows every test
S = TypeVar("S", bound="LocalServer")


class LocalServer:
    """A server on ``host:port`` (0: any free port); a context manager.

    ``on_request`` is called through ``observe``, which a subclass calls where
    its handling of a request begins, with the path its documentation names.
    """

    name = "local"
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST", "PATCH", "PUT", "DELETE")

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        self.log = log
        self.on_request: RequestHook | None = None
        self._host = host
        self._open: dict[socket.socket, threading.Thread] = {}
        self._open_lock = threading.Lock()
        self._server: _Server | None = self._bind(port)
        self._port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        raise NotImplementedError

    def start(self) -> Self:
        if self._server is None:
            self._server = self._bind(self._port)
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, args=(_POLL_S,),
                                            daemon=True, name=f"tidegate-{self.name}-sandbox")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, close open connections and wait for their threads."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        if thread is not None:
            server.shutdown()
            thread.join()
        server.server_close()
        with self._open_lock:
            open_now = list(self._open.items())
        for conn, _ in open_now:
            with contextlib.suppress(OSError):  # the peer may have closed it already
                conn.shutdown(socket.SHUT_RDWR)
        for _, worker in open_now:
            if worker is not threading.current_thread():
                worker.join(_JOIN_TIMEOUT_S)

    def down(self) -> None:
        """Stop listening, keeping what the server holds: clients get connection refused."""
        self.stop()

    def up(self) -> None:
        """Listen again on the same port after ``down()``."""
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def observe(self, method: str, path: str) -> None:
        """Let ``on_request`` see a request first; it may block, or turn a fault knob."""
        hook = self.on_request
        if hook is not None:
            hook(method, path)

    def _bind(self, port: int) -> _Server:
        return _Server((self._host, port), _handler(self))

    def _opened(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open[conn] = threading.current_thread()

    def _closed(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.pop(conn, None)


def serve_forever(make: Callable[[], S], port: int, banner: Callable[[S], str]) -> None:
    """Run a server in the foreground until Ctrl-C, printing ``banner`` first."""
    try:
        server = make()
    except OSError as exc:
        raise ConfigError(Problem(f"cannot listen on 127.0.0.1:{port} ({exc.strerror})",
                                  key="--port", fix="pick a free port")) from None
    with server:
        print(banner(server), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", flush=True)


def exit_on_config_error(run: Callable[[], None]) -> None:
    """Call ``run``; a ConfigError is printed to stderr and exits with its code.

    For ``python -m tidegate.sandbox.…``; ``tidegate sandbox …`` reports it itself.
    """
    try:
        run()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


class _Server(ThreadingHTTPServer):
    # Handler threads are daemons so a forgotten server never blocks exit;
    # stop() ends and joins them explicitly instead.
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that vanished (killed client, stop()) is routine here, not an error.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _handler(owner: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as destinations' pools expect

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            owner._opened(self.connection)

        def finish(self) -> None:
            owner._closed(self.connection)
            super().finish()

        def _serve(self) -> None:
            length = self.headers.get("content-length", "0")
            if not length.isdigit():
                self._reply(*LENGTH_REQUIRED)
                return
            raw = self.rfile.read(int(length)) if int(length) else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            self._reply(*owner.handle(self.command, self.path, headers, raw))

        def _reply(self, status: int | None, extra: dict[str, str], body: bytes) -> None:
            if status is None:
                self.close_connection = True
                return
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            if status != 204:
                self.send_header("content-length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # servers log one line per event through ``say`` instead

    for method in owner.methods:  # a method not listed gets BaseHTTPRequestHandler's 501
        setattr(Handler, f"do_{method}", Handler._serve)
    return Handler
