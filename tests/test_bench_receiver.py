"""The benchmark's counting receiver: the records it counts are the figures `make bench` reports."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from receiver import CountingReceiver, count_records


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"type":"tidegate.batch","records":[{"key":"1"},{"key":"2"},{"key":"3"}]}', 3),
        (b'[{"id":1},{"id":2}]', 2),
        (b'{"batch_id":"b","items":[1,2,3,4]}', 4),  # another tool's wrapper
        (b'{"records":"not a list","data":[1,2]}', 2),
        (b'{"id":1,"email":"a@example.com"}', 1),  # one record per request
        (b"  ", 0),
    ],
)
def test_it_counts_the_records_of_each_body_shape(body: bytes, expected: int) -> None:
    assert count_records(body) == expected


@pytest.mark.parametrize("body", [b'{"records":[1,2,}', b"\xff\xfe", b'{"a":1} trailing'])
def test_a_body_that_is_not_json_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        count_records(body)


def test_bodies_one_after_another_reuse_the_parser() -> None:
    # A document still referenced would make the next parse fail.
    for n in range(1, 50):
        assert count_records(b"[" + b",".join([b"{}"] * n) + b"]") == n


def test_over_http_it_counts_keeps_connections_alive_and_refuses_garbage() -> None:
    with CountingReceiver() as receiver, httpx.Client() as client:
        for n in (1000, 10):
            body = b'{"records":[' + b",".join(b'{"key":"%d"}' % i for i in range(n)) + b"]}"
            assert client.post(receiver.url, content=body).status_code == 200
        assert client.post(receiver.url, content=b"{nope").status_code == 400
        counts = receiver.counts
        assert counts["requests"] == 2 and counts["records"] == 1010
        assert counts["errors"] == 1 and counts["connections"] == 1

        # A chunked body is read to its end before it is counted.
        def chunks() -> object:
            yield b"[1,2,"
            yield b"3]"

        assert client.post(receiver.url, content=chunks()).status_code == 200  # type: ignore[arg-type]
        assert receiver.counts["records"] == 1013
        assert receiver.reset()["records"] == 1013 and receiver.counts["records"] == 0


def test_a_client_that_closes_mid_body_is_not_counted() -> None:
    with CountingReceiver() as receiver:
        with socket.create_connection((receiver.host, receiver.port)) as sock:
            sock.sendall(b"POST /ingest HTTP/1.1\r\ncontent-length: 100\r\n\r\n[1,2")
        with httpx.Client() as client:
            assert client.get(f"http://{receiver.host}:{receiver.port}/stats").json()[
                "requests"] == 0
