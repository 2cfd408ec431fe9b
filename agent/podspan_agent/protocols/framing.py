"""Length-prefixed framing and the request/response parser skeleton shared by Kafka and MongoDB
(and the framing by DNS over TCP)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from podspan_agent.protocols import base, pairing

RequestT = TypeVar("RequestT")


class LengthFramer:
    """Splits one direction's runs into length-prefixed frames, across run boundaries.

    `frame_length(data, pos)` returns the whole frame's length (prefix included) from at
    least `header` bytes, or None when implausible. `frames()` yields each frame's captured
    head and full length; a frame's uncaptured rest is skipped in the next run. Runs are
    assumed to start on a frame boundary once framing is lost (implausible length).
    """

    __slots__ = ("_carry", "_skip", "frame_length", "header", "lost")

    def __init__(self, header: int, frame_length: Callable[[bytes, int], int | None]) -> None:
        self.header = header
        self.frame_length = frame_length
        self._carry = b""
        self._skip = 0
        self.lost = 0  # runs whose framing could not be followed

    def frames(self, data: bytes, size: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        if self._skip:
            if self._skip >= size:
                self._skip -= size
                return out
            data, size = data[self._skip :], size - self._skip
            self._skip = 0
        if self._carry:
            data, size = self._carry + data, size + len(self._carry)
            self._carry = b""
        pos = 0
        while pos < size:
            if pos + self.header > len(data):
                if len(data) == size:
                    self._carry = data[pos:]  # the prefix continues in the next run
                else:
                    self.lost += 1
                break
            length = self.frame_length(data, pos)
            if length is None:
                self.lost += 1
                break
            out.append((data[pos : pos + length], length))
            pos += length
        if pos > size:
            self._skip = pos - size
        return out


class FramedParser(Generic[RequestT]):
    """A parser whose both directions are length-prefixed frames and whose responses name
    their request by an id: bounded pending requests, never raises. Subclasses parse frames
    in `_request` / `_response`, keeping requests in `self._pending` until answered."""

    def __init__(
        self,
        settings: base.CaptureSettings | None,
        max_pending: int,
        prefix: int,
        frame_length: Callable[[bytes, int], int | None],
    ) -> None:
        self.settings = settings or base.CaptureSettings()
        self._requests = LengthFramer(prefix, frame_length)
        self._responses = LengthFramer(prefix, frame_length)
        self._pending: pairing.BoundedDict[int, RequestT] = pairing.BoundedDict(max_pending)
        self.unanswered = 0  # requests still waiting when the connection was flushed

    @property
    def dropped(self) -> int:
        return self._pending.dropped + self._requests.lost + self._responses.lost

    @property
    def state_size(self) -> int:
        """Requests waiting for their response: bounded by `max_pending`."""
        return len(self._pending)

    def feed(self, message: base.Message) -> list[base.Record]:
        records: list[base.Record] = []
        framer = self._requests if message.from_client else self._responses
        handle = self._request if message.from_client else self._response
        try:
            for head, length in framer.frames(message.data, message.size):
                handle(head, length, message, records)
        except Exception:  # a parser must never raise; the frame is simply not reported
            framer.lost += 1
        return records

    def flush(self) -> list[base.Record]:
        # pairing.BoundedDict cannot list its entries, so unanswered requests are only counted.
        self.unanswered += len(self._pending)
        self._pending = pairing.BoundedDict(self._pending.limit)
        return []

    def _request(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        raise NotImplementedError

    def _response(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        raise NotImplementedError
