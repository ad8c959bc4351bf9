"""The asynchronous client, :class:`AsyncCreditd`.

This file is the source of the synchronous client too: ``scripts/unasync.py`` writes
``_sync_client.py`` from it (``async``/``await`` removed, ``Async`` names made plain), and a test
checks that the two agree. Edit this file, then run ``python scripts/unasync.py``.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Type, Union, cast

import httpx

from . import _core
from ._compat import asleep
from ._core import UNSET, Options, Request, _Unset, compact, keep_nulls, path, query, read, write
from ._errors import CreditdError, CreditdException
from ._types import (
    Action,
    ActionList,
    AuditChainStatus,
    AuditList,
    AuditRecord,
    AutoTopupRule,
    BatchAnswer,
    BatchDebit,
    Bootstrap,
    CaptureAnswer,
    CreditAnswer,
    CurrencyDefinition,
    DebitAnswer,
    Deleted,
    Entry,
    EntryList,
    ExtendAnswer,
    InitializedPayment,
    Json,
    Me,
    Membership,
    Package,
    PackageList,
    Payment,
    PaymentList,
    Pool,
    PoolCreditAnswer,
    PoolEntryList,
    PoolList,
    PoolMemberList,
    PortalSession,
    ReleaseAnswer,
    Reservation,
    ReservationAnswer,
    ReservationList,
    RevenueReport,
    RevokeAnswer,
    StreamToken,
    Tenant,
    TenantList,
    UsageReport,
    User,
    UserList,
    Wallet,
    WalletEvent,
)


class AsyncCreditd:
    """A client of the creditd HTTP API.

    Args:
        base_url: where creditd listens, e.g. ``http://127.0.0.1:8080``.
        api_key: the secret of an API key (``service``, ``admin`` or ``platform`` role).
        tenant: for a platform key, the tenant to act in (``X-Tenant``).
        timeout: seconds a call may take, retries included (default 10).
        max_retries: retries after the first attempt (default 3); 0 turns retries off.
        transport: an httpx transport to send requests through (tests, proxies).
        http_client: an httpx client to use instead of one of the client's own; it is not
            closed by :meth:`aclose`.

    The calls are grouped as the API is: :attr:`users`, :attr:`wallet`, :attr:`reservations`,
    :attr:`billing`, :attr:`payments`, :attr:`pools`, :attr:`reports`, :attr:`audit`,
    :attr:`portal`, :attr:`tenants`, :attr:`health`, plus :meth:`me` and
    :meth:`with_reservation`. Every call
    takes ``timeout=`` (seconds) to override the client's for that call; every state-changing
    POST takes ``idempotency_key=`` (one is generated per call otherwise).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        tenant: Optional[str] = None,
        timeout: float = _core.DEFAULT_TIMEOUT_SECONDS,
        max_retries: int = _core.DEFAULT_MAX_RETRIES,
        backoff_initial_seconds: float = 0.1,
        backoff_max_seconds: float = 2.0,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        http_client: Optional[httpx.AsyncClient] = None,
    ) -> None:
        self._options = Options(
            base_url=_core.base_url(base_url),
            api_key=api_key,
            tenant=tenant,
            timeout=timeout,
            max_retries=max_retries,
            backoff_initial_seconds=backoff_initial_seconds,
            backoff_max_seconds=backoff_max_seconds,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(transport=transport, follow_redirects=False)
        self.users = AsyncUsers(self)
        self.wallet = AsyncWallets(self)
        self.reservations = AsyncReservations(self)
        self.billing = AsyncBilling(self)
        self.payments = AsyncPayments(self)
        self.pools = AsyncPools(self)
        self.reports = AsyncReports(self)
        self.audit = AsyncAudit(self)
        self.portal = AsyncPortal(self)
        self.tenants = AsyncTenants(self)
        self.health = AsyncHealth(self)

    @property
    def options(self) -> Options:
        return self._options

    def with_options(
        self,
        *,
        api_key: Optional[str] = None,
        tenant: Union[str, None, _Unset] = UNSET,
        timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
    ) -> AsyncCreditd:
        """A client like this one with some options changed, sharing its connections (close
        the original, not the copy). ``tenant=None`` acts in the key's own tenant."""
        options = self._options
        copy = AsyncCreditd(
            options.base_url,
            options.api_key if api_key is None else api_key,
            tenant=options.tenant if isinstance(tenant, _Unset) else tenant,
            timeout=options.timeout if timeout is None else timeout,
            max_retries=options.max_retries if max_retries is None else max_retries,
            backoff_initial_seconds=options.backoff_initial_seconds,
            backoff_max_seconds=options.backoff_max_seconds,
            http_client=self._http,
        )
        return copy

    async def aclose(self) -> None:
        """Closes the client's connections (not those of an ``http_client`` it was given)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncCreditd:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.aclose()

    async def _request(self, request: Request) -> Any:
        """Sends a request, retrying as :mod:`creditd._core` says; the decoded answer."""
        attempts = _core.Attempts(self._options, request.timeout)
        url = self._options.base_url + request.path
        headers = _core.request_headers(self._options, request)
        while True:
            attempt_timeout = attempts.start()
            try:
                response = await self._http.request(
                    request.method,
                    url,
                    params=request.params or None,
                    content=request.body,
                    headers=headers,
                    timeout=attempt_timeout,
                )
            except _core.RETRYABLE_TRANSPORT_ERRORS as error:
                wait = attempts.delay()
                if wait is None:
                    raise _core.connection_error(error, attempts.made) from error
                await asleep(wait)
                continue
            answer = _core.decode(response, request)
            if isinstance(answer, CreditdError):
                wait = attempts.delay(answer.retry_after) if _core.is_retryable(answer) else None
                if wait is None:
                    raise answer
                await asleep(wait)
                continue
            return answer

    async def me(self, *, timeout: Optional[float] = None) -> Me:
        """The calling key: its name, role and the tenant it acts in."""
        return cast(Me, await self._request(read("/v1/me", timeout=timeout)))

    def with_reservation(
        self,
        user_id: str,
        amount: Optional[int] = None,
        *,
        action: Optional[str] = None,
        quantity: Optional[int] = None,
        ttl_seconds: Optional[int] = None,
        currency: Optional[str] = None,
        description: Optional[str] = None,
        metadata: Json = None,
    ) -> AsyncHold:
        """Holds credits around work whose cost is known only at the end (a model call)::

            async with client.with_reservation("ada", amount=500) as hold:
                reply = await model(prompt)
                hold.cost = reply.usage.total_tokens

        Entering reserves ``amount`` (or ``action`` x ``quantity``): a 402 raises
        :class:`~creditd.InsufficientCreditsError` before the work runs. Leaving captures
        ``hold.cost`` (all of the hold if it was not set; a cost of 0 releases it). If the work
        raises, the hold is released and the exception goes on.
        """
        return AsyncHold(
            self,
            user_id,
            compact(
                amount=amount,
                action=action,
                quantity=quantity,
                ttl_seconds=ttl_seconds,
                currency=currency,
                description=description,
                metadata=metadata,
            ),
        )


class AsyncHold:
    """A reservation held for the length of a ``with`` block (see
    :meth:`AsyncCreditd.with_reservation`)."""

    def __init__(self, client: AsyncCreditd, user_id: str, body: Dict[str, Any]) -> None:
        self._client = client
        self.user_id = user_id
        self._body = body
        #: The answer of the reservation, once made.
        self.reservation: Optional[ReservationAnswer] = None
        #: What to charge when the block ends; all of the hold if left ``None``.
        self.cost: Optional[int] = None
        #: The capture's answer, once the block has ended and something was charged.
        self.captured: Optional[CaptureAnswer] = None
        #: The release's answer, when the hold was released instead.
        self.released: Optional[ReleaseAnswer] = None

    @property
    def reservation_id(self) -> str:
        if self.reservation is None or "reservation_id" not in self.reservation:
            raise RuntimeError("the hold has not been reserved yet")
        return self.reservation["reservation_id"]

    @property
    def amount(self) -> int:
        """What is held."""
        if self.reservation is None:
            raise RuntimeError("the hold has not been reserved yet")
        return self.reservation["amount"]

    async def __aenter__(self) -> AsyncHold:
        self.reservation = cast(
            ReservationAnswer,
            await self._client._request(
                write(
                    "POST",
                    path("/v1/users/{}/reservations", self.user_id),
                    self._body,
                    idempotency_key=None,
                    timeout=None,
                )
            ),
        )
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        reservations = self._client.reservations
        if exc_type is not None:
            try:
                self.released = await reservations.release(self.reservation_id)
            except CreditdException:
                # The work's own error is the one to see; an unreleased hold expires by itself.
                pass
            return
        if self.cost is not None and self.cost < 0:
            raise ValueError("a hold's cost cannot be negative")
        if self.cost == 0:
            self.released = await reservations.release(self.reservation_id)
        else:
            self.captured = await reservations.capture(self.reservation_id, self.cost)


class _AsyncGroup:
    def __init__(self, client: AsyncCreditd) -> None:
        self._client = client

    async def _call(self, request: Request) -> Any:
        return await self._client._request(request)


class AsyncUsers(_AsyncGroup):
    """Users and their profiles."""

    async def put(
        self,
        user_id: str,
        *,
        email: Union[str, None, _Unset] = UNSET,
        name: Union[str, None, _Unset] = UNSET,
        metadata: Union[Json, _Unset] = UNSET,
        timeout: Optional[float] = None,
    ) -> User:
        """Creates the user or updates its profile (``PUT``): a field left out is kept, ``None``
        clears it, ``metadata`` replaces the stored document. Call it at each sign-in."""
        body = keep_nulls(email=email, name=name, metadata=metadata)
        return cast(
            User,
            await self._call(
                write(
                    "PUT",
                    path("/v1/users/{}", user_id),
                    body,
                    idempotency_key=None,
                    timeout=timeout,
                )
            ),
        )

    #: The same as :meth:`put`: sync a user at sign-in.
    sync = put

    async def update(
        self,
        user_id: str,
        *,
        email: Union[str, None, _Unset] = UNSET,
        name: Union[str, None, _Unset] = UNSET,
        metadata: Union[Json, _Unset] = UNSET,
        timeout: Optional[float] = None,
    ) -> User:
        """Changes an existing user (``PATCH``): as :meth:`put`, but ``metadata`` is merged
        into the stored document (JSON Merge Patch: ``None`` members are removed)."""
        body = keep_nulls(email=email, name=name, metadata=metadata)
        return cast(
            User,
            await self._call(
                write(
                    "PATCH",
                    path("/v1/users/{}", user_id),
                    body,
                    idempotency_key=None,
                    timeout=timeout,
                )
            ),
        )

    async def get(self, user_id: str, *, timeout: Optional[float] = None) -> User:
        return cast(User, await self._call(read(path("/v1/users/{}", user_id), timeout=timeout)))

    async def list(
        self,
        *,
        prefix: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> UserList:
        """One page of the tenant's users whose id starts with ``prefix``, in id order."""
        params = query(prefix=prefix, limit=limit, cursor=cursor)
        return cast(UserList, await self._call(read("/v1/users", params, timeout=timeout)))

    async def iterate(
        self, *, prefix: Optional[str] = None, page_size: Optional[int] = None
    ) -> AsyncIterator[User]:
        """Every user whose id starts with ``prefix``, page after page."""
        cursor: Optional[str] = None
        while True:
            page = await self.list(prefix=prefix, limit=page_size, cursor=cursor)
            for user in page["users"]:
                yield user
            cursor = page["next_cursor"]
            if cursor is None:
                return


class AsyncWallets(_AsyncGroup):
    """Balances, credits, debits and the ledger."""

    async def get(
        self, user_id: str, *, currency: Optional[str] = None, timeout: Optional[float] = None
    ) -> Wallet:
        """The wallet in ``currency`` (default: the tenant's), with every balance the user holds."""
        params = query(currency=currency)
        return cast(
            Wallet,
            await self._call(read(path("/v1/users/{}/wallet", user_id), params, timeout=timeout)),
        )

    async def credit(
        self,
        user_id: str,
        amount: int,
        *,
        kind: Optional[str] = None,
        reason: Optional[str] = None,
        description: Optional[str] = None,
        currency: Optional[str] = None,
        reference: Optional[str] = None,
        metadata: Json = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> CreditAnswer:
        """Adds credits. ``kind`` is ``grant`` (default; a service key's grants are capped per
        day), or with an admin key ``topup``, ``refund`` or ``adjustment``; admin and platform
        keys must give a ``reason``."""
        body = compact(
            amount=amount,
            kind=kind,
            reason=reason,
            description=description,
            currency=currency,
            reference=reference,
            metadata=metadata,
        )
        request = write(
            "POST",
            path("/v1/users/{}/credit", user_id),
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(CreditAnswer, await self._call(request))

    async def debit(
        self,
        user_id: str,
        amount: Optional[int] = None,
        *,
        action: Optional[str] = None,
        quantity: Optional[int] = None,
        currency: Optional[str] = None,
        description: Optional[str] = None,
        reference: Optional[str] = None,
        metadata: Json = None,
        dry_run: bool = False,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> DebitAnswer:
        """Spends ``amount``, or a catalogue ``action`` x ``quantity``. Above what the wallet
        can spend: :class:`~creditd.InsufficientCreditsError` (with ``topup_url``), nothing
        written. ``dry_run=True`` answers as if it ran and changes nothing."""
        body = compact(
            amount=amount,
            action=action,
            quantity=quantity,
            currency=currency,
            description=description,
            reference=reference,
            metadata=metadata,
            dry_run=True if dry_run else None,
        )
        request = write(
            "POST",
            path("/v1/users/{}/debit", user_id),
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(DebitAnswer, await self._call(request))

    async def debit_batch(
        self,
        debits: Sequence[BatchDebit],
        *,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> BatchAnswer:
        """Up to 8192 debits in one request, each applied (or refused) on its own: each result
        has ``status`` 200 with the debit's answer, or the problem's status and members."""
        body = {"debits": [dict(debit) for debit in debits]}
        request = write(
            "POST",
            "/v1/debits/batch",
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
            replayed=False,
        )
        return cast(BatchAnswer, await self._call(request))

    async def revoke(
        self,
        user_id: str,
        amount: int,
        *,
        reason: str,
        currency: Optional[str] = None,
        allow_negative: bool = False,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RevokeAnswer:
        """Takes credits back (admin). ``allow_negative=True`` records a chargeback that may
        take the wallet below its floor."""
        body = compact(
            amount=amount,
            reason=reason,
            currency=currency,
            allow_negative=True if allow_negative else None,
        )
        request = write(
            "POST",
            path("/v1/users/{}/revoke", user_id),
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(RevokeAnswer, await self._call(request))

    async def set_overdraft(
        self,
        user_id: str,
        overdraft_limit: int,
        *,
        currency: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Wallet:
        """Sets how far below zero the wallet may go (admin); 0 removes the overdraft."""
        body = compact(overdraft_limit=overdraft_limit, currency=currency)
        request = write(
            "PUT",
            path("/v1/users/{}/overdraft", user_id),
            body,
            idempotency_key=None,
            timeout=timeout,
        )
        return cast(Wallet, await self._call(request))

    async def entries(
        self,
        user_id: str,
        *,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        kind: Optional[str] = None,
        action: Optional[str] = None,
        currency: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> EntryList:
        """One page of the user's ledger, newest first (``from_``/``to``: RFC 3339)."""
        params = query(
            limit=limit,
            cursor=cursor,
            kind=kind,
            action=action,
            currency=currency,
            from_=from_,
            to=to,
        )
        return cast(
            EntryList,
            await self._call(read(path("/v1/users/{}/entries", user_id), params, timeout=timeout)),
        )

    async def iterate_entries(
        self,
        user_id: str,
        *,
        kind: Optional[str] = None,
        action: Optional[str] = None,
        currency: Optional[str] = None,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[Entry]:
        """Every entry of the user's ledger that matches, newest first, page after page."""
        cursor: Optional[str] = None
        while True:
            page = await self.entries(
                user_id,
                limit=page_size,
                cursor=cursor,
                kind=kind,
                action=action,
                currency=currency,
                from_=from_,
                to=to,
            )
            for entry in page["entries"]:
                yield entry
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def stream_token(self, user_id: str, *, timeout: Optional[float] = None) -> StreamToken:
        """A short-lived token that lets a browser's ``EventSource`` follow this one wallet
        (``GET /v1/users/{user_id}/wallet/stream?token=…``)."""
        request = write(
            "POST",
            path("/v1/users/{}/stream-tokens", user_id),
            None,
            idempotency_key=None,
            timeout=timeout,
            keyed=False,
        )
        return cast(StreamToken, await self._call(request))

    async def stream(
        self,
        user_id: str,
        *,
        currency: Optional[str] = None,
        last_event_id: Optional[str] = None,
    ) -> AsyncIterator[WalletEvent]:
        """Follows the wallet live: the view at once, then after every change. Ends when the
        server ends the stream; resume with the last event's ``id`` as ``last_event_id``."""
        options = self._client._options
        headers = options.headers()
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        url = options.base_url + path("/v1/users/{}/wallet/stream", user_id)
        timeout = httpx.Timeout(options.timeout, read=None)
        async with self._client._http.stream(
            "GET", url, params=query(currency=currency) or None, headers=headers, timeout=timeout
        ) as response:
            if not response.is_success:
                await response.aread()
                raise _core.error_from(response)
            lines: List[str] = []
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                    continue
                event, event_id, data = _core.parse_sse(lines)
                lines = []
                if event == "wallet" and data:
                    yield WalletEvent(id=event_id, wallet=cast(Wallet, json.loads(data)))


class AsyncReservations(_AsyncGroup):
    """Holds for work whose cost is known only at the end."""

    async def reserve(
        self,
        user_id: str,
        amount: Optional[int] = None,
        *,
        action: Optional[str] = None,
        quantity: Optional[int] = None,
        ttl_seconds: Optional[int] = None,
        currency: Optional[str] = None,
        description: Optional[str] = None,
        metadata: Json = None,
        dry_run: bool = False,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ReservationAnswer:
        """Holds ``amount`` (or ``action`` x ``quantity``) for ``ttl_seconds`` (default 300)."""
        body = compact(
            amount=amount,
            action=action,
            quantity=quantity,
            ttl_seconds=ttl_seconds,
            currency=currency,
            description=description,
            metadata=metadata,
            dry_run=True if dry_run else None,
        )
        request = write(
            "POST",
            path("/v1/users/{}/reservations", user_id),
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(ReservationAnswer, await self._call(request))

    async def get(self, reservation_id: str, *, timeout: Optional[float] = None) -> Reservation:
        return cast(
            Reservation,
            await self._call(read(path("/v1/reservations/{}", reservation_id), timeout=timeout)),
        )

    async def list_open(self, user_id: str, *, timeout: Optional[float] = None) -> ReservationList:
        """The user's open reservations, oldest first."""
        return cast(
            ReservationList,
            await self._call(read(path("/v1/users/{}/reservations", user_id), timeout=timeout)),
        )

    async def capture(
        self,
        reservation_id: str,
        amount: Optional[int] = None,
        *,
        description: Optional[str] = None,
        metadata: Json = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> CaptureAnswer:
        """Charges ``amount`` (default: all of the hold) and releases the rest. Above the hold,
        the excess comes from the wallet if it can pay it, else 402 and the hold stays."""
        body = compact(amount=amount, description=description, metadata=metadata)
        request = write(
            "POST",
            path("/v1/reservations/{}/capture", reservation_id),
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(CaptureAnswer, await self._call(request))

    async def extend(
        self,
        reservation_id: str,
        ttl_seconds: int,
        *,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ExtendAnswer:
        """Moves the hold's expiry to ``ttl_seconds`` from now."""
        request = write(
            "POST",
            path("/v1/reservations/{}/extend", reservation_id),
            {"ttl_seconds": ttl_seconds},
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(ExtendAnswer, await self._call(request))

    async def release(
        self,
        reservation_id: str,
        *,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> ReleaseAnswer:
        """Gives the whole hold back."""
        request = write(
            "POST",
            path("/v1/reservations/{}/release", reservation_id),
            {},
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(ReleaseAnswer, await self._call(request))


class AsyncBilling(_AsyncGroup):
    """The catalogue (priced actions, top-up packages), the bootstrap view and automatic
    top-up rules."""

    async def bootstrap(
        self, user_id: str, *, currency: Optional[str] = None, timeout: Optional[float] = None
    ) -> Bootstrap:
        """What a billing page needs: the wallet, the active packages and the actions."""
        params = query(currency=currency)
        return cast(
            Bootstrap,
            await self._call(
                read(path("/v1/billing/bootstrap/{}", user_id), params, timeout=timeout)
            ),
        )

    async def list_actions(self, *, timeout: Optional[float] = None) -> ActionList:
        return cast(ActionList, await self._call(read("/v1/actions", timeout=timeout)))

    async def get_action(self, action: str, *, timeout: Optional[float] = None) -> Action:
        return cast(Action, await self._call(read(path("/v1/actions/{}", action), timeout=timeout)))

    async def put_action(
        self,
        action: str,
        cost: int,
        *,
        currency: Optional[str] = None,
        description: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Action:
        """Prices an action (admin)."""
        body = compact(cost=cost, currency=currency, description=description)
        request = write(
            "PUT", path("/v1/actions/{}", action), body, idempotency_key=None, timeout=timeout
        )
        return cast(Action, await self._call(request))

    async def delete_action(self, action: str, *, timeout: Optional[float] = None) -> None:
        """Removes an action from the catalogue (admin)."""
        request = write(
            "DELETE", path("/v1/actions/{}", action), None, idempotency_key=None, timeout=timeout
        )
        await self._call(request)

    async def list_packages(self, *, timeout: Optional[float] = None) -> PackageList:
        return cast(PackageList, await self._call(read("/v1/packages", timeout=timeout)))

    async def get_package(self, package_id: str, *, timeout: Optional[float] = None) -> Package:
        return cast(
            Package, await self._call(read(path("/v1/packages/{}", package_id), timeout=timeout))
        )

    async def put_package(
        self,
        package_id: str,
        *,
        name: str,
        credits: int,
        price_minor: int,
        price_currency: str,
        currency: Optional[str] = None,
        active: Optional[bool] = None,
        position: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Package:
        """Creates or changes a top-up package (admin): ``credits`` for ``price_minor`` minor
        units of ``price_currency``."""
        body = compact(
            name=name,
            credits=credits,
            price_minor=price_minor,
            price_currency=price_currency,
            currency=currency,
            active=active,
            position=position,
        )
        request = write(
            "PUT", path("/v1/packages/{}", package_id), body, idempotency_key=None, timeout=timeout
        )
        return cast(Package, await self._call(request))

    async def delete_package(self, package_id: str, *, timeout: Optional[float] = None) -> None:
        """Removes a package (admin)."""
        request = write(
            "DELETE",
            path("/v1/packages/{}", package_id),
            None,
            idempotency_key=None,
            timeout=timeout,
        )
        await self._call(request)

    async def get_auto_topup(
        self, user_id: str, *, timeout: Optional[float] = None
    ) -> AutoTopupRule:
        return cast(
            AutoTopupRule,
            await self._call(read(path("/v1/users/{}/auto-topup", user_id), timeout=timeout)),
        )

    async def put_auto_topup(
        self,
        user_id: str,
        *,
        threshold: Optional[int] = None,
        package_id: Optional[str] = None,
        enabled: Optional[bool] = None,
        payment_method: Optional[str] = None,
        max_per_day: Optional[int] = None,
        currency: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> AutoTopupRule:
        """Sets the wallet's automatic top-up rule (admin): under ``threshold``, buy
        ``package_id`` with the saved (or given) payment method."""
        body = compact(
            enabled=enabled,
            threshold=threshold,
            package_id=package_id,
            payment_method=payment_method,
            max_per_day=max_per_day,
            currency=currency,
        )
        request = write(
            "PUT",
            path("/v1/users/{}/auto-topup", user_id),
            body,
            idempotency_key=None,
            timeout=timeout,
        )
        return cast(AutoTopupRule, await self._call(request))

    async def delete_auto_topup(self, user_id: str, *, timeout: Optional[float] = None) -> Deleted:
        request = write(
            "DELETE",
            path("/v1/users/{}/auto-topup", user_id),
            None,
            idempotency_key=None,
            timeout=timeout,
        )
        return cast(Deleted, await self._call(request))


class AsyncPayments(_AsyncGroup):
    """Checkouts of packages and their status."""

    async def initialize(
        self,
        user_id: str,
        package_id: str,
        *,
        email: Optional[str] = None,
        callback_url: Optional[str] = None,
        metadata: Optional[Dict[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> InitializedPayment:
        """Starts a checkout of ``package_id`` for the user: send the person to
        ``checkout_url``. The package's credits are added once the gateway reports the payment."""
        body = compact(
            user_id=user_id,
            package_id=package_id,
            email=email,
            callback_url=callback_url,
            metadata=metadata,
        )
        request = write(
            "POST",
            "/v1/payments/initialize",
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(InitializedPayment, await self._call(request))

    async def initialize_for_pool(
        self,
        pool_id: str,
        package_id: str,
        *,
        email: str,
        callback_url: Optional[str] = None,
        metadata: Optional[Dict[str, Any]] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> InitializedPayment:
        """Starts a checkout of ``package_id`` for a credit pool (admin key): once paid, the
        package's credits go to the pool, which its members then draw on."""
        body = compact(
            pool_id=pool_id,
            package_id=package_id,
            email=email,
            callback_url=callback_url,
            metadata=metadata,
        )
        request = write(
            "POST",
            "/v1/payments/initialize",
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(InitializedPayment, await self._call(request))

    async def get(self, reference: str, *, timeout: Optional[float] = None) -> Payment:
        return cast(
            Payment, await self._call(read(path("/v1/payments/{}", reference), timeout=timeout))
        )

    async def list(
        self,
        user_id: str,
        *,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        status: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PaymentList:
        """One page of the user's payments, newest first."""
        params = query(limit=limit, cursor=cursor, status=status)
        return cast(
            PaymentList,
            await self._call(read(path("/v1/users/{}/payments", user_id), params, timeout=timeout)),
        )

    async def abandon(self, reference: str, *, timeout: Optional[float] = None) -> Payment:
        """Settles a pending checkout as failed, ``abandoned`` (admin)."""
        request = write(
            "POST",
            path("/v1/payments/{}/abandon", reference),
            None,
            idempotency_key=None,
            timeout=timeout,
            keyed=False,
        )
        return cast(Payment, await self._call(request))


class AsyncPools(_AsyncGroup):
    """Credit pools: an organisation's balance its members draw on (admin keys)."""

    async def put(
        self,
        pool_id: str,
        *,
        name: Optional[str] = None,
        currency: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Pool:
        body = compact(name=name, currency=currency)
        request = write(
            "PUT", path("/v1/pools/{}", pool_id), body, idempotency_key=None, timeout=timeout
        )
        return cast(Pool, await self._call(request))

    async def get(self, pool_id: str, *, timeout: Optional[float] = None) -> Pool:
        return cast(Pool, await self._call(read(path("/v1/pools/{}", pool_id), timeout=timeout)))

    async def list(self, *, timeout: Optional[float] = None) -> PoolList:
        return cast(PoolList, await self._call(read("/v1/pools", timeout=timeout)))

    async def credit(
        self,
        pool_id: str,
        amount: int,
        *,
        reason: str,
        reference: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PoolCreditAnswer:
        body = compact(amount=amount, reason=reason, reference=reference)
        request = write(
            "POST",
            path("/v1/pools/{}/credit", pool_id),
            body,
            idempotency_key=idempotency_key,
            timeout=timeout,
        )
        return cast(PoolCreditAnswer, await self._call(request))

    async def members(self, pool_id: str, *, timeout: Optional[float] = None) -> PoolMemberList:
        return cast(
            PoolMemberList,
            await self._call(read(path("/v1/pools/{}/members", pool_id), timeout=timeout)),
        )

    async def entries(
        self,
        pool_id: str,
        *,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        user_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PoolEntryList:
        params = query(limit=limit, cursor=cursor, user_id=user_id)
        return cast(
            PoolEntryList,
            await self._call(read(path("/v1/pools/{}/entries", pool_id), params, timeout=timeout)),
        )

    async def payments(
        self,
        pool_id: str,
        *,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        status: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PaymentList:
        """One page of the packages bought for the pool, newest first (admin)."""
        params = query(limit=limit, cursor=cursor, status=status)
        return cast(
            PaymentList,
            await self._call(read(path("/v1/pools/{}/payments", pool_id), params, timeout=timeout)),
        )

    async def get_member(self, user_id: str, *, timeout: Optional[float] = None) -> Membership:
        """The user's membership of a pool (404 ``pool-member-not-found`` if none)."""
        return cast(
            Membership, await self._call(read(path("/v1/users/{}/pool", user_id), timeout=timeout))
        )

    async def set_member(
        self,
        user_id: str,
        pool_id: str,
        *,
        daily_cap: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Membership:
        """Makes the user draw on ``pool_id`` once its own wallet is spent, at most
        ``daily_cap`` per UTC day (no cap if ``None``)."""
        body = compact(pool_id=pool_id, daily_cap=daily_cap)
        request = write(
            "PUT", path("/v1/users/{}/pool", user_id), body, idempotency_key=None, timeout=timeout
        )
        return cast(Membership, await self._call(request))

    async def remove_member(self, user_id: str, *, timeout: Optional[float] = None) -> Deleted:
        request = write(
            "DELETE",
            path("/v1/users/{}/pool", user_id),
            None,
            idempotency_key=None,
            timeout=timeout,
        )
        return cast(Deleted, await self._call(request))


class AsyncReports(_AsyncGroup):
    """Usage and revenue over windows of whole UTC hours (``from_`` and ``to``, RFC 3339)."""

    async def usage(
        self,
        *,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        group_by: Optional[str] = None,
        user_id: Optional[str] = None,
        currency: Optional[str] = None,
        pool_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> UsageReport:
        """Credits spent, grouped by ``action`` (default), ``user``, ``day`` or ``hour``. A
        service key must name a ``user_id``."""
        params = query(
            from_=from_,
            to=to,
            group_by=group_by,
            user_id=user_id,
            currency=currency,
            pool_id=pool_id,
        )
        return cast(
            UsageReport, await self._call(read("/v1/reports/usage", params, timeout=timeout))
        )

    async def revenue(
        self,
        *,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        group_by: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> RevenueReport:
        """Money taken, grouped by ``package`` (default), ``currency`` or ``day`` (admin)."""
        params = query(from_=from_, to=to, group_by=group_by)
        return cast(
            RevenueReport, await self._call(read("/v1/reports/revenue", params, timeout=timeout))
        )


class AsyncAudit(_AsyncGroup):
    """The hash-chained record of configuration changes and money moved by hand (admin)."""

    async def list(
        self,
        *,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
        actor: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> AuditList:
        params = query(from_=from_, to=to, limit=limit, cursor=cursor, actor=actor)
        return cast(AuditList, await self._call(read("/v1/audit", params, timeout=timeout)))

    async def iterate(
        self,
        *,
        from_: Optional[str] = None,
        to: Optional[str] = None,
        actor: Optional[str] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[AuditRecord]:
        cursor: Optional[str] = None
        while True:
            page = await self.list(from_=from_, to=to, limit=page_size, cursor=cursor, actor=actor)
            for record in page["records"]:
                yield record
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def verify(self, *, timeout: Optional[float] = None) -> AuditChainStatus:
        """Recomputes the hash chain: ``status`` is ``intact`` or ``broken``."""
        return cast(AuditChainStatus, await self._call(read("/v1/audit/verify", timeout=timeout)))


class AsyncPortal(_AsyncGroup):
    """The hosted top-up page creditd serves for one user."""

    async def create_session(
        self,
        user_id: str,
        *,
        return_url: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PortalSession:
        """A signed link, valid for minutes, to the user's top-up page: redirect the person to
        ``url`` after a 402."""
        request = write(
            "POST",
            path("/v1/users/{}/portal-sessions", user_id),
            compact(return_url=return_url),
            idempotency_key=None,
            timeout=timeout,
            keyed=False,
        )
        return cast(PortalSession, await self._call(request))


class AsyncTenants(_AsyncGroup):
    """Tenants and their settings (platform keys). To act in another tenant, use
    ``client.with_options(tenant="…")``."""

    async def list(self, *, timeout: Optional[float] = None) -> TenantList:
        return cast(TenantList, await self._call(read("/v1/tenants", timeout=timeout)))

    async def get(self, tenant_id: str, *, timeout: Optional[float] = None) -> Tenant:
        return cast(
            Tenant, await self._call(read(path("/v1/tenants/{}", tenant_id), timeout=timeout))
        )

    async def put(
        self,
        tenant_id: str,
        *,
        name: Optional[str] = None,
        default_currency: Optional[str] = None,
        webhook_url: Optional[str] = None,
        webhook_secret: Optional[str] = None,
        currencies: Optional[Sequence[CurrencyDefinition]] = None,
        timeout: Optional[float] = None,
    ) -> Tenant:
        """Creates or changes a tenant. ``webhook_url`` with ``webhook_secret`` (16 to 256
        characters) sends it signed events (see :func:`~creditd.verify_notification`);
        ``webhook_url=""`` stops them."""
        body = compact(
            name=name,
            default_currency=default_currency,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            currencies=None if currencies is None else [dict(c) for c in currencies],
        )
        request = write(
            "PUT", path("/v1/tenants/{}", tenant_id), body, idempotency_key=None, timeout=timeout
        )
        return cast(Tenant, await self._call(request))


class AsyncHealth(_AsyncGroup):
    """The probes and the API's own description: open routes, answered as text."""

    async def live(self, *, timeout: Optional[float] = None) -> str:
        """``GET /livez``: ``ok`` while the process runs."""
        return cast(str, await self._call(read("/livez", timeout=timeout, text=True)))

    async def ready(self, *, timeout: Optional[float] = None) -> str:
        """``GET /readyz``: ``ready`` (and any warning recovery left) once the server can take
        writes; else :class:`~creditd.ServerBusyError` (``not-ready``, ``recovering``), after
        the call's retries."""
        return cast(str, await self._call(read("/readyz", timeout=timeout, text=True)))

    async def health(self, *, timeout: Optional[float] = None) -> str:
        """``GET /healthz``: the same as :meth:`ready`."""
        return cast(str, await self._call(read("/healthz", timeout=timeout, text=True)))

    async def metrics(self, *, timeout: Optional[float] = None) -> str:
        """``GET /metrics``: the Prometheus text format."""
        return cast(str, await self._call(read("/metrics", timeout=timeout, text=True)))

    async def openapi(self, *, timeout: Optional[float] = None) -> str:
        """``GET /openapi.yaml``: the HTTP contract, as this server serves it."""
        return cast(str, await self._call(read("/openapi.yaml", timeout=timeout, text=True)))
