"""Sleeping in the asynchronous client whatever the event loop: anyio's sleep (asyncio or trio)
where anyio is installed, as it is with httpx today, else asyncio's."""

from __future__ import annotations


async def asleep(seconds: float) -> None:
    try:
        import anyio
    except ImportError:  # pragma: no cover - httpx brings anyio
        import asyncio

        await asyncio.sleep(seconds)
        return
    await anyio.sleep(seconds)
