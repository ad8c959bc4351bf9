"""Notification signatures: a real event the server sends to a listener the test hosts, verified
by the client; a tampered body, a stale or future timestamp, a wrong secret refused."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional, Tuple

import pytest

import creditd
from creditd import SignatureVerificationError, sign_notification, verify_notification
from sandbox import submit_checkout

SECRET = "whsec_python_sdk_tests_0123456789"

Received = Tuple[bytes, Optional[str]]


class Listener:
    """A tenant's application: takes events on POST /hooks/creditd and answers 204."""

    def __init__(self) -> None:
        self.events: queue.Queue[Received] = queue.Queue()
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                events.put((body, self.headers.get("Creditd-Signature")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hooks/creditd"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def next(self, kind: str, seconds: float = 15.0) -> Received:
        deadline = time.monotonic() + seconds
        while True:
            body, signature = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if f'"type":"{kind}"' in body.decode():
                return body, signature

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture()
def listener() -> Iterator[Listener]:
    hosted = Listener()
    yield hosted
    hosted.close()


def test_a_real_notification_is_verified(
    platform: creditd.Creditd, listener: Listener, user_id: str
) -> None:
    tenant_id = f"py-notify-{uuid.uuid4().hex[:8]}"
    tenant = platform.tenants.put(
        tenant_id, name="Notified", webhook_url=listener.url, webhook_secret=SECRET
    )
    assert tenant["tenant_id"] == tenant_id and tenant["webhook_url"] == listener.url
    assert tenant_id in [t["tenant_id"] for t in platform.tenants.list()["tenants"]]

    # The platform key acts in the new tenant through X-Tenant.
    acting = platform.with_options(tenant=tenant_id)
    assert acting.me()["tenant"] == tenant_id
    acting.users.put(user_id)
    acting.wallet.credit(user_id, 5, reason="welcome credits")
    acting.wallet.debit(user_id, 5)  # available goes from 5 to 0: wallet.depleted

    raw, signature = listener.next("wallet.depleted")
    assert signature is not None and signature.startswith("t=")
    event = verify_notification(raw, signature, SECRET)
    assert event["type"] == "wallet.depleted" and event["tenant_id"] == tenant_id
    assert event["data"]["user_id"] == user_id and event["data"]["available"] == 0
    assert event["id"].startswith("evt_")
    # str bodies and secrets are accepted too.
    assert verify_notification(raw.decode(), signature, SECRET.encode()) == event

    # A body changed on the way is refused.
    tampered = raw.replace(b'"available":0', b'"available":9')
    assert tampered != raw
    with pytest.raises(SignatureVerificationError, match="does not match"):
        verify_notification(tampered, signature, SECRET)
    # So is another secret's signature.
    with pytest.raises(SignatureVerificationError):
        verify_notification(raw, signature, "whsec_someone_else_entirely")
    # And the same delivery replayed long after (or a clock far ahead).
    sent_at = int(signature.split(",")[0][2:])
    with pytest.raises(SignatureVerificationError, match="tolerance"):
        verify_notification(raw, signature, SECRET, now=sent_at + 301)
    with pytest.raises(SignatureVerificationError, match="tolerance"):
        verify_notification(raw, signature, SECRET, now=sent_at - 301)
    assert verify_notification(raw, signature, SECRET, now=sent_at + 299) == event
    assert (
        verify_notification(raw, signature, SECRET, now=sent_at + 3000, tolerance_seconds=3600)
        == event
    )

    # A payment settled in the sandbox sends topup.succeeded, with the payment's metadata.
    acting.billing.put_package(
        "starter", name="Starter", credits=40, price_minor=2_000, price_currency="NGN"
    )
    checkout = acting.payments.initialize(
        user_id, "starter", email="ada@example.com", metadata={"order_id": "A-7"}
    )
    submit_checkout(checkout["checkout_url"])
    raw, signature = listener.next("topup.succeeded")
    topup = verify_notification(raw, signature, SECRET)
    assert topup["data"]["reference"] == checkout["reference"]
    assert (topup["data"]["credits"], topup["data"]["balance"]) == (40, 40)
    assert topup["data"]["metadata"] == {"order_id": "A-7"}

    # Stop the events again.
    stopped = platform.tenants.put(tenant_id, webhook_url="")
    assert "webhook_url" not in stopped


def test_signature_header_forms() -> None:
    body = (
        b'{"id":"evt_1_wallet_depleted","type":"wallet.depleted",'
        b'"created_at":"x","tenant_id":"t","data":{}}'
    )
    now = 1_764_000_000
    header = sign_notification(body, SECRET, now)
    assert verify_notification(body, header, SECRET, now=now)["type"] == "wallet.depleted"
    # Several v1 values (a secret being rotated): one match is enough.
    rotated = f"t={now},v1={'0' * 64},{header.split(',')[1]}"
    assert verify_notification(body, rotated, SECRET, now=now)["id"] == "evt_1_wallet_depleted"
    for bad in [
        None,
        "",
        "garbage",
        f"t={now}",
        "v1=abcd",
        f"t=soon,{header.split(',')[1]}",
        "x" * 5000,
    ]:
        with pytest.raises(SignatureVerificationError):
            verify_notification(body, bad, SECRET, now=now)
    # A signed body that is not a JSON object is refused too.
    with pytest.raises(SignatureVerificationError):
        verify_notification(b"[1,2]", sign_notification(b"[1,2]", SECRET, now), SECRET, now=now)
