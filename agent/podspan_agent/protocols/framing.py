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
    `hidden` says whether the last run went on past its captured bytes with frames whose
    prefix was not captured (e.g. a second frame written by a second syscall).
    """

    __slots__ = ("_carry", "_skip", "frame_length", "header", "hidden", "lost")

    def __init__(self, header: int, frame_length: Callable[[bytes, int], int | None]) -> None:
        self.header = header
        self.frame_length = frame_length
        self._carry = b""
        self._skip = 0
        self.lost = 0  # runs whose framing could not be followed
        self.hidden = False

    def frames(self, data: bytes, size: int) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        self.hidden = False
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
                    self.hidden = True
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
    in `_request` / `_response`; a request waits (`_wait`) until a response is `_answered`.

    Both users (Kafka, MongoDB) answer a connection's requests in the order they were sent,
    which places a response whose id the capture missed — as long as no request the capture
    missed may have been sent before the one it would be paired with.
    """

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
        # id -> (whether requests the capture missed were sent just before it, the request)
        self._pending: pairing.BoundedDict[int, tuple[bool, RequestT]] = pairing.BoundedDict(max_pending)
        self._missed_requests = False  # since the last request that began waiting
        self.unanswered = 0  # requests still waiting when the connection was flushed
        self.unseen = 0  # requests answered by a response the capture did not show

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
        lost = framer.lost
        try:
            for head, length in framer.frames(message.data, message.size):
                handle(head, length, message, records)
            if framer.hidden and not message.from_client:
                # Responses come in order and this run began after every waiting request was
                # sent, so the unseen rest starts with the answer to the oldest: report it
                # without what only the response could tell.
                request = self._answered(None)
                if request is not None:
                    records.append(self._unseen_response(request, message))
        except Exception:  # a parser must never raise; the frame is simply not reported
            framer.lost += 1
        if message.from_client and framer.lost > lost:
            self._missed_requests = True
        return records

    def flush(self) -> list[base.Record]:
        # pairing.BoundedDict cannot list its entries, so unanswered requests are only counted.
        self.unanswered += len(self._pending)
        self._pending = pairing.BoundedDict(self._pending.limit)
        return []

    def _wait(self, request_id: int, request: RequestT) -> None:
        self._pending.put(request_id, (self._missed_requests, request))
        self._missed_requests = False

    def _answered(self, request_id: int | None) -> RequestT | None:
        """The waiting request a response answers; `request_id` None when the capture holds too
        little of the response to read it (a client that reads the length prefix on its own)."""
        key = self._pending.oldest() if request_id is None else request_id
        waiting = None if key is None else self._pending.get(key)
        if key is None or waiting is None:
            return None  # e.g. the answer to a request whose frame was not captured
        if request_id is None and waiting[0]:
            return None  # it may answer a request sent before the oldest that was not captured
        # Responses come in request order: requests sent before this one were answered in
        # bytes the capture did not show, and would otherwise wait until the connection closes.
        while (oldest := self._pending.oldest()) is not None and oldest != key:
            self._pending.pop(oldest)
            self.unseen += 1
        self._pending.pop(key)
        return waiting[1]

    def _request(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        raise NotImplementedError

    def _response(self, head: bytes, length: int, message: base.Message, records: list[base.Record]) -> None:
        raise NotImplementedError

    def _unseen_response(self, request: RequestT, message: base.Message) -> base.Record:
        """The record of a request whose response is somewhere in `message`'s uncaptured bytes."""
        raise NotImplementedError
