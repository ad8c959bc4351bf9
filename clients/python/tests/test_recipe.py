"""The recipe end to end against a real server: sync a user, welcome credits, gate a feature with
a debit, 402 with a top-up link, hosted top-up (portal session, checkout), pay in the sandbox,
the balance rose and the feature works again."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

import creditd
from conftest import SERVICE_KEY, Server
from sandbox import submit_checkout


def test_the_recipe_end_to_end(
    service: creditd.Creditd, admin: creditd.Creditd, server: Server, user_id: str
) -> None:
    # The operator prices the feature and sells a package.
    action = f"py-generate-{uuid.uuid4().hex[:6]}"
    package_id = f"py-starter-{uuid.uuid4().hex[:6]}"
    priced = admin.billing.put_action(action, 7, description="one generation")
    assert priced["cost"] == 7
    package = admin.billing.put_package(
        package_id, name="Starter", credits=100, price_minor=50_000, price_currency="NGN"
    )
    assert package["credits"] == 100 and package["active"] is True

    # Sign-in: sync the user. A later sync with the e-mail alone keeps the name.
    user = service.users.put(user_id, email=f"{user_id}@example.com", name="Ada")
    assert user["user_id"] == user_id and user["wallet"]["balance"] == 0
    user = service.users.sync(user_id, email=f"{user_id}@example.com")
    assert user["name"] == "Ada"

    # Welcome credits.
    welcome = service.wallet.credit(user_id, 20, description="welcome credits")
    assert (welcome["balance"], welcome["replayed"]) == (20, False)
    assert welcome["entry_id"].startswith("ent_")

    # The gated feature: each use is a debit of the action.
    assert service.wallet.debit(user_id, action=action)["balance"] == 13
    assert service.wallet.debit(user_id, action=action)["charged"] == 7
    # A dry run says whether the next one would pass, without spending.
    with pytest.raises(creditd.InsufficientCreditsError):
        service.wallet.debit(user_id, action=action, dry_run=True)

    with pytest.raises(creditd.InsufficientCreditsError) as caught:
        service.wallet.debit(user_id, action=action)
    refused = caught.value
    assert refused.status == 402 and refused.slug == "insufficient-credits"
    assert refused.type == "https://creditd.dev/problems/insufficient-credits"
    assert (refused.required, refused.available, refused.balance) == (7, 6, 6)
    assert refused.spendable == 6 and refused.currency == "credits"
    assert refused.topup_url is not None
    assert refused.topup_url == f"{server.base_url}/v1/billing/bootstrap/{user_id}"
    assert service.wallet.get(user_id)["balance"] == 6, "a 402 writes nothing"

    # The top-up link is the user's bootstrap: what a billing page shows.
    bootstrap = httpx.get(refused.topup_url, headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert bootstrap.status_code == 200
    assert bootstrap.json() == service.billing.bootstrap(user_id)
    offered = [p["package_id"] for p in bootstrap.json()["available_packages"]]
    assert package_id in offered

    # Hosted top-up: a portal session for the person to open.
    session = service.portal.create_session(user_id)
    portal = httpx.get(session["url"])
    assert portal.status_code == 200 and "text/html" in portal.headers["content-type"]

    # Or a checkout of the package, straight away, paid in the sandbox like a browser would.
    payment = service.payments.initialize(user_id, package_id, metadata={"order_id": "A-1042"})
    assert payment["reference"] and payment["checkout_url"].startswith(server.base_url)
    assert service.payments.get(payment["reference"])["status"] == "pending"
    page = submit_checkout(payment["checkout_url"], "pay")
    assert page.status_code == 200

    wallet = wait_for(lambda: service.wallet.get(user_id), lambda w: w["balance"] == 106)
    assert wallet["available"] == 106 and wallet["status"] == "healthy"
    settled = service.payments.get(payment["reference"])
    assert settled["status"] == "succeeded" and settled["metadata"] == {"order_id": "A-1042"}
    history = service.payments.list(user_id)
    assert [p["reference"] for p in history["payments"]] == [payment["reference"]]
    assert history["payments"][0]["status"] == "succeeded"

    # The feature works again, and the ledger tells the story.
    assert service.wallet.debit(user_id, action=action)["balance"] == 99
    kinds = [e["kind"] for e in service.wallet.iterate_entries(user_id)]
    assert kinds == ["debit", "topup", "debit", "debit", "grant"]


def test_a_declined_checkout_credits_nothing(
    service: creditd.Creditd, admin: creditd.Creditd, user_id: str
) -> None:
    package_id = f"py-decline-{uuid.uuid4().hex[:6]}"
    admin.billing.put_package(
        package_id, name="Decline", credits=50, price_minor=1_000, price_currency="NGN"
    )
    service.users.put(user_id, email=f"{user_id}@example.com")
    payment = service.payments.initialize(user_id, package_id)
    submit_checkout(payment["checkout_url"], "decline")
    failed = wait_for(
        lambda: service.payments.get(payment["reference"]), lambda p: p["status"] != "pending"
    )
    assert failed["status"] == "failed"
    assert service.wallet.get(user_id)["balance"] == 0


@pytest.mark.anyio
async def test_the_recipe_with_the_async_client(server: Server, user_id: str) -> None:
    async with creditd.AsyncCreditd(server.base_url, SERVICE_KEY) as client:
        user = await client.users.put(user_id, email=f"{user_id}@example.com")
        assert user["wallet"]["status"] == "empty"
        credited = await client.wallet.credit(user_id, 10, description="welcome credits")
        assert credited["balance"] == 10
        debited = await client.wallet.debit(user_id, 4, description="one image")
        assert (debited["charged"], debited["balance"], debited["replayed"]) == (4, 6, False)
        with pytest.raises(creditd.InsufficientCreditsError) as caught:
            await client.wallet.debit(user_id, 7)
        assert caught.value.required == 7 and caught.value.available == 6
        session = await client.portal.create_session(user_id)
        assert session["url"].startswith(server.base_url)
        assert [u["user_id"] async for u in client.users.iterate(prefix=user_id)] == [user_id]


def wait_for(read, done, seconds: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)
