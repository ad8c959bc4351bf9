"""The client against the contract, ``docs/openapi.yaml``: every operation of the spec is either
called by a method of the client (with the spec's method and path, and an ``Idempotency-Key``
exactly where the spec says it is honoured), or listed here as not for an application's back
end. An operation the spec gains without either fails this test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import httpx
import pytest

import creditd
from conftest import REPO_ROOT, SERVICE_KEY

SPEC = REPO_ROOT / "docs" / "openapi.yaml"

#: Operations no application back end calls, with the reason.
NOT_IN_SDK = {
    "gatewayWebhook": "called by the payment gateway, with the gateway's own signature",
    "dashboardPage": "the operators' dashboard, a page for a browser",
    "dashboardFile": "a file of the operators' dashboard",
    "portalPage": (
        "the hosted top-up page a person opens (its URL comes from portal.create_session)"
    ),
    "portalData": "what the hosted top-up page loads, with the portal token as credential",
    "portalCheckout": "the Buy button of the hosted top-up page",
    "sandboxCheckoutPage": "the sandbox gateway's checkout page, for a person",
    "sandboxCheckoutAction": "the Pay and Decline buttons of the sandbox checkout page",
}

Call = Callable[[creditd.Creditd], Any]

#: The client's method for each operation, called with made-up arguments.
CALLS: Dict[str, Call] = {
    "livez": lambda c: c.health.live(),
    "readyz": lambda c: c.health.ready(),
    "healthz": lambda c: c.health.health(),
    "metrics": lambda c: c.health.metrics(),
    "openapi": lambda c: c.health.openapi(),
    "getMe": lambda c: c.me(),
    "listUsers": lambda c: c.users.list(prefix="a"),
    "putUser": lambda c: c.users.put("ada", email="ada@example.com"),
    "getUser": lambda c: c.users.get("ada"),
    "patchUser": lambda c: c.users.update("ada", metadata={"a": None}),
    "getWallet": lambda c: c.wallet.get("ada"),
    "streamWallet": lambda c: list(c.wallet.stream("ada")),
    "createStreamToken": lambda c: c.wallet.stream_token("ada"),
    "createPortalSession": lambda c: c.portal.create_session("ada"),
    "listEntries": lambda c: c.wallet.entries("ada", kind="debit"),
    "listUserPayments": lambda c: c.payments.list("ada"),
    "credit": lambda c: c.wallet.credit("ada", 1),
    "debit": lambda c: c.wallet.debit("ada", 1),
    "listReservations": lambda c: c.reservations.list_open("ada"),
    "reserve": lambda c: c.reservations.reserve("ada", 1),
    "revoke": lambda c: c.wallet.revoke("ada", 1, reason="r"),
    "putOverdraft": lambda c: c.wallet.set_overdraft("ada", 5),
    "getMembership": lambda c: c.pools.get_member("ada"),
    "putMembership": lambda c: c.pools.set_member("ada", "org"),
    "deleteMembership": lambda c: c.pools.remove_member("ada"),
    "getAutoTopup": lambda c: c.billing.get_auto_topup("ada"),
    "putAutoTopup": lambda c: c.billing.put_auto_topup("ada", threshold=1, package_id="p"),
    "deleteAutoTopup": lambda c: c.billing.delete_auto_topup("ada"),
    "batchDebit": lambda c: c.wallet.debit_batch([{"user_id": "ada", "amount": 1}]),
    "getReservation": lambda c: c.reservations.get("rsv_1"),
    "capture": lambda c: c.reservations.capture("rsv_1"),
    "extend": lambda c: c.reservations.extend("rsv_1", 60),
    "release": lambda c: c.reservations.release("rsv_1"),
    "listActions": lambda c: c.billing.list_actions(),
    "getAction": lambda c: c.billing.get_action("gpt"),
    "putAction": lambda c: c.billing.put_action("gpt", 2),
    "deleteAction": lambda c: c.billing.delete_action("gpt"),
    "listPackages": lambda c: c.billing.list_packages(),
    "getPackage": lambda c: c.billing.get_package("p"),
    "putPackage": lambda c: c.billing.put_package(
        "p", name="P", credits=1, price_minor=1, price_currency="NGN"
    ),
    "deletePackage": lambda c: c.billing.delete_package("p"),
    "bootstrap": lambda c: c.billing.bootstrap("ada"),
    "initializePayment": lambda c: c.payments.initialize("ada", "p"),
    "getPayment": lambda c: c.payments.get("cd_1"),
    "abandonPayment": lambda c: c.payments.abandon("cd_1"),
    "listPools": lambda c: c.pools.list(),
    "getPool": lambda c: c.pools.get("org"),
    "putPool": lambda c: c.pools.put("org", name="Org"),
    "creditPool": lambda c: c.pools.credit("org", 1, reason="r"),
    "listPoolMembers": lambda c: c.pools.members("org"),
    "listPoolEntries": lambda c: c.pools.entries("org"),
    "listPoolPayments": lambda c: c.pools.payments("org"),
    "listTenants": lambda c: c.tenants.list(),
    "getTenant": lambda c: c.tenants.get("acme"),
    "putTenant": lambda c: c.tenants.put("acme", name="Acme"),
    "listAudit": lambda c: c.audit.list(),
    "verifyAudit": lambda c: c.audit.verify(),
    "usageReport": lambda c: c.reports.usage(group_by="day"),
    "revenueReport": lambda c: c.reports.revenue(),
}


@dataclass
class Operation:
    operation_id: str
    method: str
    path: str
    idempotency_key: bool


def spec_operations() -> Dict[str, Operation]:
    """The operations of ``docs/openapi.yaml``, read from its layout (two spaces for a path,
    four for a method, six for its fields)."""
    operations: Dict[str, Operation] = {}
    path = ""
    current: Dict[str, Any] = {}
    for line in SPEC.read_text(encoding="utf-8").split("\n"):
        if line.startswith(("components:", "webhooks:")):
            break
        if re.match(r"^  /\S*:$", line):
            path = line.strip()[:-1]
        elif re.match(r"^    (get|put|post|patch|delete):$", line):
            current = {"method": line.strip()[:-1].upper(), "path": path, "key": False}
        elif line.startswith("      operationId: "):
            current["id"] = line.split(":", 1)[1].strip()
            operations[current["id"]] = Operation(current["id"], current["method"], path, False)
        elif "parameters/IdempotencyKey" in line and "id" in current:
            operations[current["id"]].idempotency_key = True
    return operations


def test_the_spec_was_read() -> None:
    operations = spec_operations()
    assert len(operations) > 60
    assert operations["debit"] == Operation("debit", "POST", "/v1/users/{user_id}/debit", True)
    assert operations["getWallet"].idempotency_key is False


def test_every_operation_is_called_or_excluded() -> None:
    spec = set(spec_operations())
    assert set(CALLS) & set(NOT_IN_SDK) == set()
    assert spec - set(CALLS) - set(NOT_IN_SDK) == set(), "operations with no method in the client"
    assert set(CALLS) - spec == set(), "methods of operations the spec does not have"
    assert set(NOT_IN_SDK) - spec == set()


@pytest.mark.parametrize("operation_id", sorted(CALLS))
def test_each_method_calls_its_operation(operation_id: str) -> None:
    operation = spec_operations()[operation_id]
    seen: List[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path in ("/livez", "/readyz", "/healthz", "/metrics", "/openapi.yaml"):
            return httpx.Response(200, text="ok\n")
        if request.url.path.endswith("/stream"):
            return httpx.Response(200, text="", headers={"content-type": "text/event-stream"})
        if request.method == "DELETE" and request.url.path.startswith(
            ("/v1/actions/", "/v1/packages/")
        ):
            return httpx.Response(204)
        return httpx.Response(
            200, json={"users": [], "entries": [], "records": [], "next_cursor": None}
        )

    client = creditd.Creditd(
        "http://creditd.test", SERVICE_KEY, transport=httpx.MockTransport(answer)
    )
    CALLS[operation_id](client)
    assert len(seen) == 1
    request = seen[0]
    template = "^" + re.sub(r"\\{[a-z_]+\\}", "[^/]+", re.escape(operation.path)) + "$"
    assert request.method == operation.method
    assert re.match(template, request.url.raw_path.decode().split("?")[0]), (
        request.url,
        operation.path,
    )
    assert ("idempotency-key" in request.headers) == operation.idempotency_key
    assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"
