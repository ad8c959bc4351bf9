"""Checking the events creditd sends to a tenant's ``webhook_url``.

Each is a JSON ``POST`` with ``Creditd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" under the tenant's webhook_secret>``, the way Stripe signs its webhooks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, List, Optional, Union, cast

from ._errors import SignatureVerificationError
from ._types import NotificationEvent

#: The header that carries the signature.
SIGNATURE_HEADER = "Creditd-Signature"

#: Longer headers are refused unread (the server's own limit for such headers).
_MAX_HEADER_CHARS = 4096


def sign_notification(
    raw_body: Union[bytes, str], secret: Union[bytes, str], timestamp: int
) -> str:
    """The ``Creditd-Signature`` value creditd would send for ``raw_body`` at ``timestamp``."""
    return f"t={timestamp},v1={_tag(_bytes(secret), timestamp, _bytes(raw_body))}"


def verify_notification(
    raw_body: Union[bytes, str],
    signature_header: Optional[str],
    secret: Union[bytes, str],
    *,
    tolerance_seconds: int = 300,
    now: Optional[float] = None,
) -> NotificationEvent:
    """Checks an event's signature and returns the event.

    Args:
        raw_body: the request body exactly as received (bytes; not re-serialised JSON).
        signature_header: the ``Creditd-Signature`` header (``None`` if absent).
        secret: the tenant's ``webhook_secret``.
        tolerance_seconds: how far the signature's time may be from ``now`` (default 300).
        now: the current unix time in seconds (default: the clock).

    Raises:
        SignatureVerificationError: the header is missing or malformed, its time is outside
            the tolerance (a replay), no ``v1`` signature matches (compared in constant time),
            or the body is not a JSON object.
    """
    if signature_header is None or not signature_header.strip():
        raise SignatureVerificationError("no Creditd-Signature header")
    if len(signature_header) > _MAX_HEADER_CHARS:
        raise SignatureVerificationError("malformed Creditd-Signature header")
    timestamp: Optional[int] = None
    candidates: List[str] = []
    for part in signature_header.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals:
            raise SignatureVerificationError("malformed Creditd-Signature header")
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureVerificationError("malformed Creditd-Signature timestamp") from None
        elif name == "v1":
            candidates.append(value.strip().lower())
    if timestamp is None or not candidates:
        raise SignatureVerificationError("Creditd-Signature lacks t= or v1=")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureVerificationError(
            f"Creditd-Signature timestamp is {int(current - timestamp)} s from now, "
            f"outside the tolerance of {tolerance_seconds} s"
        )
    body = _bytes(raw_body)
    expected = _tag(_bytes(secret), timestamp, body)
    matched = False
    for candidate in candidates:
        # Every candidate is compared, each in constant time.
        matched |= hmac.compare_digest(
            candidate.encode("ascii", "replace"), expected.encode("ascii")
        )
    if not matched:
        raise SignatureVerificationError("Creditd-Signature does not match the body")
    try:
        event: Any = json.loads(body)
    except ValueError:
        raise SignatureVerificationError("the signed body is not JSON") from None
    if not isinstance(event, dict):
        raise SignatureVerificationError("the signed body is not a JSON object")
    return cast(NotificationEvent, event)


def _tag(secret: bytes, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _bytes(value: Union[bytes, str]) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value
