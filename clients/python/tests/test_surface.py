"""Every group of the client against a real server: each call reaches its route and its answer
has the documented shape."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

import creditd
from conftest import SERVICE_KEY, Server
from sandbox import submit_checkout


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_me_and_health(
    service: creditd.Creditd, admin: creditd.Creditd, platform: creditd.Creditd
) -> None:
    assert service.me() == {"name": "dev-service", "role": "service", "tenant": "default"}
    assert admin.me()["role"] == "admin"
    assert platform.me()["role"] == "platform"
    assert service.health.live() == "ok\n"
    assert service.health.ready().startswith("ready")
    assert service.health.health().startswith("ready")
    assert "creditd_debits_total" in service.health.metrics()
    assert service.health.openapi().startswith("openapi: 3.1.0")


def test_users(service: creditd.Creditd) -> None:
    prefix = unique("py-users")
    # An id that needs percent-encoding in the path.
    email_id = f"{prefix}-ada@example.com"
    created = service.users.put(
        email_id, email="ada@example.com", name="Ada", metadata={"plan": "pro", "seats": 3}
    )
    assert created["user_id"] == email_id and created["metadata"] == {"plan": "pro", "seats": 3}
    assert service.users.get(email_id)["email"] == "ada@example.com"
    # PATCH merges metadata; None removes a member, and clears a field.
    merged = service.users.update(email_id, metadata={"seats": None, "trial": True})
    assert merged["metadata"] == {"plan": "pro", "trial": True} and merged["name"] == "Ada"
    cleared = service.users.put(email_id, name=None)
    assert cleared["name"] is None and cleared["email"] == "ada@example.com"
    with pytest.raises(creditd.UserNotFoundError):
        service.users.update(f"{prefix}-nobody", name="x")
    for n in range(3):
        service.users.put(f"{prefix}-{n}")
    page = service.users.list(prefix=prefix, limit=2)
    assert len(page["users"]) == 2 and page["next_cursor"] is not None
    everyone = [u["user_id"] for u in service.users.iterate(prefix=prefix, page_size=2)]
    assert everyone == sorted([email_id, f"{prefix}-0", f"{prefix}-1", f"{prefix}-2"])


def test_wallet_calls(service: creditd.Creditd, admin: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    assert service.wallet.credit(user_id, 40, reference="welcome")["balance"] == 40
    topup = admin.wallet.credit(user_id, 10, kind="topup", reason="paid by bank transfer")
    assert topup["balance"] == 50
    dry = service.wallet.debit(user_id, 5, dry_run=True)
    assert dry.get("dry_run") is True and "entry_id" not in dry and dry["balance"] == 45
    debited = service.wallet.debit(user_id, 5, metadata={"job": 1})
    assert debited["from_wallet"] == 5 and debited["from_pool"] == 0
    revoked = admin.wallet.revoke(user_id, 5, reason="granted by mistake")
    assert (revoked["kind"], revoked["balance"]) == ("revoke", 40)
    wallet = admin.wallet.set_overdraft(user_id, 20)
    assert wallet["overdraft_limit"] == 20 and wallet["spendable"] == 60
    assert service.wallet.debit(user_id, 50)["balance"] == -10
    admin.wallet.set_overdraft(user_id, 10)
    view = service.wallet.get(user_id, currency="credits")
    assert (view["balance"], view["available"], view["status"]) == (-10, -10, "empty")
    assert view["balances"][0]["currency"] == "credits"

    other = f"{user_id}-b"
    service.users.put(other)
    service.wallet.credit(other, 3)
    key = str(uuid.uuid4())
    batch = service.wallet.debit_batch(
        [
            {"user_id": other, "amount": 2, "idempotency_key": key},
            {"user_id": other, "amount": 2},
            {"user_id": unique("ghost"), "amount": 1},
        ]
    )
    statuses = [r["status"] for r in batch["results"]]
    assert statuses == [200, 402, 404] and batch["results"][0]["replayed"] is False
    assert batch["results"][1]["type"].endswith("/insufficient-credits")
    again = service.wallet.debit_batch([{"user_id": other, "amount": 2, "idempotency_key": key}])
    assert again["results"][0]["replayed"] is True
    assert service.wallet.get(other)["balance"] == 1

    kinds = [e["kind"] for e in service.wallet.entries(user_id, limit=50)["entries"]]
    assert kinds == ["debit", "revoke", "debit", "topup", "grant"]
    grants = service.wallet.entries(user_id, kind="grant")["entries"]
    assert len(grants) == 1 and grants[0]["reference"] == "welcome"
    now = datetime.now(timezone.utc)
    window = service.wallet.entries(
        user_id,
        from_=(now - timedelta(hours=1)).isoformat(),
        to=(now + timedelta(hours=1)).isoformat(),
        limit=2,
    )
    assert len(window["entries"]) == 2 and window["next_cursor"] is not None
    assert len(list(service.wallet.iterate_entries(user_id, page_size=2))) == 5
    token = service.wallet.stream_token(user_id)
    assert token["token"] and token["expires_at"]


def test_the_wallet_stream(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    service.wallet.credit(user_id, 9)
    events = service.wallet.stream(user_id)
    first = next(events)
    assert first["wallet"]["balance"] == 9 and first["id"] is not None
    service.wallet.debit(user_id, 4)
    second = next(events)
    assert second["wallet"]["balance"] == 5 and int(second["id"] or 0) > int(first["id"] or 0)
    events.close()  # type: ignore[attr-defined]


@pytest.mark.anyio
async def test_the_wallet_stream_async(server: Server, user_id: str) -> None:
    async with creditd.AsyncCreditd(server.base_url, SERVICE_KEY) as client:
        await client.users.put(user_id)
        await client.wallet.credit(user_id, 3)
        async for event in client.wallet.stream(user_id):
            assert event["wallet"]["balance"] == 3
            break


def test_reservations(service: creditd.Creditd, admin: creditd.Creditd, user_id: str) -> None:
    action = unique("py-minute")
    admin.billing.put_action(action, 4)
    service.users.put(user_id)
    service.wallet.credit(user_id, 40)
    hold = service.reservations.reserve(user_id, action=action, quantity=3, ttl_seconds=60)
    assert hold["amount"] == 12 and hold["available"] == 28 and hold["replayed"] is False
    dry = service.reservations.reserve(user_id, 10, dry_run=True)
    assert dry.get("dry_run") is True and "reservation_id" not in dry
    rid = hold["reservation_id"]
    assert service.reservations.get(rid)["state"] == "open"
    assert [
        r["reservation_id"] for r in service.reservations.list_open(user_id)["reservations"]
    ] == [rid]
    extended = service.reservations.extend(rid, 600)
    assert extended["reservation_id"] == rid and extended["expires_at"] > hold["expires_at"]
    released = service.reservations.release(rid)
    assert (released["released"], released["available"]) == (12, 40)
    assert service.reservations.get(rid)["state"] == "released"
    second = service.reservations.reserve(user_id, 10)
    captured = service.reservations.capture(second["reservation_id"], 15, description="ran long")
    assert (captured["charged"], captured["released"], captured["balance"]) == (15, 0, 25)


def test_billing_catalogue_and_auto_topup(
    service: creditd.Creditd, admin: creditd.Creditd, user_id: str
) -> None:
    action = unique("py-action")
    put = admin.billing.put_action(action, 3, description="three credits")
    assert put == {
        "action": action,
        "cost": 3,
        "currency": "credits",
        "description": "three credits",
    }
    assert service.billing.get_action(action) == put
    assert action in [a["action"] for a in service.billing.list_actions()["actions"]]
    admin.billing.delete_action(action)
    with pytest.raises(creditd.CreditdError) as gone:
        service.billing.get_action(action)
    assert gone.value.slug == "action-not-found"

    package_id = unique("py-pack")
    package = admin.billing.put_package(
        package_id, name="Pack", credits=500, price_minor=200_000, price_currency="NGN", position=3
    )
    assert package["position"] == 3 and package["price_currency"] == "NGN"
    assert service.billing.get_package(package_id) == package
    assert package_id in [p["package_id"] for p in service.billing.list_packages()["packages"]]
    hidden = admin.billing.put_package(
        package_id,
        name="Pack",
        credits=500,
        price_minor=200_000,
        price_currency="NGN",
        active=False,
    )
    assert hidden["active"] is False
    service.users.put(user_id, email=f"{user_id}@example.com")
    bootstrap = service.billing.bootstrap(user_id)
    assert bootstrap["wallet"]["user_id"] == user_id
    assert package_id not in [p["package_id"] for p in bootstrap["available_packages"]]
    admin.billing.put_package(
        package_id, name="Pack", credits=500, price_minor=200_000, price_currency="NGN"
    )

    rule = admin.billing.put_auto_topup(
        user_id,
        threshold=10,
        package_id=package_id,
        payment_method="sandbox_card_ok",
        max_per_day=2,
    )
    assert rule["enabled"] is True and rule["threshold"] == 10 and rule["max_per_day"] == 2
    assert service.billing.get_auto_topup(user_id)["package_id"] == package_id
    assert admin.billing.delete_auto_topup(user_id) == {"deleted": True}
    admin.billing.delete_package(package_id)
    with pytest.raises(creditd.PackageNotFoundError):
        service.billing.get_package(package_id)


def test_payments(service: creditd.Creditd, admin: creditd.Creditd, user_id: str) -> None:
    package_id = unique("py-pay")
    admin.billing.put_package(
        package_id, name="Pay", credits=30, price_minor=1_500, price_currency="USD"
    )
    service.users.put(user_id, email=f"{user_id}@example.com")
    first = service.payments.initialize(user_id, package_id, idempotency_key=f"order-{user_id}")
    again = service.payments.initialize(user_id, package_id, idempotency_key=f"order-{user_id}")
    assert again["reference"] == first["reference"]
    abandoned = admin.payments.abandon(first["reference"])
    assert abandoned["status"] == "failed" and abandoned["failure_reason"] == "abandoned"
    second = service.payments.initialize(user_id, package_id, email="payer@example.com")
    submit_checkout(second["checkout_url"])
    payment = service.payments.get(second["reference"])
    assert payment["status"] == "succeeded" and payment["entry_id"]
    listed = service.payments.list(user_id, status="succeeded")["payments"]
    assert [p["reference"] for p in listed] == [second["reference"]]
    assert len(service.payments.list(user_id, limit=1)["payments"]) == 1


def test_pools(service: creditd.Creditd, admin: creditd.Creditd, user_id: str) -> None:
    pool_id = unique("py-pool")
    pool = admin.pools.put(pool_id, name="Engineering")
    assert pool["pool_id"] == pool_id and pool["balance"] == 0 and pool["currency"] == "credits"
    credited = admin.pools.credit(pool_id, 100, reason="Q3 prepaid", reference="PO-1")
    assert credited["balance"] == 100 and credited["replayed"] is False
    service.users.put(user_id)
    member = admin.pools.set_member(user_id, pool_id, daily_cap=30)
    assert member["pool_id"] == pool_id and member["daily_cap"] == 30
    assert service.pools.get_member(user_id)["available_to_user"] == 30
    service.wallet.credit(user_id, 5)
    debited = service.wallet.debit(user_id, 15)
    assert (debited["from_wallet"], debited["from_pool"]) == (5, 10)
    with pytest.raises(creditd.InsufficientCreditsError) as short:
        service.wallet.debit(user_id, 25)
    assert short.value.pool_available == 20
    assert admin.pools.get(pool_id)["balance"] == 90
    assert pool_id in [p["pool_id"] for p in admin.pools.list()["pools"]]
    assert admin.pools.members(pool_id)["members"][0]["user_id"] == user_id
    kinds = [e["kind"] for e in admin.pools.entries(pool_id, user_id=user_id)["entries"]]
    assert kinds == ["draw"]
    assert admin.pools.remove_member(user_id) == {"deleted": True}
    with pytest.raises(creditd.CreditdError) as none:
        service.pools.get_member(user_id)
    assert none.value.slug == "pool-member-not-found"


def test_reports_and_audit(service: creditd.Creditd, admin: creditd.Creditd, user_id: str) -> None:
    action = unique("py-report")
    admin.billing.put_action(action, 2)
    service.users.put(user_id)
    service.wallet.credit(user_id, 20)
    service.wallet.debit(user_id, action=action, quantity=3)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    window = {
        "from_": (now - timedelta(hours=1)).isoformat(),
        "to": (now + timedelta(hours=1)).isoformat(),
    }
    mine = service.reports.usage(user_id=user_id, **window)
    assert mine["total_credits"] == 6 and len(mine["rows"]) == 1
    assert (
        mine["rows"][0]["key"],
        mine["rows"][0]["credits"],
        mine["rows"][0].get("quantity"),
    ) == (action, 6, 3)
    by_user = admin.reports.usage(group_by="user", **window)
    assert [(r["count"], r["credits"]) for r in by_user["rows"] if r["key"] == user_id] == [(1, 6)]
    revenue = admin.reports.revenue(group_by="currency", **window)
    assert isinstance(revenue["rows"], list) and revenue["from"] and revenue["to"]
    with pytest.raises(creditd.ForbiddenError):
        service.reports.revenue()

    records = admin.audit.list(limit=500)["records"]
    assert any(r["target"].endswith(action) for r in records)
    assert any(
        r["actor"] == "dev-admin" for r in admin.audit.iterate(actor="dev-admin", page_size=50)
    )
    verdict = admin.audit.verify()
    assert verdict["status"] == "intact" and verdict.get("records", 0) >= len(records)


def test_tenants(platform: creditd.Creditd) -> None:
    tenant_id = unique("py-tenant")
    created = platform.tenants.put(
        tenant_id,
        name="Acme",
        default_currency="usd",
        currencies=[{"code": "usd", "decimals": 2}, {"code": "credits", "decimals": 0}],
    )
    assert created["default_currency"] == "usd" and created["currencies_defined"] is True
    assert platform.tenants.get(tenant_id)["name"] == "Acme"
    acme = platform.with_options(tenant=tenant_id)
    acme.users.put("ada")
    acme.wallet.credit("ada", 250, reason="opening balance")
    with pytest.raises(creditd.InsufficientCreditsError) as caught:
        acme.wallet.debit("ada", 300)
    assert caught.value.detail == "3.00 usd is required but only 2.50 can be spent"
    assert platform.tenants.get(tenant_id)["users"] == 1
    # The default tenant knows no such user.
    with pytest.raises(creditd.UserNotFoundError):
        platform.users.get("ada-" + tenant_id)


def test_a_package_bought_for_a_pool(
    service: creditd.Creditd, admin: creditd.Creditd, user_id: str
) -> None:
    pool_id = unique("py-pool-pay")
    admin.pools.put(pool_id, name="Research")
    package_id = unique("py-pool-pack")
    admin.billing.put_package(
        package_id, name="Team pack", credits=400, price_minor=9_900, price_currency="USD"
    )
    with pytest.raises(creditd.ForbiddenError):
        service.payments.initialize_for_pool(pool_id, package_id, email="ops@example.com")
    started = admin.payments.initialize_for_pool(pool_id, package_id, email="ops@example.com")
    submit_checkout(started["checkout_url"])
    payment = admin.payments.get(started["reference"])
    assert payment["status"] == "succeeded" and payment["pool_id"] == pool_id
    assert admin.pools.get(pool_id)["balance"] == 400
    listed = admin.pools.payments(pool_id, status="succeeded")["payments"]
    assert [p["reference"] for p in listed] == [started["reference"]]
    service.users.put(user_id)
    admin.pools.set_member(user_id, pool_id)
    assert service.wallet.debit(user_id, 150)["from_pool"] == 150
    assert admin.pools.get(pool_id)["balance"] == 250
