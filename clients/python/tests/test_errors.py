"""Every typed error a test can provoke on a real server, and the mapping of problems to
classes (unknown slugs to the base class)."""

from __future__ import annotations

import uuid
from typing import Any, Dict

import httpx
import pytest

import creditd
from conftest import SERVICE_KEY, Server


def test_insufficient_credits_carries_the_problem(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    service.wallet.credit(user_id, 3)
    with pytest.raises(creditd.InsufficientCreditsError) as caught:
        service.wallet.debit(user_id, 5)
    error = caught.value
    assert isinstance(error, creditd.CreditdError)
    assert (error.status, error.slug, error.title) == (
        402,
        "insufficient-credits",
        "Insufficient credits",
    )
    assert error.detail == "5 credits are required but only 3 can be spent"
    assert error.body["required"] == 5 and error.body["type"] == error.type
    assert error.request_id
    assert error.pool_available is None
    # A reservation is refused the same way, before anything is held.
    with pytest.raises(creditd.InsufficientCreditsError):
        service.reservations.reserve(user_id, 4)
    assert service.reservations.list_open(user_id)["reservations"] == []


def test_idempotency_key_reused(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    key = f"key-{uuid.uuid4()}"
    first = service.wallet.credit(user_id, 5, idempotency_key=key)
    again = service.wallet.credit(user_id, 5, idempotency_key=key)
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["entry_id"] == first["entry_id"]
    with pytest.raises(creditd.IdempotencyKeyReusedError) as caught:
        service.wallet.credit(user_id, 6, idempotency_key=key)
    assert caught.value.status == 422
    assert service.wallet.get(user_id)["balance"] == 5


def test_not_found_errors(service: creditd.Creditd, admin: creditd.Creditd) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"
    with pytest.raises(creditd.UserNotFoundError) as user:
        service.wallet.debit(ghost, 1)
    assert user.value.status == 404
    with pytest.raises(creditd.ReservationNotFoundError):
        service.reservations.capture("rsv_999999999")
    with pytest.raises(creditd.PoolNotFoundError):
        admin.pools.get(f"no-pool-{uuid.uuid4().hex[:6]}")
    with pytest.raises(creditd.PackageNotFoundError):
        service.billing.get_package(f"no-package-{uuid.uuid4().hex[:6]}")
    # A problem type without a class of its own is the base class, with its slug.
    with pytest.raises(creditd.CreditdError) as action:
        service.billing.get_action(f"no-action-{uuid.uuid4().hex[:6]}")
    assert type(action.value) is creditd.CreditdError
    assert action.value.slug == "action-not-found" and action.value.status == 404


def test_reservation_closed(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    service.wallet.credit(user_id, 10)
    hold = service.reservations.reserve(user_id, 6, ttl_seconds=60)
    assert service.wallet.get(user_id)["available"] == 4
    captured = service.reservations.capture(hold["reservation_id"], 2)
    assert (captured["charged"], captured["released"], captured["balance"]) == (2, 4, 8)
    with pytest.raises(creditd.ReservationClosedError) as caught:
        service.reservations.capture(hold["reservation_id"])
    assert caught.value.status == 409 and caught.value.closed_as == "captured"
    with pytest.raises(creditd.ReservationClosedError):
        service.reservations.release(hold["reservation_id"])


def test_unknown_action_and_currency(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    service.wallet.credit(user_id, 10)
    with pytest.raises(creditd.UnknownActionError) as action:
        service.wallet.debit(user_id, action=f"nope-{uuid.uuid4().hex[:6]}")
    assert action.value.status == 422
    with pytest.raises(creditd.UnknownCurrencyError) as currency:
        service.wallet.debit(user_id, 1, currency="zorkmids")
    assert currency.value.currency == "zorkmids"
    assert service.wallet.get(user_id)["balance"] == 10


def test_grant_cap_exceeded(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    with pytest.raises(creditd.GrantCapExceededError) as caught:
        service.wallet.credit(user_id, 10_001)
    error = caught.value
    assert error.status == 403 and error.cap == 10_000 and error.requested == 10_001
    assert isinstance(error.granted_today, int)


def test_unauthorized_forbidden_and_invalid(
    server: Server, service: creditd.Creditd, user_id: str
) -> None:
    with creditd.Creditd(server.base_url, "not-a-key") as stranger:
        with pytest.raises(creditd.UnauthorizedError) as unauthorized:
            stranger.me()
    assert unauthorized.value.status == 401
    with pytest.raises(creditd.ForbiddenError) as forbidden:
        service.billing.put_action("py-forbidden", 1)
    assert forbidden.value.status == 403
    # A service key naming another tenant is refused too.
    with pytest.raises(creditd.ForbiddenError):
        service.with_options(tenant="someone-else").me()
    service.users.put(user_id)
    with pytest.raises(creditd.InvalidRequestError) as invalid:
        service.wallet.debit(user_id, 0)
    assert invalid.value.status == 422 and invalid.value.field == "amount"
    with pytest.raises(creditd.InvalidRequestError) as both:
        service.wallet.debit(user_id, 1, action="x")
    assert both.value.slug == "invalid-request"


def test_a_malformed_request_is_an_invalid_request_error(server: Server) -> None:
    with creditd.Creditd(server.base_url, SERVICE_KEY) as client:
        # A control character in a path segment (sent percent-encoded) is a 400.
        with pytest.raises(creditd.InvalidRequestError) as malformed:
            client.wallet.get("bad\x01id")
        assert malformed.value.status == 400 and malformed.value.slug == "malformed-request"
        # A key the server cannot take is a 422 naming the field.
        with pytest.raises(creditd.InvalidRequestError) as invalid:
            client.wallet.credit("anyone", 1, idempotency_key="a key with spaces")
        assert invalid.value.status == 422 and invalid.value.field == "idempotency_key"


def test_no_answer_is_a_connection_error() -> None:
    # A port nobody listens on: refused at once, retried, then reported.
    client = creditd.Creditd(
        "http://127.0.0.1:9", SERVICE_KEY, max_retries=2, backoff_initial_seconds=0.01
    )
    with pytest.raises(creditd.CreditdConnectionError) as caught:
        client.me()
    assert caught.value.attempts == 3
    assert not isinstance(caught.value, creditd.CreditdError)


def problem(status: int, slug: str, **extra: Any) -> httpx.Response:
    body: Dict[str, Any] = {
        "type": f"https://creditd.dev/problems/{slug}",
        "title": slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": f"a {slug}",
        **extra,
    }
    return httpx.Response(status, json=body, headers={"content-type": "application/problem+json"})


@pytest.mark.parametrize(
    ("status", "slug", "cls"),
    [
        (402, "insufficient-credits", creditd.InsufficientCreditsError),
        (422, "idempotency-key-reused", creditd.IdempotencyKeyReusedError),
        (409, "idempotency-key-in-flight", creditd.IdempotencyKeyInFlightError),
        (404, "user-not-found", creditd.UserNotFoundError),
        (409, "reservation-closed", creditd.ReservationClosedError),
        (404, "reservation-not-found", creditd.ReservationNotFoundError),
        (422, "unknown-action", creditd.UnknownActionError),
        (422, "unknown-currency", creditd.UnknownCurrencyError),
        (403, "grant-cap-exceeded", creditd.GrantCapExceededError),
        (404, "pool-not-found", creditd.PoolNotFoundError),
        (404, "package-not-found", creditd.PackageNotFoundError),
        (401, "unauthorized", creditd.UnauthorizedError),
        (403, "forbidden", creditd.ForbiddenError),
        (422, "invalid-request", creditd.InvalidRequestError),
        (400, "malformed-request", creditd.InvalidRequestError),
        (503, "server-busy", creditd.ServerBusyError),
        (503, "log-backpressure", creditd.ServerBusyError),
        (500, "write-outcome-unknown", creditd.WriteOutcomeUnknownError),
        (418, "a-problem-from-the-future", creditd.CreditdError),
        (409, "conflict", creditd.CreditdError),
    ],
)
def test_each_problem_type_maps_to_its_class(status: int, slug: str, cls: type) -> None:
    transport = httpx.MockTransport(lambda request: problem(status, slug, field="amount"))
    client = creditd.Creditd("http://creditd.test", SERVICE_KEY, max_retries=0, transport=transport)
    with pytest.raises(creditd.CreditdError) as caught:
        client.wallet.get("ada")
    assert type(caught.value) is cls
    assert caught.value.slug == slug and caught.value.status == status
    assert caught.value.detail == f"a {slug}" and caught.value.body["field"] == "amount"


def test_an_error_that_is_not_a_problem_document() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="<html>bad gateway"))
    client = creditd.Creditd("http://creditd.test", SERVICE_KEY, max_retries=0, transport=transport)
    with pytest.raises(creditd.CreditdError) as caught:
        client.me()
    assert caught.value.status == 502 and caught.value.slug == ""


def test_a_success_that_is_not_json_is_an_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>portal</html>"))
    client = creditd.Creditd("http://creditd.test", SERVICE_KEY, transport=transport)
    with pytest.raises(creditd.CreditdError) as caught:
        client.me()
    assert caught.value.status == 200 and "portal" in caught.value.detail
