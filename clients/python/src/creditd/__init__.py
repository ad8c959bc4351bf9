"""A client of creditd, the prepaid-credit wallet and metering engine.

    from creditd import Creditd, InsufficientCreditsError

    client = Creditd("http://127.0.0.1:8080", api_key="…")
    client.users.put("ada", email="ada@example.com")
    try:
        client.wallet.debit("ada", action="gpt-4o-call", quantity=3)
    except InsufficientCreditsError as error:
        redirect(client.portal.create_session("ada")["url"])

:class:`AsyncCreditd` is the same client for ``asyncio`` (or trio), with ``await``.
"""

from ._async_client import (
    AsyncAudit,
    AsyncBilling,
    AsyncCreditd,
    AsyncHealth,
    AsyncHold,
    AsyncPayments,
    AsyncPools,
    AsyncPortal,
    AsyncReports,
    AsyncReservations,
    AsyncTenants,
    AsyncUsers,
    AsyncWallets,
)
from ._core import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_SECONDS, UNSET, Options, __version__
from ._errors import (
    CreditdConnectionError,
    CreditdError,
    CreditdException,
    CreditdTimeoutError,
    ForbiddenError,
    GrantCapExceededError,
    IdempotencyKeyInFlightError,
    IdempotencyKeyReusedError,
    InsufficientCreditsError,
    InvalidRequestError,
    PackageNotFoundError,
    PoolNotFoundError,
    ReservationClosedError,
    ReservationNotFoundError,
    ServerBusyError,
    SignatureVerificationError,
    UnauthorizedError,
    UnknownActionError,
    UnknownCurrencyError,
    UserNotFoundError,
    WriteOutcomeUnknownError,
)
from ._notify import SIGNATURE_HEADER, sign_notification, verify_notification
from ._sync_client import (
    Audit,
    Billing,
    Creditd,
    Health,
    Hold,
    Payments,
    Pools,
    Portal,
    Reports,
    Reservations,
    Tenants,
    Users,
    Wallets,
)
from ._types import *  # noqa: F401,F403
from ._types import __all__ as _types_all

__all__ = [
    "Creditd",
    "AsyncCreditd",
    "Hold",
    "AsyncHold",
    "Users",
    "Wallets",
    "Reservations",
    "Billing",
    "Payments",
    "Pools",
    "Reports",
    "Audit",
    "Portal",
    "Tenants",
    "Health",
    "AsyncUsers",
    "AsyncWallets",
    "AsyncReservations",
    "AsyncBilling",
    "AsyncPayments",
    "AsyncPools",
    "AsyncReports",
    "AsyncAudit",
    "AsyncPortal",
    "AsyncTenants",
    "AsyncHealth",
    "Options",
    "UNSET",
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_MAX_RETRIES",
    "__version__",
    "CreditdException",
    "CreditdError",
    "CreditdConnectionError",
    "CreditdTimeoutError",
    "SignatureVerificationError",
    "InsufficientCreditsError",
    "IdempotencyKeyReusedError",
    "IdempotencyKeyInFlightError",
    "UserNotFoundError",
    "ReservationClosedError",
    "ReservationNotFoundError",
    "UnknownActionError",
    "UnknownCurrencyError",
    "GrantCapExceededError",
    "PoolNotFoundError",
    "PackageNotFoundError",
    "UnauthorizedError",
    "ForbiddenError",
    "InvalidRequestError",
    "ServerBusyError",
    "WriteOutcomeUnknownError",
    "SIGNATURE_HEADER",
    "sign_notification",
    "verify_notification",
    *_types_all,
]
