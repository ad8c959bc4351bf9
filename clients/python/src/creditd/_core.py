"""What the synchronous and the asynchronous client share: options, how a request is built,
which failures are retried and after how long, and how an answer is decoded.

Only the loop that sends a request and sleeps between attempts differs between the two clients
(``_async_client.py``, and ``_sync_client.py`` generated from it).

Retries: a call is retried when no answer came (connection refused, reset or closed before the
answer, timeout), and on the answers that mean "not now": ``409 idempotency-key-in-flight``, any
``503`` (waiting at least its ``Retry-After``) and ``500 write-outcome-unknown``. Never on another
4xx. A state-changing POST carries one ``Idempotency-Key``, generated once per call unless the
caller gives one, and every retry of the call sends the same key and the same body bytes, so
the server applies the change at most once and answers a retry of an applied change from its
idempotency table (``replayed`` in the answer). The delay doubles from ``backoff_initial_seconds``
up to ``backoff_max_seconds``, with jitter, and the whole call, retries included, ends within its
timeout.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote

import httpx

from ._errors import (
    CreditdConnectionError,
    CreditdError,
    CreditdTimeoutError,
    error_class,
    problem_slug,
)

__version__ = "0.1.0"

DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_RETRIES = 3

#: Failures of the transport after which no answer came, so the call may be tried again.
RETRYABLE_TRANSPORT_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


class _Unset:
    """The type of :data:`UNSET`: a field left out of a request (as opposed to ``None``, which
    the API reads as "clear this field" where clearing means something)."""

    _instance: Optional[_Unset] = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET = _Unset()

QueryValue = Union[str, int, bool, None]


@dataclass(frozen=True)
class Options:
    """A client's settings."""

    base_url: str
    api_key: str
    tenant: Optional[str] = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_initial_seconds: float = 0.1
    backoff_max_seconds: float = 2.0
    user_agent: str = f"creditd-python/{__version__}"

    def headers(self) -> Dict[str, str]:
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": self.user_agent,
        }
        if self.tenant is not None:
            headers["X-Tenant"] = self.tenant
        return headers


@dataclass
class Request:
    """One call: what is sent on every attempt, byte for byte."""

    method: str
    path: str
    params: Dict[str, str] = field(default_factory=dict)
    body: Optional[bytes] = None
    idempotency_key: Optional[str] = None
    timeout: Optional[float] = None
    #: Add ``replayed`` (the ``Idempotent-Replayed`` header) to the answer.
    replayed: bool = False
    #: The answer is text (the probes, the metrics, the OpenAPI document), not JSON.
    text: bool = False


def path(template: str, *segments: str) -> str:
    """``template`` with each ``{}`` replaced by a segment, percent-encoded whole."""
    return template.format(*(quote(segment, safe="") for segment in segments))


def query(**values: QueryValue) -> Dict[str, str]:
    """Query parameters, those that are ``None`` left out; a trailing ``_`` in a name (``from_``)
    is dropped."""
    params: Dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        params[name.rstrip("_")] = text
    return params


def compact(**fields: Any) -> Dict[str, Any]:
    """A JSON body of the fields given: those that are ``None`` or :data:`UNSET` left out."""
    return {
        name: value
        for name, value in fields.items()
        if value is not None and not isinstance(value, _Unset)
    }


def keep_nulls(**fields: Any) -> Dict[str, Any]:
    """A JSON body where ``None`` is sent as ``null`` and only :data:`UNSET` is left out."""
    return {name: value for name, value in fields.items() if not isinstance(value, _Unset)}


def encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def write(
    method: str,
    request_path: str,
    body: Optional[Mapping[str, Any]],
    *,
    idempotency_key: Optional[str],
    timeout: Optional[float],
    keyed: bool = True,
    replayed: bool = True,
) -> Request:
    """A state-changing request. A POST that honours ``Idempotency-Key`` (``keyed``) gets one,
    the caller's or a new UUID 4, fixed for all its attempts, and its answer says whether it
    was a replay (``replayed``: not for the batch, whose items say it each). PUT, PATCH and
    DELETE are idempotent by nature and carry none."""
    is_post = method == "POST"
    key = idempotency_key if is_post and keyed else None
    if is_post and keyed and key is None:
        key = str(uuid.uuid4())
    return Request(
        method=method,
        path=request_path,
        body=None if body is None else encode(body),
        idempotency_key=key,
        timeout=timeout,
        replayed=is_post and keyed and replayed,
    )


def read(
    request_path: str,
    params: Optional[Dict[str, str]] = None,
    *,
    timeout: Optional[float],
    text: bool = False,
) -> Request:
    return Request(method="GET", path=request_path, params=params or {}, timeout=timeout, text=text)


def request_headers(options: Options, request: Request) -> Dict[str, str]:
    headers = options.headers()
    if request.body is not None:
        headers["Content-Type"] = "application/json"
    if request.idempotency_key is not None:
        headers["Idempotency-Key"] = request.idempotency_key
    return headers


class Attempts:
    """The retry budget of one call: how many attempts remain and until when."""

    def __init__(self, options: Options, timeout: Optional[float]) -> None:
        self.options = options
        self.timeout = options.timeout if timeout is None else timeout
        self.deadline = time.monotonic() + self.timeout
        self.made = 0

    def start(self) -> float:
        """Counts an attempt; the seconds it may take."""
        self.made += 1
        return max(0.001, self.deadline - time.monotonic())

    def delay(self, retry_after: Optional[float] = None) -> Optional[float]:
        """The seconds to wait before the next attempt, or ``None`` if there is to be none (no
        retries left, or the wait would end past the call's timeout)."""
        if self.made > self.options.max_retries:
            return None
        ceiling = min(
            self.options.backoff_max_seconds,
            self.options.backoff_initial_seconds * 2.0 ** (self.made - 1),
        )
        wait = ceiling * random.uniform(0.5, 1.0)
        if retry_after is not None:
            wait = max(wait, retry_after)
        if time.monotonic() + wait >= self.deadline:
            return None
        return wait


def retry_after_seconds(headers: httpx.Headers) -> Optional[float]:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def is_retryable(error: CreditdError) -> bool:
    """Whether an error answer means "try the same request again later"."""
    return error.status == 503 or error.slug in (
        "idempotency-key-in-flight",
        "write-outcome-unknown",
    )


def decode(response: httpx.Response, request: Request) -> Union[Any, CreditdError]:
    """The answer's JSON on a 2xx (with ``replayed`` added to the answers of writes), else the
    error to raise."""
    if response.is_success:
        if request.text:
            return response.text
        content = response.content
        try:
            answer: Any = json.loads(content) if content else {}
        except ValueError:
            # Not creditd speaking (a proxy's page, say): an error, never a retry.
            return CreditdError(
                response.status_code,
                {"title": "The answer is not JSON", "detail": response.text[:200]},
                request_id=response.headers.get("x-request-id"),
            )
        if request.replayed and isinstance(answer, dict):
            answer["replayed"] = response.headers.get("idempotent-replayed", "").lower() == "true"
        return answer
    return error_from(response)


def error_from(response: httpx.Response) -> CreditdError:
    body: Dict[str, Any] = {}
    try:
        parsed = json.loads(response.content) if response.content else None
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    if not body:
        body = {"status": response.status_code, "title": response.reason_phrase}
    cls = error_class(response.status_code, problem_slug(body))
    return cls(
        response.status_code,
        body,
        request_id=response.headers.get("x-request-id"),
        retry_after=retry_after_seconds(response.headers),
    )


def connection_error(error: Exception, attempts: int) -> CreditdConnectionError:
    if isinstance(error, httpx.TimeoutException):
        return CreditdTimeoutError(
            f"no answer within the timeout after {attempts} attempt(s): {error!r}",
            attempts=attempts,
        )
    return CreditdConnectionError(
        f"no answer after {attempts} attempt(s): {error!r}", attempts=attempts
    )


def base_url(url: str) -> str:
    return url.rstrip("/")


def parse_sse(lines: List[str]) -> Tuple[Optional[str], Optional[str], str]:
    """One server-sent event from its lines: (event, id, data)."""
    event: Optional[str] = None
    event_id: Optional[str] = None
    data: List[str] = []
    for line in lines:
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
    return event, event_id, "\n".join(data)
