"""The errors the client raises.

Every answer creditd gives with a 4xx or 5xx status is an RFC 9457 problem whose ``type`` is
``https://creditd.dev/problems/<slug>``. :class:`CreditdError` carries it whole; the problem types
a caller acts on have a subclass named after the slug. A slug this version does not know maps to
:class:`CreditdError` itself, so a newer server never breaks an older client.

When no answer came at all (connection refused or reset, timeout), the client raises
:class:`CreditdConnectionError` (:class:`CreditdTimeoutError` for a timeout).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

PROBLEM_TYPE_PREFIX = "https://creditd.dev/problems/"


class CreditdException(Exception):
    """The root of everything this package raises."""


class CreditdConnectionError(CreditdException):
    """No answer from the server: the connection failed, was reset, or was closed early.

    A write may or may not have taken effect; calling again with the same ``idempotency_key``
    is safe and answers with what happened.
    """

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        #: How many attempts were made before giving up.
        self.attempts = attempts


class CreditdTimeoutError(CreditdConnectionError):
    """No answer within the call's timeout."""


class SignatureVerificationError(CreditdException):
    """A notification's ``Creditd-Signature`` is missing, malformed, stale or does not match."""


class CreditdError(CreditdException):
    """An error answer (``application/problem+json``) from creditd.

    Attributes:
        status: the HTTP status.
        type: the full problem type URI (``https://creditd.dev/problems/<slug>``).
        slug: the last part of ``type``, e.g. ``insufficient-credits``.
        title: the problem type's short summary.
        detail: what happened this time.
        body: the whole problem document, extension members included.
        request_id: the answer's ``X-Request-Id``, if any.
    """

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any],
        *,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        self.status = status
        self.body: Dict[str, Any] = dict(body)
        problem_type = body.get("type")
        self.type: str = problem_type if isinstance(problem_type, str) else ""
        self.slug: str = (
            self.type[len(PROBLEM_TYPE_PREFIX) :]
            if self.type.startswith(PROBLEM_TYPE_PREFIX)
            else self.type
        )
        title = body.get("title")
        detail = body.get("detail")
        self.title: str = title if isinstance(title, str) else ""
        self.detail: str = detail if isinstance(detail, str) else ""
        self.request_id = request_id
        #: Seconds the server asked to wait before retrying (``Retry-After``), if it said.
        self.retry_after = retry_after
        summary = self.detail or self.title or "error"
        super().__init__(f"{status} {self.slug or 'error'}: {summary}")

    def _int(self, name: str) -> Optional[int]:
        value = self.body.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _str(self, name: str) -> Optional[str]:
        value = self.body.get(name)
        return value if isinstance(value, str) else None


class InsufficientCreditsError(CreditdError):
    """402 ``insufficient-credits``: the spend is above what can be spent. Nothing was written."""

    @property
    def available(self) -> Optional[int]:
        """Balance minus reserved (below zero in an overdraft)."""
        return self._int("available")

    @property
    def required(self) -> Optional[int]:
        """What the spend needed."""
        return self._int("required")

    @property
    def spendable(self) -> Optional[int]:
        """What could be spent now (available, overdraft headroom and pool share)."""
        return self._int("spendable")

    @property
    def balance(self) -> Optional[int]:
        return self._int("balance")

    @property
    def currency(self) -> Optional[str]:
        return self._str("currency")

    @property
    def overdraft_limit(self) -> Optional[int]:
        return self._int("overdraft_limit")

    @property
    def topup_url(self) -> Optional[str]:
        """The bootstrap URL of the wallet's owner (absent on revokes)."""
        return self._str("topup_url")

    @property
    def pool_available(self) -> Optional[int]:
        """For a member of a credit pool: what the pool could still give the user."""
        return self._int("pool_available")


class IdempotencyKeyReusedError(CreditdError):
    """422 ``idempotency-key-reused``: the key was used before with a different request."""


class IdempotencyKeyInFlightError(CreditdError):
    """409 ``idempotency-key-in-flight``: a request with this key is still being processed."""


class UserNotFoundError(CreditdError):
    """404 ``user-not-found``."""


class ReservationClosedError(CreditdError):
    """409 ``reservation-closed``: captured, released or expired."""

    @property
    def closed_as(self) -> Optional[str]:
        """``captured``, ``released`` or ``expired``."""
        return self._str("closed_as")


class ReservationNotFoundError(CreditdError):
    """404 ``reservation-not-found``."""


class UnknownActionError(CreditdError):
    """422 ``unknown-action``: the action is not in the tenant's catalogue."""


class UnknownCurrencyError(CreditdError):
    """422 ``unknown-currency``: the tenant has no such currency. Nothing was written."""

    @property
    def currency(self) -> Optional[str]:
        return self._str("currency")


class GrantCapExceededError(CreditdError):
    """403 ``grant-cap-exceeded``: a service key's grants today would pass its daily cap."""

    @property
    def cap(self) -> Optional[int]:
        return self._int("cap")

    @property
    def granted_today(self) -> Optional[int]:
        return self._int("granted_today")

    @property
    def requested(self) -> Optional[int]:
        return self._int("requested")


class PoolNotFoundError(CreditdError):
    """404 ``pool-not-found``."""


class PackageNotFoundError(CreditdError):
    """404 ``package-not-found``."""


class UnauthorizedError(CreditdError):
    """401 ``unauthorized``: missing or unknown API key."""


class ForbiddenError(CreditdError):
    """403 ``forbidden``: the key's role may not do this, or it named another tenant."""


class InvalidRequestError(CreditdError):
    """422 ``invalid-request`` or 400 ``malformed-request``: the request itself is wrong."""

    @property
    def field(self) -> Optional[str]:
        """The field to blame, when there is one."""
        return self._str("field")


class ServerBusyError(CreditdError):
    """503: the server cannot take the request now (``server-busy``, ``log-backpressure``,
    ``shutting-down``, …). Nothing was written; retry after :attr:`retry_after` seconds."""


class WriteOutcomeUnknownError(CreditdError):
    """500 ``write-outcome-unknown``: the change may or may not have taken effect.

    Retrying with the same ``idempotency_key`` once the server has restarted answers with what
    happened; the client does so by itself within the call's retries and timeout.
    """


_BY_SLUG: Dict[str, Type[CreditdError]] = {
    "insufficient-credits": InsufficientCreditsError,
    "idempotency-key-reused": IdempotencyKeyReusedError,
    "idempotency-key-in-flight": IdempotencyKeyInFlightError,
    "user-not-found": UserNotFoundError,
    "reservation-closed": ReservationClosedError,
    "reservation-not-found": ReservationNotFoundError,
    "unknown-action": UnknownActionError,
    "unknown-currency": UnknownCurrencyError,
    "grant-cap-exceeded": GrantCapExceededError,
    "pool-not-found": PoolNotFoundError,
    "package-not-found": PackageNotFoundError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "invalid-request": InvalidRequestError,
    "malformed-request": InvalidRequestError,
    "server-busy": ServerBusyError,
    "write-outcome-unknown": WriteOutcomeUnknownError,
}


def error_class(status: int, slug: str) -> Type[CreditdError]:
    """The class for a problem: by slug, else a 503 is a :class:`ServerBusyError` (every 503
    means "not now, retry"), else the base class."""
    known = _BY_SLUG.get(slug)
    if known is not None:
        return known
    if status == 503:
        return ServerBusyError
    return CreditdError


def problem_slug(body: Mapping[str, Any]) -> str:
    problem_type = body.get("type")
    if isinstance(problem_type, str) and problem_type.startswith(PROBLEM_TYPE_PREFIX):
        return problem_type[len(PROBLEM_TYPE_PREFIX) :]
    return ""
