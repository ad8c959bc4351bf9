"""The AI-gateway example (``examples/ai_gateway.py``) against a real server: it reserves, calls a
fake model that reports its token usage, and captures what the tokens cost; a user who cannot
pay gets a 402 with the top-up link and the model is never called; a failing model is charged
nothing. Also :meth:`with_reservation` itself, sync and async."""

from __future__ import annotations

from typing import Any, Dict, List

import httpx
import pytest

import creditd
from ai_gateway import CreditGate, ModelReply, credits_for, metered_call
from conftest import SERVICE_KEY, Server


class FakeModel:
    """Answers with one token per character of the last message, and as many for the prompt."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.fail = fail

    async def __call__(self, request: Dict[str, Any]) -> ModelReply:
        self.calls.append(request)
        if self.fail:
            raise RuntimeError("the model is down")
        prompt = request["messages"][-1]["content"]
        completion = prompt.upper()
        tokens = len(prompt)
        return {
            "content": completion,
            "usage": {
                "prompt_tokens": tokens,
                "completion_tokens": tokens,
                "total_tokens": 2 * tokens,
            },
        }


def test_credits_are_whole_and_rounded_up() -> None:
    assert credits_for(0, 30) == 0
    assert credits_for(1, 30) == 1
    assert credits_for(1000, 30) == 30
    assert credits_for(1001, 30) == 31


@pytest.mark.anyio
async def test_the_gateway_meters_a_model_call(server: Server, user_id: str) -> None:
    async with creditd.AsyncCreditd(server.base_url, SERVICE_KEY) as client:
        await client.users.put(user_id)
        await client.wallet.credit(user_id, 100, description="welcome credits")
        model = FakeModel()
        gate = CreditGate(client, model, credits_per_1k_tokens=1000, max_tokens=60)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gateway"
        ) as http:
            answer = await http.post(
                "/v1/chat/completions",
                headers={"X-User-Id": user_id},
                json={"model": "fake-1", "messages": [{"role": "user", "content": "hello world"}]},
            )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        # 11 prompt + 11 completion tokens at a credit per token.
        assert body["content"] == "HELLO WORLD" and body["usage"]["total_tokens"] == 22
        assert body["credits"] == {"charged": 22, "balance": 78}
        # The model was called once, with the gateway's token cap; the hold was 60 credits.
        assert len(model.calls) == 1 and model.calls[0]["max_tokens"] == 60
        wallet = await client.wallet.get(user_id)
        assert (wallet["balance"], wallet["reserved"], wallet["available"]) == (78, 0, 78)
        assert (await client.reservations.list_open(user_id))["reservations"] == []
        entries = (await client.wallet.entries(user_id))["entries"]
        assert [e["kind"] for e in entries][:1] == ["capture"] and entries[0]["amount"] == -22


@pytest.mark.anyio
async def test_a_user_who_cannot_pay_is_refused_before_the_model(
    server: Server, user_id: str
) -> None:
    async with creditd.AsyncCreditd(server.base_url, SERVICE_KEY) as client:
        await client.users.put(user_id)
        await client.wallet.credit(user_id, 10)
        model = FakeModel()
        gate = CreditGate(client, model, credits_per_1k_tokens=1000, max_tokens=60)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gateway"
        ) as http:
            answer = await http.post(
                "/v1/chat/completions",
                headers={"X-User-Id": user_id},
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
        assert answer.status_code == 402
        body = answer.json()
        assert body["required"] == 60 and body["available"] == 10
        assert body["topup_url"].endswith(f"/v1/billing/bootstrap/{user_id}")
        assert model.calls == []
        assert (await client.wallet.get(user_id))["balance"] == 10


@pytest.mark.anyio
async def test_a_failing_model_is_charged_nothing(server: Server, user_id: str) -> None:
    async with creditd.AsyncCreditd(server.base_url, SERVICE_KEY) as client:
        await client.users.put(user_id)
        await client.wallet.credit(user_id, 100)
        gate = CreditGate(client, FakeModel(fail=True), credits_per_1k_tokens=1000, max_tokens=60)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gate), base_url="http://gateway"
        ) as http:
            answer = await http.post(
                "/v1/chat/completions",
                headers={"X-User-Id": user_id},
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
        assert answer.status_code == 502 and answer.json()["error"] == "model_failed"
        wallet = await client.wallet.get(user_id)
        assert (wallet["balance"], wallet["reserved"]) == (100, 0)
        assert (await client.reservations.list_open(user_id))["reservations"] == []
        # The hook on its own raises the model's error after releasing the hold.
        with pytest.raises(RuntimeError, match="the model is down"):
            await metered_call(
                client,
                user_id,
                {"messages": [{"role": "user", "content": "x"}]},
                FakeModel(fail=True),
                credits_per_1k_tokens=1000,
                max_tokens=10,
            )
        assert (await client.wallet.get(user_id))["reserved"] == 0


def test_with_reservation_sync(service: creditd.Creditd, user_id: str) -> None:
    service.users.put(user_id)
    service.wallet.credit(user_id, 50)
    with service.with_reservation(user_id, amount=30, ttl_seconds=60) as hold:
        assert hold.amount == 30 and hold.reservation_id.startswith("rsv_")
        assert service.wallet.get(user_id)["available"] == 20
        hold.cost = 12
    assert hold.captured is not None and hold.captured["charged"] == 12
    assert service.wallet.get(user_id)["balance"] == 38

    # No cost set: the whole hold is charged.
    with service.with_reservation(user_id, amount=8) as whole:
        pass
    assert whole.captured is not None and whole.captured["charged"] == 8
    # A cost of nothing releases it.
    with service.with_reservation(user_id, amount=8) as free:
        free.cost = 0
    assert free.released is not None and free.captured is None
    # An error in the block releases it and goes on.
    with pytest.raises(KeyError):
        with service.with_reservation(user_id, amount=8) as failed:
            raise KeyError("boom")
    assert failed.released is not None and failed.released["released"] == 8
    # A user who cannot afford it: the block never runs.
    ran = []
    with pytest.raises(creditd.InsufficientCreditsError):
        with service.with_reservation(user_id, amount=1000):
            ran.append(True)
    assert ran == []
    assert service.wallet.get(user_id)["balance"] == 30
    assert service.reservations.list_open(user_id)["reservations"] == []
    # A cost above the hold takes the excess from the wallet if it can...
    with service.with_reservation(user_id, amount=5) as over:
        over.cost = 9
    assert over.captured is not None and over.captured["charged"] == 9
    assert service.wallet.get(user_id)["balance"] == 21
    # ...else the capture is refused and the hold stays for the caller to settle.
    with pytest.raises(creditd.InsufficientCreditsError):
        with service.with_reservation(user_id, amount=5) as short:
            short.cost = 500
    assert [
        r["reservation_id"] for r in service.reservations.list_open(user_id)["reservations"]
    ] == [short.reservation_id]
    assert service.reservations.capture(short.reservation_id)["charged"] == 5
