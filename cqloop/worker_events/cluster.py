"""cqloop.worker_events.cluster: the settings of worker_events across hosts, one Redis stream.

    cqloop.workers.serve(app, workers=4, port=8080,
                         events="redis://:secret@redis.internal:6379/0?stream=myapp.events")

With `events=` a Redis URL, each host's supervisor bridges its local broker to one Redis
stream (see _redis_bridge.py): broadcasts posted on any host are appended to the stream
and delivered, in stream order, to every worker of every connected host. The guarantees,
the settings and what happens on each fault are in docs/cluster.md.

Owns `ClusterSettings` (parsed from the URL: the connection part goes to the `redis`
package as it is, the parameters below are ours and are taken out of it) and the check
that the optional `redis` package is installed. Imports nothing of `redis` at import time:
cqloop keeps no runtime dependency on it (the extra `cqloop[cluster]` installs it).

Our URL parameters (all optional):
  stream         the stream's key (default "cqloop.worker_events"); the bridge also uses
                 the keys STREAM:unique, STREAM:count, STREAM:poster:*, STREAM:key:*
  maxlen         retention: the stream is trimmed to about this many entries
                 (XADD MAXLEN ~); a host that resumes past the trimmed part gets a gap event
  queue          bytes of posts a host holds while Redis is unreachable; past it the
                 workers queue (Limits.max_queued) and then post() raises PostQueueFull
  backoff_min    the first reconnection delay, in seconds; it doubles on each failure...
  backoff_max    ...up to this
  claim_timeout  seconds after which a unique event taken by a host that went silent
                 (killed, partitioned) is claimed by another host

Everything else in the URL (user, password, host, port, db, `rediss://` for TLS and the
`ssl_*` parameters) is the `redis` package's. The password is never printed: the repr of
the settings and of the bridge, and every log line, show it as "***".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["ClusterSettings", "require_redis"]

SCHEMES = ("redis", "rediss")
DEFAULT_STREAM = "cqloop.worker_events"
DEFAULT_MAXLEN = 100_000
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_BACKOFF_MIN_S = 0.05
DEFAULT_BACKOFF_MAX_S = 2.0
DEFAULT_CLAIM_TIMEOUT_S = 30.0
HIDDEN = "***"
EXTRA_HINT = "pip install 'cqloop[cluster]'"


def require_redis() -> ModuleType:
    """The `redis.asyncio` module, or an ImportError that names the extra to install."""
    try:
        import redis.asyncio
    except ImportError as exc:
        raise ImportError(
            f"worker_events across hosts needs the `redis` package: {EXTRA_HINT} "
            f"(cannot import redis.asyncio: {exc})"
        ) from None
    return redis.asyncio


def redact(url: str) -> str:
    """`url` with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{HIDDEN}@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _positive(name: str, text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"events URL parameter {name}={text!r} is not a {kind.__name__}") from None
    if not value > 0 or (kind is float and not math.isfinite(value)):
        raise ValueError(f"events URL parameter {name} must be positive, not {text!r}")
    return value


@dataclass(frozen=True, repr=False)
class ClusterSettings:
    """What the bridge needs; made by from_url(). `url` keeps the password: print
    `redacted`, never `url`."""

    url: str
    stream: str = DEFAULT_STREAM
    maxlen: int = DEFAULT_MAXLEN
    queue: int = DEFAULT_QUEUE_BYTES
    backoff_min: float = DEFAULT_BACKOFF_MIN_S
    backoff_max: float = DEFAULT_BACKOFF_MAX_S
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT_S

    @classmethod
    def from_url(cls, url: str) -> ClusterSettings:
        """Parse `redis://...?stream=NAME&...`; ValueError for a URL that is not one."""
        if not isinstance(url, str):
            raise TypeError(f"events must be a redis:// or rediss:// URL, not {url!r}")
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"events must be a redis:// or rediss:// URL, not {redact(url)!r} "
                "(worker_events across hosts runs on Redis Streams)"
            )
        if not parts.hostname:
            raise ValueError(f"the events URL {redact(url)!r} names no host")
        ours: dict[str, Any] = {}
        theirs: list[tuple[str, str]] = []
        for name, text in parse_qsl(parts.query, keep_blank_values=True):
            if name == "stream":
                if not text:
                    raise ValueError("events URL parameter stream must not be empty")
                ours[name] = text
            elif name in ("maxlen", "queue"):
                ours[name] = _positive(name, text, int)
            elif name in ("backoff_min", "backoff_max", "claim_timeout"):
                ours[name] = _positive(name, text, float)
            else:
                theirs.append((name, text))
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), ""))
        settings = cls(url=base, **ours)
        if settings.backoff_min > settings.backoff_max:
            raise ValueError("events URL parameter backoff_min must not be above backoff_max")
        return settings

    @property
    def redacted(self) -> str:
        """The connection URL with the password hidden, and the stream."""
        return f"{redact(self.url)} stream={self.stream!r}"

    def __repr__(self) -> str:
        return (
            f"ClusterSettings({self.redacted}, maxlen={self.maxlen}, queue={self.queue}, "
            f"backoff={self.backoff_min}..{self.backoff_max} s, "
            f"claim_timeout={self.claim_timeout} s)"
        )
