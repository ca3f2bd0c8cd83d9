"""The http.client transport behind HTTP destinations, against raw loopback servers.

Each server here is a socket that answers with bytes written out by hand, so the
transport is checked against HTTP/1.1 itself: keep-alive reuse, a peer that closes
an idle connection, ``Connection: close``, chunked and gzip bodies, timeouts,
refused connections and an untrusted certificate.
"""

from __future__ import annotations

import datetime
import gzip
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tidegate.destinations.transport import PooledTransport

Answer = Callable[[int, bytes], bytes | None]  # (request number, request) -> reply or None


class RawServer:
    """Accepts connections and answers each request with ``answer(n, request)``.

    ``None`` closes the connection without a reply. ``close_after_reply`` closes
    every connection after its first reply without saying so, as a server does
    to an idle keep-alive connection.
    """

    def __init__(self, answer: Answer, *, close_after_reply: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.close_after_reply, self.tls = answer, close_after_reply, tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        buffer = b""
        with conn:
            while True:
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                    n = len(self.requests)
                reply = self.answer(n, request)
                if reply is None:
                    return
                conn.sendall(reply)
                if self.close_after_reply:
                    return

    def close(self) -> None:
        self.sock.close()


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def ok(body: bytes = b"{}", *extra: str) -> bytes:
    headers = "".join(f"{h}\r\n" for h in extra)
    return (f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{headers}\r\n").encode() + body


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    transport = PooledTransport()
    with httpx.Client(transport=transport, timeout=httpx.Timeout(5.0)) as c:
        yield c


def test_requests_share_one_keep_alive_connection(client: httpx.Client) -> None:
    server = RawServer(lambda n, _: ok(b'{"n": %d}' % n))
    try:
        url = f"http://127.0.0.1:{server.port}/in"
        for i in range(1, 6):
            response = client.post(url, content=b'{"records": []}',
                                   headers={"webhook-id": f"msg_{i}"})
            assert response.status_code == 200
            assert response.json() == {"n": i}
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /in HTTP/1.1\r\n")
        assert b"webhook-id: msg_1" in first.lower()
        assert first.lower().count(b"\r\nhost: ") == 1  # httpx's Host, not a second one
        assert first.endswith(b'{"records": []}')
    finally:
        server.close()


def test_a_connection_the_server_closed_while_idle_is_replaced(client: httpx.Client) -> None:
    server = RawServer(lambda n, _: ok(b"%d" % n), close_after_reply=True)
    try:
        url = f"http://127.0.0.1:{server.port}/"
        assert client.post(url, content=b"a").text == "1"
        # The pooled connection is dead by now; the request goes out again on a new one.
        assert client.post(url, content=b"b").text == "2"
        assert server.connections == 2
        assert len(server.requests) == 2
    finally:
        server.close()


def test_connection_close_is_not_reused(client: httpx.Client) -> None:
    server = RawServer(lambda n, _: ok(b"x", "connection: close"), close_after_reply=True)
    try:
        url = f"http://127.0.0.1:{server.port}/"
        for _ in range(3):
            assert client.get(url).status_code == 200
        assert server.connections == 3
    finally:
        server.close()


def test_chunked_and_gzip_bodies_are_decoded(client: httpx.Client) -> None:
    packed = gzip.compress(b'{"results": [{"key": 1, "status": "rejected"}]}')
    chunked = (b"HTTP/1.1 207 Multi-Status\r\ntransfer-encoding: chunked\r\n"
               b"content-encoding: gzip\r\ncontent-type: application/json\r\n\r\n"
               + b"%x\r\n" % 10 + packed[:10] + b"\r\n"
               + b"%x\r\n" % (len(packed) - 10) + packed[10:] + b"\r\n0\r\n\r\n")
    server = RawServer(lambda n, _: chunked)
    try:
        response = client.post(f"http://127.0.0.1:{server.port}/", content=b"{}")
        assert response.status_code == 207
        assert response.json() == {"results": [{"key": 1, "status": "rejected"}]}
        assert response.headers["content-type"] == "application/json"
    finally:
        server.close()


def test_a_silent_server_times_out() -> None:
    hold = threading.Event()
    server = RawServer(lambda n, _: (hold.wait(5), None)[1])
    try:
        with httpx.Client(transport=PooledTransport(),
                          timeout=httpx.Timeout(0.3, connect=1.0)) as c, \
                pytest.raises(httpx.TimeoutException):
            c.post(f"http://127.0.0.1:{server.port}/", content=b"{}")
    finally:
        hold.set()
        server.close()


def test_a_server_that_hangs_up_without_answering_is_a_transport_error(
        client: httpx.Client) -> None:
    server = RawServer(lambda n, _: None)
    try:
        with pytest.raises(httpx.TransportError):
            client.post(f"http://127.0.0.1:{server.port}/", content=b"{}")
    finally:
        server.close()


def test_nothing_listening_is_a_connect_error(client: httpx.Client) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        client.post(f"http://127.0.0.1:{port}/", content=b"{}")


def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    context = _self_signed(tmp_path)
    server = RawServer(lambda n, _: ok(b"secret"), tls=context)
    try:
        with httpx.Client(transport=PooledTransport(verify=True)) as c, \
                pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            c.post(f"https://127.0.0.1:{server.port}/", content=b"{}")
        with httpx.Client(transport=PooledTransport(verify=False)) as c:
            assert c.post(f"https://127.0.0.1:{server.port}/", content=b"{}").text == "secret"
    finally:
        server.close()


def _self_signed(tmp_path: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context
