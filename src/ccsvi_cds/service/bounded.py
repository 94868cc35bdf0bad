"""Reading a body of unknown size without trusting it: refuse as soon as it is larger than allowed (declared or
actual), so a hostile peer cannot make a worker buffer more than `limit` bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable


async def read_bounded(chunks: AsyncIterator[bytes], declared: str | None, limit: int,
                       too_large: Callable[[], Exception]) -> bytes:
    """`too_large()` makes the error raised (built only then: every hook call reads its body here)."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large()
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_large()
    return bytes(body)
