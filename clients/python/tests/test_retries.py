"""Retries and idempotency: what is retried, with which key, for how long; and a retry across a
server crash that must not charge twice."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable, List
from urllib.parse import urlsplit

import httpx
import pytest

import creditd
from conftest import SERVICE_KEY, Server
from proxy import CrashingProxy

DEBIT_ANSWER = {
    "entry_id": "ent_7",
    "charged": 5,
    "from_wallet": 5,
    "from_pool": 0,
    "balance": 5,
    "available": 5,
}


def scripted(
    answers: List[Callable[[httpx.Request], httpx.Response]], seen: List[httpx.Request]
) -> httpx.MockTransport:
    """A transport that answers the n-th request with the n-th script (the last one repeats)."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = answers[min(len(seen), len(answers)) - 1]
        return step(request)

    return httpx.MockTransport(handle)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def drop(request: httpx.Request) -> httpx.Response:
    raise httpx.RemoteProtocolError(
        "Server disconnected without sending a response.", request=request
    )


def time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def problem(
    status: int, slug: str, retry_after: str = ""
) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/problem+json"}
        if retry_after:
            headers["retry-after"] = retry_after
        body = {
            "type": f"https://creditd.dev/problems/{slug}",
            "title": slug,
            "status": status,
            "detail": slug,
        }
        return httpx.Response(status, json=body, headers=headers)

    return answer


def ok(replayed: bool) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"idempotent-replayed": "true"} if replayed else {}
        return httpx.Response(200, json=DEBIT_ANSWER, headers=headers)

    return answer


def client_for(transport: httpx.MockTransport, **options: float) -> creditd.Creditd:
    settings = {"backoff_initial_seconds": 0.01, **options}
    return creditd.Creditd("http://creditd.test", SERVICE_KEY, transport=transport, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failure",
    [
        refuse,
        drop,
        time_out,
        problem(409, "idempotency-key-in-flight"),
        problem(503, "server-busy"),
        problem(500, "write-outcome-unknown"),
    ],
)
def test_a_retry_sends_the_same_key_and_body(
    failure: Callable[[httpx.Request], httpx.Response],
) -> None:
    seen: List[httpx.Request] = []
    client = client_for(scripted([failure, failure, ok(replayed=True)], seen))
    answer = client.wallet.debit("ada", 5, description="one image")
    assert answer["replayed"] is True and answer["charged"] == 5
    assert len(seen) == 3
    keys = {request.headers["idempotency-key"] for request in seen}
    assert len(keys) == 1 and len(keys.pop()) == 36
    assert {request.content for request in seen} == {b'{"amount":5,"description":"one image"}'}


def test_each_call_has_its_own_key_unless_the_caller_gives_one() -> None:
    seen: List[httpx.Request] = []
    client = client_for(scripted([ok(replayed=False)], seen))
    first = client.wallet.debit("ada", 5)
    client.wallet.debit("ada", 5)
    client.wallet.debit("ada", 5, idempotency_key="order-42")
    assert first["replayed"] is False
    keys = [request.headers["idempotency-key"] for request in seen]
    assert keys[0] != keys[1] and keys[2] == "order-42"
    # Reads, PUTs and DELETEs carry no key.
    client.wallet.get("ada")
    client.users.put("ada", email="ada@example.com")
    client.billing.delete_action("gone")
    assert all("idempotency-key" not in request.headers for request in seen[3:])


@pytest.mark.parametrize(
    ("status", "slug"),
    [
        (402, "insufficient-credits"),
        (422, "invalid-request"),
        (404, "user-not-found"),
        (409, "reservation-closed"),
        (401, "unauthorized"),
        (500, "internal"),
        (502, "gateway-error"),
    ],
)
def test_other_errors_are_not_retried(status: int, slug: str) -> None:
    seen: List[httpx.Request] = []
    client = client_for(scripted([problem(status, slug, retry_after="1"), ok(False)], seen))
    with pytest.raises(creditd.CreditdError) as caught:
        client.wallet.debit("ada", 5)
    assert caught.value.status == status and len(seen) == 1


def test_retries_stop_after_max_retries() -> None:
    seen: List[httpx.Request] = []
    client = client_for(scripted([problem(409, "idempotency-key-in-flight")], seen), max_retries=2)
    with pytest.raises(creditd.IdempotencyKeyInFlightError):
        client.wallet.debit("ada", 5)
    assert len(seen) == 3
    seen.clear()
    no_retries = client.with_options(max_retries=0)
    with pytest.raises(creditd.IdempotencyKeyInFlightError):
        no_retries.wallet.debit("ada", 5)
    assert len(seen) == 1


def test_retry_after_is_honoured() -> None:
    seen: List[httpx.Request] = []
    client = client_for(
        scripted([problem(503, "log-backpressure", retry_after="0.4"), ok(False)], seen)
    )
    started = time.monotonic()
    client.wallet.debit("ada", 5)
    assert time.monotonic() - started >= 0.4 and len(seen) == 2


def test_the_timeout_bounds_the_whole_call() -> None:
    seen: List[httpx.Request] = []
    # Each answer asks for a second's wait: with half a second in all, no retry fits.
    client = client_for(scripted([problem(503, "server-busy", retry_after="1")], seen), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(creditd.ServerBusyError) as caught:
        client.wallet.debit("ada", 5)
    assert time.monotonic() - started < 0.5 and len(seen) == 1
    assert caught.value.retry_after == 1.0
    # Backoff within the budget: several attempts, ended by the timeout, not by the count.
    seen.clear()
    patient = client_for(
        scripted([refuse], seen), timeout=0.3, max_retries=1000, backoff_max_seconds=0.05
    )
    started = time.monotonic()
    with pytest.raises(creditd.CreditdConnectionError) as refused:
        patient.me(timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.6 and 3 <= len(seen) == refused.value.attempts


def test_a_per_call_timeout_reaches_the_transport() -> None:
    seen: List[httpx.Request] = []
    client = client_for(scripted([ok(False)], seen))
    client.wallet.get("ada", timeout=2.5)
    timeouts = seen[0].extensions["timeout"]
    assert 0 < timeouts["read"] <= 2.5


@pytest.mark.anyio
async def test_the_async_client_retries_alike() -> None:
    seen: List[httpx.Request] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            return problem(500, "write-outcome-unknown")(request)
        return ok(replayed=True)(request)

    client = creditd.AsyncCreditd(
        "http://creditd.test",
        SERVICE_KEY,
        transport=httpx.MockTransport(handle),
        backoff_initial_seconds=0.01,
    )
    answer = await client.wallet.debit("ada", 5)
    assert answer["replayed"] is True and len(seen) == 3
    assert len({request.headers["idempotency-key"] for request in seen}) == 1
    await client.aclose()


def is_debit(seen_request: object) -> bool:
    return seen_request.method == "POST" and seen_request.target.endswith("/debit")


def test_a_retry_across_a_crash_charges_once(fresh_server: Server, user_id: str) -> None:
    """The debit reaches the server and is applied; the server's answer never reaches the client
    (its connection is dropped and the server SIGKILLed); the client's retry, with the same key,
    reaches the restarted server, which answers from its idempotency table."""
    setup = creditd.Creditd(fresh_server.base_url, SERVICE_KEY)
    setup.users.put(user_id)
    setup.wallet.credit(user_id, 100)
    setup.close()

    proxy = CrashingProxy(fresh_server)
    try:
        with creditd.Creditd(proxy.url, SERVICE_KEY, timeout=60) as client:
            assert client.wallet.get(user_id)["balance"] == 100
            proxy.crash_after(is_debit)
            answer = client.wallet.debit(user_id, 30, description="one video")
            assert proxy.crashes == 1
            assert answer["replayed"] is True
            assert (answer["charged"], answer["balance"]) == (30, 70)
            assert client.wallet.get(user_id)["balance"] == 70
            debits = client.wallet.entries(user_id, kind="debit")["entries"]
            assert len(debits) == 1 and debits[0]["entry_id"] == answer["entry_id"]
    finally:
        proxy.close()
    sent = [request for request in proxy.seen if is_debit(request)]
    assert len(sent) == 2, "the first attempt, then one retry"
    assert sent[0].headers["idempotency-key"] == sent[1].headers["idempotency-key"]
    assert sent[0].body == sent[1].body
    assert json.loads(sent[0].body) == {"amount": 30, "description": "one video"}


@pytest.mark.anyio
async def test_an_async_retry_across_a_crash_charges_once(
    fresh_server: Server, user_id: str
) -> None:
    async with creditd.AsyncCreditd(fresh_server.base_url, SERVICE_KEY) as setup:
        await setup.users.put(user_id)
        await setup.wallet.credit(user_id, 50)
        hold = await setup.reservations.reserve(user_id, 20)
    proxy = CrashingProxy(fresh_server)
    try:
        async with creditd.AsyncCreditd(proxy.url, SERVICE_KEY, timeout=60) as client:
            proxy.crash_after(lambda seen: seen.target.endswith("/capture"))
            captured = await client.reservations.capture(hold["reservation_id"], 12)
            assert proxy.crashes == 1 and captured["replayed"] is True
            assert (captured["charged"], captured["released"], captured["balance"]) == (12, 8, 38)
            wallet = await client.wallet.get(user_id)
            assert (wallet["balance"], wallet["reserved"]) == (38, 0)
    finally:
        proxy.close()


def test_a_real_503_is_a_server_busy_error_and_is_retried(workdir: Path, user_id: str) -> None:
    """A server whose body budget is one body: while a slow client holds it, a debit is refused
    with 503 server-busy; once the budget is free, the client's retry goes through."""
    data = workdir / f"busy-{user_id}"
    data.mkdir()
    server = Server(
        data,
        env={"CREDITD_SERVER__MAX_BODY_BYTES": "4096", "CREDITD_SERVER__BODY_BUDGET_BYTES": "4096"},
    )
    server.start()
    try:
        with creditd.Creditd(server.base_url, SERVICE_KEY) as client:
            client.users.put(user_id)
            client.wallet.credit(user_id, 10)
            hog = hold_body_budget(server.base_url, 4096)
            with pytest.raises(creditd.ServerBusyError) as busy:
                client.wallet.debit(user_id, 1, timeout=0.5)
            assert (busy.value.status, busy.value.slug, busy.value.retry_after) == (
                503,
                "server-busy",
                1.0,
            )
            # The same call with time to wait: the hog lets go meanwhile, the retry passes.
            threading.Timer(0.3, hog.close).start()
            started = time.monotonic()
            answer = client.wallet.debit(user_id, 1, timeout=5)
            assert time.monotonic() - started >= 1.0, "waited for Retry-After"
            assert answer["balance"] == 9 and answer["replayed"] is False
    finally:
        server.stop()


def hold_body_budget(base_url: str, length: int) -> socket.socket:
    """Starts a request declaring a body of ``length`` bytes and sends only part of it."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    hog = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"POST /v1/users/hog/debit HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {SERVICE_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    hog.sendall(head.encode() + b'{"amount":')
    time.sleep(0.2)  # the server has read the head and holds the budget
    return hog
