"""The HTTP plumbing every local vendor server shares, over real loopback connections."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tidegate.sandbox.hubspot import HubSpotSandbox
from tidegate.sandbox.iterable import IterableSandbox
from tidegate.sandbox.salesforce import API_VERSION, SalesforceSandbox
from tidegate.sandbox.server import LocalServer, Reply
from tidegate.sandbox.webhook import WebhookReceiver


class Echo(LocalServer):
    """Answers each request with its method and path; ``/drop`` is never answered."""

    name = "echo"
    methods = ("GET", "POST")

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        if target == "/drop":
            return None, {}, b""
        if target == "/empty":
            return 204, {}, b""
        return 200, {"content-type": "text/plain"}, f"{method} {target} {len(body)}".encode()


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as server:
        yield server


@contextlib.contextmanager
def connect(server: LocalServer) -> Iterator[http.client.HTTPConnection]:
    host, port = server.url.removeprefix("http://").split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def test_requests_share_one_keep_alive_connection_until_stop_closes_it(echo: Echo) -> None:
    with connect(echo) as conn:
        for body in (b"", b"abc"):
            conn.request("POST", "/x", body=body)
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, f"POST /x {len(body)}".encode())
        sock = conn.sock
        assert sock is not None
        echo.stop()
        assert sock.recv(1) == b""  # the server ended the idle connection, not the client
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(echo.url.rsplit(":", 1)[1])), timeout=5)


def test_down_refuses_connections_and_up_listens_on_the_same_port(echo: Echo) -> None:
    url = echo.url
    echo.down()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/x")
    echo.up()
    assert echo.url == url and httpx.get(f"{url}/x").text == "GET /x 0"


def test_a_reply_without_status_closes_the_connection_unanswered(echo: Echo) -> None:
    with connect(echo) as conn:
        conn.request("GET", "/drop")
        with pytest.raises(http.client.RemoteDisconnected):
            conn.getresponse()
    assert httpx.get(f"{echo.url}/x").status_code == 200  # the server itself is fine


def test_a_204_carries_no_body_and_keeps_the_connection(echo: Echo) -> None:
    with connect(echo) as conn:
        conn.request("GET", "/empty")
        answer = conn.getresponse()
        assert answer.status == 204 and answer.getheader("content-length") is None
        assert answer.read() == b""
        conn.request("GET", "/x")
        assert conn.getresponse().read() == b"GET /x 0"


def test_methods_a_server_does_not_list_are_not_implemented(echo: Echo) -> None:
    assert httpx.put(f"{echo.url}/x", content=b"{}").status_code == 501
    assert httpx.delete(f"{echo.url}/x").status_code == 501


def test_a_body_of_unstated_length_is_refused_with_411(echo: Echo) -> None:
    with connect(echo) as conn:
        conn.putrequest("POST", "/x")
        conn.putheader("content-length", "lots")
        conn.endheaders()
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (411, b"content-length required")


# Each server, a request its on_request hook sees, and the path the hook is given.
Case = tuple[Callable[[], LocalServer], str, str, str]
CASES: dict[str, Case] = {
    "webhook": (WebhookReceiver, "POST", "/hooks/tidegate", "/hooks/tidegate"),
    "hubspot": (HubSpotSandbox, "GET", "/crm/v3/objects/contacts?limit=1",
                "/crm/v3/objects/contacts"),
    "iterable": (IterableSandbox, "GET", "/api/lists", "/api/lists"),
    # Salesforce's hook sees REST calls, by their path after the version.
    "salesforce": (SalesforceSandbox, "GET", f"/services/data/v{API_VERSION}/limits", "/limits"),
}


@pytest.mark.parametrize("name", CASES)
def test_on_request_sees_and_can_hold_each_request(name: str) -> None:
    make, method, target, path = CASES[name]
    seen: list[tuple[str, str]] = []
    held, release = threading.Event(), threading.Event()

    def hold(method: str, path: str) -> None:
        seen.append((method, path))
        held.set()
        release.wait(10)

    answers: list[Any] = []
    with make() as server:
        server.on_request = hold
        base = server.url.removesuffix("/hooks/tidegate")
        client = threading.Thread(target=lambda: answers.append(
            httpx.request(method, f"{base}{target}", content=b"{}" if method == "POST" else None,
                          timeout=10)))
        client.start()
        assert held.wait(10)
        client.join(0.2)
        assert client.is_alive() and answers == []  # held inside the server
        release.set()
        client.join(10)
        server.on_request = None
        httpx.request(method, f"{base}{target}", content=b"{}" if method == "POST" else None)
    assert seen == [(method, path)]
    assert len(answers) == 1 and answers[0].status_code >= 400  # no credentials, no batch
