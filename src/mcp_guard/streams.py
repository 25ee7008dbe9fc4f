"""What the two newline-delimited JSON-RPC transports (client-facing stdio, upstream stdio) share: the
stream-protocol plumbing the SDK's session loops expect, and the wire encoding of one message."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import anyio
from mcp.shared.message import SessionMessage

__all__ = ["LineReadStream", "LineWriteStream", "encode_line"]


def encode_line(item: SessionMessage) -> bytes:
    """One message as one line of JSON (the stdio framing)."""
    return item.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


class LineReadStream:
    """Base of a ``ReadStream``: subclasses implement ``receive`` (raising ``anyio.EndOfStream`` at the end)
    and ``aclose``; iteration and the async context manager come from here."""

    async def receive(self) -> SessionMessage | Exception:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class LineWriteStream:
    """Base of a ``WriteStream``: subclasses implement ``send`` and ``aclose``."""

    async def send(self, item: SessionMessage) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
