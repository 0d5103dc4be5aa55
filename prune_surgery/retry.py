"""Retries for Hub transfers: bounded exponential backoff, Retry-After, resume from the byte reached.

Transient failures are connection resets, timeouts, truncated or short bodies, and the answers
408, 425, 429, 500, 502, 503 and 504.  Each failure waits ``first_wait * 2**n`` seconds (capped,
or the server's Retry-After, capped too) and tries again; an attempt that brought new bytes
starts the count afresh.  When attempts run out, one :class:`SourceError` says what failed.

``PRUNE_SURGERY_RETRIES`` (default 5) and ``PRUNE_SURGERY_RETRY_WAIT`` (first wait in seconds,
default 1) tune it; waits never exceed ``MAX_WAIT`` seconds.
"""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .errors import SourceError

T = TypeVar("T")
log = logging.getLogger("prune_surgery.retry")
log.addHandler(logging.NullHandler())  # a library: each retry is logged, shown only where logging is configured
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_WAIT = 60.0


class ShortBody(Exception):
    """The server ended a body before the bytes it was asked for."""


class BadDigest(Exception):
    """A downloaded file's sha256 differs from the one the Hub gives for it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry, and how long to wait before the first retry."""

    attempts: int = 5
    first_wait: float = 1.0

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """The policy from PRUNE_SURGERY_RETRIES / PRUNE_SURGERY_RETRY_WAIT."""
        try:
            return cls(max(0, int(os.environ.get("PRUNE_SURGERY_RETRIES", "5"))),
                       max(0.0, float(os.environ.get("PRUNE_SURGERY_RETRY_WAIT", "1"))))
        except ValueError:
            raise SourceError("PRUNE_SURGERY_RETRIES must be an integer and PRUNE_SURGERY_RETRY_WAIT a number of seconds") from None

    def wait(self, failures: int, exc: BaseException) -> float:
        """Seconds to wait after the `failures`-th failure in a row (Retry-After wins, capped)."""
        after = retry_after(exc)
        return min(MAX_WAIT, after if after is not None else self.first_wait * 2 ** (failures - 1))


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After seconds of the answer behind `exc`, if it has one."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        return max(0.0, float(headers.get("retry-after")))
    except (TypeError, ValueError):
        return None


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is worth another attempt (network trouble, overload), not a real answer."""
    import httpx2

    if isinstance(exc, (ShortBody, BadDigest, httpx2.TransportError)):
        return True
    if _status(exc) in TRANSIENT_STATUS:
        return True
    cause = exc.__cause__ or exc.__context__
    if "Consistency check failed" in str(exc):  # huggingface_hub: a download ended short
        return True
    return cause is not None and cause is not exc and _status(exc) is None and is_transient(cause)


def describe(exc: BaseException) -> str:
    """A short name for a transient failure."""
    status = _status(exc)
    if status is not None:
        return f"HTTP {status}"
    return str(exc).splitlines()[0] if isinstance(exc, (ShortBody, BadDigest)) else type(exc).__name__


def with_retries(what: str, attempt: Callable[[], T], policy: RetryPolicy | None = None,
                 progress: Callable[[], int] = lambda: 0, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `attempt` until it succeeds, retrying transient failures as the policy says.

    `progress` returns how far the work got (bytes); a failed attempt that moved it resets the count.
    """
    policy = policy or RetryPolicy.from_env()
    failures, reached = 0, progress()
    while True:
        try:
            return attempt()
        except Exception as exc:  # noqa: BLE001 - non-transient failures are raised unchanged
            if not is_transient(exc):
                raise
            now = progress()
            failures = 1 if now > reached else failures + 1
            reached = now
            if failures > policy.attempts:
                if isinstance(exc, (ShortBody, BadDigest)):
                    raise SourceError(f"{what} failed {failures} times in a row ({describe(exc)}); "
                                      "check the network or the Hub's status and run again") from None
                exc.prune_surgery_attempts = failures  # type: ignore[attr-defined]
                raise  # the caller names the failure (see hub._hub_errors)
            wait = policy.wait(failures, exc)
            log.warning("%s: %s; retrying in %.1f s (%d of %d)", what, describe(exc), wait, failures, policy.attempts)
            sleep(wait)


def read_range(url: str, headers: dict[str, str], offset: int, length: int, what: str,
               policy: RetryPolicy | None = None) -> bytes:
    """Bytes [offset, offset + length) of `url` by HTTP range requests, resuming after each failure."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session, hf_raise_for_status

    got = bytearray()

    def attempt() -> bytes:
        start = offset + len(got)
        ask = {**headers, "Range": f"bytes={start}-{offset + length - 1}"}
        with get_session().stream("GET", url, headers=ask, follow_redirects=True,
                                  timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            hf_raise_for_status(response)
            skip = start if response.status_code == 200 else 0  # the server ignored the range
            for chunk in response.iter_bytes():
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                got.extend(chunk[: length - len(got)])
                if len(got) == length:
                    break
        if len(got) < length:
            raise ShortBody(f"the Hub sent {len(got)} of {length} bytes")
        return bytes(got)

    return with_retries(what, attempt, policy, progress=lambda: len(got))


def check_lfs_digest(path: Path, expected: str) -> None:
    """Raise BadDigest unless the file's sha256 is `expected` (the Hub's LFS oid)."""
    from .verify import file_sha256

    actual = file_sha256(path)
    if actual != expected:
        raise BadDigest(f"{path.name}: sha256 {actual[:12]}... is not the Hub's {expected[:12]}...")


def retry_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` with transient failures retried."""
    return with_retries(what, lambda: fn(*args, **kwargs))


@contextmanager
def quiet_hub_log() -> Iterator[None]:
    """Silence huggingface_hub's own resume warnings (retries are reported here, failures in one line)."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def checked_shards(folder: Path, fresh: list[str]) -> Path:
    """Check each freshly downloaded LFS shard against the sha256 the Hub named its blob by.

    A shard that does not match is removed from the cache (so the retry downloads it again)."""
    for name in list(fresh):
        blob = (folder / name).resolve()
        if re.fullmatch(r"[0-9a-f]{64}", blob.name):
            try:
                check_lfs_digest(blob, blob.name)
            except BadDigest:
                blob.unlink()
                (folder / name).unlink()
                raise
        fresh.remove(name)
    return folder


def partial_bytes(cache: str) -> int:
    """Bytes of the downloads in progress in the cache (a retry that moved them made progress)."""
    return sum(p.stat().st_size for p in Path(cache).glob("models--*/blobs/*.incomplete"))
