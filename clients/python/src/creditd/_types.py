"""The answers of the API, as typed dictionaries.

Each is the JSON document creditd answers, unchanged: keys are the API's ``snake_case`` field
names, amounts are ``int`` (credits or minor units, never floats), timestamps RFC 3339 strings.
Fields a newer server adds are kept (these are plain ``dict`` objects at run time).

The answers of state-changing POSTs carry one key the client adds, ``replayed``: ``True`` when
the server answered from its idempotency table (``Idempotent-Replayed: true``), that is when
this call's ``Idempotency-Key`` had already been applied, by an earlier attempt or call.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict, Union

__all__ = [
    "Me",
    "Balance",
    "Membership",
    "AutoTopupRule",
    "Wallet",
    "User",
    "UserList",
    "CreditAnswer",
    "DebitAnswer",
    "RevokeAnswer",
    "BatchItemResult",
    "BatchAnswer",
    "BatchDebit",
    "ReservationAnswer",
    "Reservation",
    "ReservationList",
    "CaptureAnswer",
    "ExtendAnswer",
    "ReleaseAnswer",
    "Entry",
    "EntryList",
    "StreamToken",
    "PortalSession",
    "WalletEvent",
    "Action",
    "ActionList",
    "Package",
    "PackageList",
    "Bootstrap",
    "Deleted",
    "InitializedPayment",
    "Payment",
    "PaymentList",
    "Pool",
    "PoolList",
    "PoolCreditAnswer",
    "PoolMember",
    "PoolMemberList",
    "PoolEntry",
    "PoolEntryList",
    "UsageRow",
    "RevenueRow",
    "AuditRecord",
    "AuditList",
    "AuditChainStatus",
    "CurrencyDefinition",
    "Tenant",
    "TenantList",
    "NotificationEvent",
    "Json",
    "UsageReport",
    "RevenueReport",
]

#: Any JSON document.
Json = Union[None, bool, int, float, str, List[Any], Dict[str, Any]]


class Me(TypedDict):
    name: str
    role: str
    tenant: str


class Balance(TypedDict):
    currency: str
    balance: int
    reserved: int
    available: int
    overdraft_limit: int
    spendable: int


class Membership(TypedDict):
    pool_id: str
    currency: str
    daily_cap: Optional[int]
    drawn_today: int
    available_to_user: int


class AutoTopupRule(TypedDict):
    state: str
    enabled: bool
    threshold: int
    package_id: str
    payment_method: Optional[str]
    max_per_day: int
    currency: str
    disabled_reason: Optional[str]
    attempts_today: int
    consecutive_failures: int
    pending_reference: Optional[str]


class _WalletRequired(TypedDict):
    user_id: str
    currency: str
    balance: int
    reserved: int
    available: int
    overdraft_limit: int
    spendable: int
    status: str
    auto_topup: Optional[AutoTopupRule]
    balances: List[Balance]


class Wallet(_WalletRequired, total=False):
    #: Present when the user draws on a credit pool.
    pool: Membership


class User(TypedDict):
    user_id: str
    email: Optional[str]
    name: Optional[str]
    metadata: Json
    wallet: Wallet


class UserList(TypedDict):
    users: List[User]
    next_cursor: Optional[str]


class CreditAnswer(TypedDict):
    entry_id: str
    amount: int
    balance: int
    available: int
    replayed: bool


class _DebitRequired(TypedDict):
    charged: int
    from_wallet: int
    from_pool: int
    balance: int
    available: int
    replayed: bool


class DebitAnswer(_DebitRequired, total=False):
    #: Absent on a dry run.
    entry_id: str
    dry_run: bool


class RevokeAnswer(TypedDict):
    entry_id: str
    amount: int
    balance: int
    available: int
    kind: str
    replayed: bool


class _BatchItemRequired(TypedDict):
    status: int
    user_id: str


class BatchItemResult(_BatchItemRequired, total=False):
    """One item of a batch: ``status`` 200 with the debit's answer, or the problem it would
    have got on its own (``type``, ``title``, ``detail`` and extension members)."""

    entry_id: str
    charged: int
    from_wallet: int
    from_pool: int
    balance: int
    available: int
    replayed: bool
    type: str
    title: str
    detail: str
    required: int
    spendable: int
    topup_url: str
    currency: str


class BatchAnswer(TypedDict):
    """The batch's answer. It is not stored as a whole: each item says whether it was a replay
    (its ``replayed``), and the batch itself has no ``replayed``."""

    results: List[BatchItemResult]


class _BatchDebitRequired(TypedDict):
    user_id: str


class BatchDebit(_BatchDebitRequired, total=False):
    """One debit of :meth:`debit_batch`: ``amount``, or ``action`` (and ``quantity``)."""

    amount: int
    action: str
    quantity: int
    currency: str
    description: str
    reference: str
    metadata: Json
    idempotency_key: str


class _ReservationAnswerRequired(TypedDict):
    amount: int
    from_wallet: int
    from_pool: int
    expires_at: str
    available: int
    replayed: bool


class ReservationAnswer(_ReservationAnswerRequired, total=False):
    #: Absent on a dry run.
    reservation_id: str
    dry_run: bool


class Reservation(TypedDict):
    reservation_id: str
    user_id: str
    state: str
    amount: Optional[int]
    currency: Optional[str]
    expires_at: Optional[str]


class ReservationList(TypedDict):
    reservations: List[Reservation]


class CaptureAnswer(TypedDict):
    reservation_id: str
    entry_id: str
    charged: int
    from_wallet: int
    from_pool: int
    released: int
    balance: int
    available: int
    replayed: bool


class ExtendAnswer(TypedDict):
    reservation_id: str
    expires_at: str
    replayed: bool


class ReleaseAnswer(TypedDict):
    reservation_id: str
    released: int
    available: int
    replayed: bool


class _EntryRequired(TypedDict):
    entry_id: str
    kind: str
    amount: int
    currency: str
    actor: str
    created_at: str


class Entry(_EntryRequired, total=False):
    #: Absent for a release or an expiry (the balance does not move).
    balance_after: int
    action: str
    quantity: int
    description: str
    reference: str
    metadata: Json
    from_pool: int
    pool_id: str


class EntryList(TypedDict):
    entries: List[Entry]
    next_cursor: Optional[str]


class StreamToken(TypedDict):
    token: str
    expires_at: str


class PortalSession(TypedDict):
    url: str
    expires_at: str


class WalletEvent(TypedDict):
    """One event of :meth:`wallet.stream`: the LSN it shows the wallet at, and the view."""

    id: Optional[str]
    wallet: Wallet


class Action(TypedDict):
    action: str
    cost: int
    currency: str
    description: Optional[str]


class ActionList(TypedDict):
    actions: List[Action]


class Package(TypedDict):
    package_id: str
    name: str
    credits: int
    currency: str
    price_minor: int
    price_currency: str
    active: bool
    position: int


class PackageList(TypedDict):
    packages: List[Package]


class Bootstrap(TypedDict):
    wallet: Wallet
    available_packages: List[Package]
    actions: List[Action]


class Deleted(TypedDict):
    deleted: bool


class InitializedPayment(TypedDict):
    checkout_url: str
    reference: str
    replayed: bool


class _PaymentRequired(TypedDict):
    reference: str
    package_id: str
    credits: int
    currency: str
    amount_minor: int
    price_currency: str
    gateway: str
    purpose: str
    status: str
    metadata: Optional[Dict[str, Any]]
    created_at: str


class Payment(_PaymentRequired, total=False):
    user_id: str
    entry_id: Optional[str]
    failure_reason: Optional[str]
    checkout_url: Optional[str]
    settled_at: str


class PaymentList(TypedDict):
    payments: List[Payment]
    next_cursor: Optional[str]


class Pool(TypedDict):
    pool_id: str
    name: Optional[str]
    currency: str
    balance: int
    reserved: int
    available: int
    members: int
    drawn_today: int


class PoolList(TypedDict):
    pools: List[Pool]


class PoolCreditAnswer(TypedDict):
    entry_id: str
    amount: int
    balance: int
    available: int
    replayed: bool


class PoolMember(TypedDict):
    user_id: str
    daily_cap: Optional[int]
    drawn_today: int


class PoolMemberList(TypedDict):
    members: List[PoolMember]


class _PoolEntryRequired(TypedDict):
    entry_id: str
    kind: str
    amount: int
    currency: str
    balance_after: int
    actor: str
    created_at: str


class PoolEntry(_PoolEntryRequired, total=False):
    user_id: str
    action: str
    quantity: int
    description: str
    reference: str


class PoolEntryList(TypedDict):
    entries: List[PoolEntry]
    next_cursor: Optional[str]


class _UsageRowRequired(TypedDict):
    key: str
    count: int
    credits: int


class UsageRow(_UsageRowRequired, total=False):
    #: The units spent (the sum of the debits' quantities).
    quantity: int


UsageReport = TypedDict(
    "UsageReport",
    {"rows": List[UsageRow], "total_credits": int, "currency": str, "from": str, "to": str},
)


class RevenueRow(TypedDict):
    key: str
    count: int
    amount_minor: int
    currency: str
    credits_sold: int


RevenueReport = TypedDict("RevenueReport", {"rows": List[RevenueRow], "from": str, "to": str})


class AuditRecord(TypedDict):
    seq: int
    at: str
    actor: str
    action: str
    target: str
    before: Json
    after: Json
    hash: str


class AuditList(TypedDict):
    records: List[AuditRecord]
    next_cursor: Optional[str]


class _AuditChainRequired(TypedDict):
    status: str
    checked_at: str


class AuditChainStatus(_AuditChainRequired, total=False):
    records: int
    last_hash: str
    broken_at_seq: int
    damage: str
    detail: str


class CurrencyDefinition(TypedDict):
    code: str
    decimals: int


class _TenantRequired(TypedDict):
    tenant_id: str
    name: Optional[str]
    default_currency: str
    currencies: List[CurrencyDefinition]
    currencies_defined: bool
    users: int


class Tenant(_TenantRequired, total=False):
    webhook_url: str


class TenantList(TypedDict):
    tenants: List[Tenant]


class NotificationEvent(TypedDict):
    """An event creditd sent to a tenant's ``webhook_url``, as :func:`verify_notification`
    returns it. ``data`` always holds ``user_id`` and ``currency``, plus the fields of the
    event's ``type`` (``wallet.low_balance``, ``wallet.depleted``, ``topup.succeeded``,
    ``topup.failed``, ``autotopup.disabled``)."""

    id: str
    type: str
    created_at: str
    tenant_id: str
    data: Dict[str, Any]
