"""cqloop.worker_events.limits: the bounds of the cross-worker event system, and its errors.

Owns `Limits` (every size, window and timeout the broker and its clients enforce, checked
for consistency in one place) and the exception classes users catch. Imported by the
broker, the client and cqloop.workers; imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cqloop.worker_events.codec import BLOB_OVERHEAD_BYTES, MAX_FRAME_BYTES, MAX_UNIQUE_KEY_BYTES

__all__ = ["Limits", "PayloadTooLarge", "PostQueueFull", "WorkerEventsError"]

MIB = 1024 * 1024

DEFAULT_MAX_PAYLOAD_BYTES = 4 * MIB
DEFAULT_BACKLOG_HIGH_BYTES = 16 * MIB
DEFAULT_BACKLOG_LOW_BYTES = 4 * MIB
DEFAULT_MAX_QUEUED_BYTES = 64 * MIB
DEFAULT_STALL_TIMEOUT_S = 10.0
DEFAULT_UNIQUE_WINDOW_S = 10.0
# A receive window must hold this many of the largest frames, so that a client that has
# handled everything it was sent always owes a credit (it acknowledges in quarters of its
# window; see client.py).
WINDOW_FRAMES = 4
# A post window holds this many of the largest POST frames.
POST_WINDOW_FRAMES = 2


class WorkerEventsError(Exception):
    """The base of the errors cqloop.worker_events raises on purpose."""


class PayloadTooLarge(WorkerEventsError, ValueError):
    """post() refused an event whose encoded form is larger than Limits.max_payload."""


class PostQueueFull(WorkerEventsError):
    """post() refused an event because this process already holds Limits.max_queued bytes
    of posts the broker has not taken yet (use `await post_async()`, which waits)."""


@dataclass(frozen=True)
class Limits:
    """The bounds of one broker and its clients (the broker's are the ones that count: a
    client learns max_payload and post_window from the broker when it connects).

    max_payload    largest encoded event (source, event, data, pid), in bytes
    receive_window bytes of events a client lets the broker send ahead of what it has
                   handled (the credit); default WINDOW_FRAMES largest frames
    post_window    bytes of posts a client may send ahead of what the broker has sequenced
    backlog_high   when any client's unsent backlog in the broker passes this, the broker
                   stops sequencing new posts (posters queue locally, post_async waits)
    backlog_low    ...and starts again when every backlog is below this
    stall_timeout  a client whose backlog is past backlog_high and that has handled
                   nothing for this long is evicted: its backlog is dropped and replaced
                   by one "gap" event
    unique_window  a `unique` key, once sequenced, coalesces later posts of the same key
                   for this long
    max_queued     bytes of posts a client holds before plain post() raises PostQueueFull
    """

    max_payload: int = DEFAULT_MAX_PAYLOAD_BYTES
    receive_window: int = 0  # 0: WINDOW_FRAMES frames of max_payload
    post_window: int = 0  # 0: POST_WINDOW_FRAMES frames of max_payload
    backlog_high: int = DEFAULT_BACKLOG_HIGH_BYTES
    backlog_low: int = DEFAULT_BACKLOG_LOW_BYTES
    stall_timeout: float = DEFAULT_STALL_TIMEOUT_S
    unique_window: float = DEFAULT_UNIQUE_WINDOW_S
    max_queued: int = DEFAULT_MAX_QUEUED_BYTES

    def __post_init__(self) -> None:
        for name in ("max_payload", "backlog_high", "backlog_low", "max_queued"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive int, not {value!r}")
        for name in ("receive_window", "post_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Limits.{name} must be an int >= 0, not {value!r}")
        for name in ("stall_timeout", "unique_window"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive number, not {value!r}")
        if self.max_frame > MAX_FRAME_BYTES:
            raise ValueError(f"Limits.max_payload must be below {MAX_FRAME_BYTES} bytes")
        if self.backlog_low > self.backlog_high:
            raise ValueError("Limits.backlog_low must not be above backlog_high")
        if self.receive_window and self.receive_window < WINDOW_FRAMES * self.max_frame:
            raise ValueError(
                f"Limits.receive_window must hold {WINDOW_FRAMES} frames of max_payload "
                f"({WINDOW_FRAMES * self.max_frame} bytes)"
            )
        if self.post_window and self.post_window < self.max_post_frame:
            raise ValueError(
                f"Limits.post_window must hold one POST of max_payload "
                f"({self.max_post_frame} bytes)"
            )

    @property
    def max_frame(self) -> int:
        """The largest EVENT frame."""
        return self.max_payload + BLOB_OVERHEAD_BYTES

    @property
    def max_post_frame(self) -> int:
        """The largest POST frame (a unique key rides along)."""
        return self.max_payload + BLOB_OVERHEAD_BYTES + MAX_UNIQUE_KEY_BYTES

    @property
    def effective_receive_window(self) -> int:
        return self.receive_window or WINDOW_FRAMES * self.max_frame

    @property
    def effective_post_window(self) -> int:
        return self.post_window or POST_WINDOW_FRAMES * self.max_post_frame
