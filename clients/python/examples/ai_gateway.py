"""An AI gateway that meters model calls in creditd credits.

Two pieces, neither needing a web framework:

- :func:`metered_call`, the hook (the shape LiteLLM's and similar gateways' pre/post-call hooks
  take): reserve enough credits for the largest answer the call may produce, call the model,
  capture what its reported token usage really cost, release the hold if the model fails. A user
  who cannot afford the hold gets :class:`creditd.InsufficientCreditsError` before the model is
  called.
- :class:`CreditGate`, a plain ASGI application (mount it in FastAPI/Starlette with
  ``app.mount("/", CreditGate(...))``, or serve it with any ASGI server) that exposes
  ``POST /v1/chat/completions`` through :func:`metered_call` and answers a 402 with the
  top-up link.

Prices are integers: ``credits_per_1k_tokens`` credits per thousand tokens, rounded up, so no
float comes near a balance.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypedDict

from creditd import AsyncCreditd, CaptureAnswer, CreditdError, InsufficientCreditsError


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelReply(TypedDict):
    content: str
    usage: Usage


#: A model: takes the request (``messages``, ``max_tokens``, …) and answers with its usage.
Model = Callable[[Dict[str, Any]], Awaitable[ModelReply]]

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


def credits_for(tokens: int, credits_per_1k_tokens: int) -> int:
    """The price of ``tokens``, rounded up to a whole credit (integer arithmetic only)."""
    return -(-tokens * credits_per_1k_tokens // 1000)


async def metered_call(
    client: AsyncCreditd,
    user_id: str,
    request: Dict[str, Any],
    model: Model,
    *,
    credits_per_1k_tokens: int,
    max_tokens: int,
) -> Tuple[ModelReply, Optional[CaptureAnswer]]:
    """Calls ``model`` for ``user_id``, holding the price of ``max_tokens`` while it runs and
    charging the price of the tokens it reports. Returns the reply and the capture (``None``
    when the call cost nothing and the hold was released)."""
    hold_credits = credits_for(max_tokens, credits_per_1k_tokens)
    call = dict(request, max_tokens=max_tokens)
    async with client.with_reservation(
        user_id, amount=hold_credits, description=f"model call: {request.get('model', 'model')}"
    ) as hold:
        reply = await model(call)
        hold.cost = credits_for(reply["usage"]["total_tokens"], credits_per_1k_tokens)
    return reply, hold.captured


class CreditGate:
    """``POST /v1/chat/completions`` metered in credits, as a plain ASGI application.

    The caller names the user in the ``X-User-Id`` header (in a real deployment: from the
    session or API key your own authentication checked). Answers: 200 with the model's reply,
    its usage and what it cost; 402 with ``topup_url`` when the user cannot afford the call (the
    model is not called); 502 when the model fails (nothing is charged).
    """

    def __init__(
        self,
        client: AsyncCreditd,
        model: Model,
        *,
        credits_per_1k_tokens: int,
        max_tokens: int = 1024,
    ) -> None:
        self.client = client
        self.model = model
        self.credits_per_1k_tokens = credits_per_1k_tokens
        self.max_tokens = max_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if (scope["method"], scope["path"]) != ("POST", "/v1/chat/completions"):
            await respond(send, 404, {"error": "not_found"})
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        user_id = headers.get("x-user-id")
        if not user_id:
            await respond(send, 401, {"error": "missing X-User-Id"})
            return
        try:
            request = json.loads(await read_body(receive) or b"{}")
        except ValueError:
            await respond(send, 400, {"error": "the body is not JSON"})
            return
        max_tokens = min(int(request.get("max_tokens", self.max_tokens)), self.max_tokens)
        try:
            reply, captured = await metered_call(
                self.client,
                user_id,
                request,
                self.model,
                credits_per_1k_tokens=self.credits_per_1k_tokens,
                max_tokens=max_tokens,
            )
        except InsufficientCreditsError as refused:
            await respond(
                send,
                402,
                {
                    "error": "insufficient_credits",
                    "required": refused.required,
                    "available": refused.available,
                    "topup_url": refused.topup_url,
                },
            )
            return
        except CreditdError as error:
            await respond(send, 503, {"error": "billing_unavailable", "detail": error.detail})
            return
        except Exception as error:  # the model failed: the hold was released
            await respond(send, 502, {"error": "model_failed", "detail": str(error)})
            return
        await respond(
            send,
            200,
            {
                "content": reply["content"],
                "usage": reply["usage"],
                "credits": {
                    "charged": captured["charged"] if captured else 0,
                    "balance": captured["balance"] if captured else None,
                },
            },
        )


async def read_body(receive: Receive) -> bytes:
    chunks: List[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def respond(send: Send, status: int, body: Dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
