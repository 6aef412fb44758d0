"""A :class:`~asgi_sse.resumable.Backend` on Redis Streams: jobs that any process can
publish and any process can stream (``pip install 'asgi-sse[redis]'``).

Per job, under one hash tag (so Redis Cluster keeps them in one slot):

- ``{id}:log``, a stream of the encoded events, one entry per batch (see
  :mod:`._redis_lua`), trimmed with ``MINID`` on every ``XADD``; an end marker
  entry, so a watcher blocked in ``XREAD`` learns of the end from the stream.
- ``{id}:meta``, a hash: state, terminal id, newest id, how long to keep it,
  the token of the attempt that publishes it (an attempt shut out by a later
  one cannot write).
- ``{id}:alive``, set by the publisher every ``lease / 3`` seconds with a
  ``lease`` expiry: a job whose publisher stops refreshing it (its process
  died) is lost, and its watchers are told so.
- ``{id}:watched``, likewise set by every watcher: a job whose key has been
  missing for the grace period has nobody watching.
- ``{id}:ctl``, a list the publisher blocks on: a cancel reaches it at once.

Every write is one script, idempotent, so a retry after a lost reply is safe.
Asyncio only.
"""

from __future__ import annotations

import logging
import secrets
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar, cast

from anyio import CancelScope, create_task_group, current_time, move_on_after, sleep

from ._redis_lua import APPEND, CANCEL, CLAIM, CREATE, FINISH, LOSE, NOTE, RELEASE, RENEW, UNWATCH
from ._store import (
    BackendUnavailable,
    Cancel,
    Claim,
    JobExists,
    JobInfo,
    JobLost,
    Page,
    State,
    retrying,
)

try:
    from redis import exceptions as redis_errors
    from redis.asyncio import Redis
except ImportError:  # pragma: no cover (the message is the point)
    _NEEDS = "asgi_sse.resumable.redis needs redis-py: pip install 'asgi-sse[redis]'"
    raise ImportError(_NEEDS) from None

__all__ = ["RedisBackend"]

_PASSING = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    OSError,
)

logger = logging.getLogger("asgi_sse")
T = TypeVar("T")


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisBackend:
    """Resumable jobs' logs in Redis (6.2 or later, for ``MINID``; 7.0 tested), shared by every
    process that reaches it.

    ``client`` is a ``redis.asyncio.Redis`` (its ``socket_timeout``, if set,
    must be longer than ``block``); ``prefix`` namespaces the keys. ``lease``
    is how long a publisher or watcher counts as present after its last sign
    of life: it bounds how soon a dead publisher is noticed, and adds to a job's
    grace period. ``block`` is the longest a blocking read waits before the
    watcher checks that the publisher is alive.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "asgi-sse:",
        lease: float = 3.0,
        block: float = 1.0,
        page: int = 512,
    ) -> None:
        if not lease > 0 or not block > 0:
            raise ValueError("lease and block must be positive numbers of seconds")
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisBackend stores bytes: give it a client without decode_responses")
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self.block = block
        self.page = page
        self._tokens: dict[str, str] = {}  # job id: the token of the attempt publishing it here
        self._create = client.register_script(CREATE)
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._lose = client.register_script(LOSE)
        self._release = client.register_script(RELEASE)
        self._append = client.register_script(APPEND)
        self._finish = client.register_script(FINISH)
        self._note = client.register_script(NOTE)
        self._cancel = client.register_script(CANCEL)
        self._unwatch = client.register_script(UNWATCH)

    def _key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}{{{job_id}}}:{part}"

    async def _call(self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Redis's passing troubles as the backend-neutral :class:`BackendUnavailable`:
        no connection (``LOADING`` after a restart included), a replica that is
        read-only after a failover, a server out of memory until keys expire."""
        try:
            return await call(*args, **kwargs)
        except _PASSING as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    async def _once(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script that a token makes safe to repeat, retrying for up to a
        lease: on a request's path, an outage must end in an answer."""
        with move_on_after(self.lease):
            return await retrying(self._call, script, keys=keys, args=args)
        raise BackendUnavailable(f"redis: unreachable for {self.lease}s")

    def _keys(self, job_id: str) -> list[str]:
        return [self._key(job_id, part) for part in ("meta", "alive", "log", "watched", "ctl")]

    def _token(self, job_id: str) -> str:
        try:
            return self._tokens[job_id]
        except KeyError:
            raise JobLost(f"job {job_id!r} is not published here") from None

    async def create(self, job_id: str, keep: float) -> None:
        token = secrets.token_hex(8)  # so that a retry of this very call is not refused
        if not await self._once(self._create, self._keys(job_id), [_ms(keep), token]):
            raise JobExists(f"job {job_id!r} already exists")

    @asynccontextmanager
    async def publishing(
        self, job_id: str, *, takeover: bool = False, grace: float | None = None
    ) -> AsyncIterator[Claim]:
        if job_id in self._tokens:  # a publisher in this process is alive: never taken over
            raise JobExists(f"job {job_id!r} already has a publisher")
        keys, token = self._keys(job_id), secrets.token_hex(8)
        args = [_ms(self.lease), token, int(takeover), -1 if grace is None else _ms(grace)]
        code, last, attempt = await self._once(self._claim, keys, args)
        if code == -1:
            raise JobLost(f"no job {job_id!r}")
        if code in (0, -2):
            what = "already has a publisher" if code == 0 else "has ended"
            raise JobExists(f"job {job_id!r} {what}")
        self._tokens[job_id] = token
        try:
            async with create_task_group() as tg:
                tg.start_soon(self._renew_lease, keys, token)
                try:
                    yield Claim(last, attempt, taken_over=code == 2, abandoned=code == 3)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            del self._tokens[job_id]
            # Also when cancelled: the job is not running any more, say so now.
            with CancelScope(shield=True), move_on_after(self.lease):
                try:
                    await self._call(self._lose, keys=keys, args=[token])
                except BackendUnavailable:
                    logger.warning("job %s: could not mark it lost; its lease will run out", job_id)

    async def _renew_lease(self, keys: list[str], token: str) -> None:
        while True:
            await sleep(self.lease / 3)  # a lease renewal period, not a wait for an event
            with suppress(BackendUnavailable):  # renewed on the next round: watchers
                await self._call(self._renew, keys=keys, args=[_ms(self.lease), token])

    async def release(self, job_id: str) -> None:
        await self._once(self._release, self._keys(job_id), [self._token(job_id)])

    async def note(self, job_id: str, event: tuple[int, bytes]) -> bool:
        return bool(await self._once(self._note, self._keys(job_id), list(event)))

    async def cancel(self, job_id: str, event: tuple[int, bytes]) -> Cancel:
        done: bytes = await self._once(self._cancel, self._keys(job_id), list(event))
        return cast(Cancel, done.decode())

    async def wait_cancelled(self, job_id: str) -> None:
        ctl = self._key(job_id, "ctl")
        while not await retrying(self._call, self.client.blpop, [ctl], timeout=self.block):
            pass

    async def append(self, job_id: str, events: Sequence[tuple[int, bytes]], first: int) -> None:
        # One entry per batch: however many events it holds, one script call,
        # one XADD, and one entry for each watcher to read.
        args: list[int | bytes | str] = [self._token(job_id), first]
        if events:
            frames = [frame for _, frame in events]
            args += [events[0][0], struct.pack(f"<{len(frames)}I", *map(len, frames))]
            args.append(b"".join(frames))
        if await self._call(self._append, keys=self._keys(job_id), args=args) == -1:
            raise JobLost(f"job {job_id!r} is no longer this attempt's to publish")

    async def finish(self, job_id: str, end_id: int, keep: float) -> None:
        args = [self._token(job_id), end_id, _ms(keep)]
        if await self._call(self._finish, keys=self._keys(job_id), args=args) == -1:
            raise JobLost(f"job {job_id!r} is no longer this attempt's to publish")

    async def info(self, job_id: str) -> JobInfo | None:
        meta, alive = self._key(job_id, "meta"), self._key(job_id, "alive")
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(meta, "state", "last", "end")
        pipe.exists(alive)
        (state, last, end), is_alive = await self._call(pipe.execute)
        if state is None:
            return None
        status: State = state.decode()
        if status == "running" and not is_alive:
            status = "lost"
        return JobInfo(status, int(last), None if end is None else int(end))

    async def read(self, job_id: str, after: int) -> Page:
        log = self._key(job_id, "log")
        reply: Any = await self._call(
            self.client.xread, {log: f"{after}-0"}, count=self.page, block=_ms(self.block)
        )
        if reply:
            entries = reply[0][1]
            events: list[tuple[int, bytes]] = []
            end_id = None
            # The newest batch knows best what trimming keeps (a batch that
            # trimming cut into stays whole in the stream).
            for _, fields in reversed(entries):
                if b"k" in fields:
                    after = max(after, int(fields[b"k"]) - 1)
                    break
            for entry_id, fields in entries:
                number, _, sub = entry_id.partition(b"-")
                if sub == b"1":  # the end marker
                    end_id = int(number)
                    continue
                event_id, data, start = int(fields[b"f"]), fields[b"d"], 0
                for size in struct.unpack(f"<{len(fields[b'n']) // 4}I", fields[b"n"]):
                    if event_id > after:  # a batch may start before the cursor
                        events.append((event_id, data[start : start + size]))
                    event_id += 1
                    start += size
            return Page(events, end_id)
        # Nothing for a while: is anyone still publishing?
        info = await self.info(job_id)
        if info is not None and info.state == "lost":
            # Give a publisher cut off from Redis (a restart) one lease to come back,
            # then make it official, so that it publishes nothing more if it does.
            await sleep(self.lease)  # a lease period, not a wait for an event
            await self._call(self._lose, keys=self._keys(job_id), args=[""])
            info = await self.info(job_id)
        if info is None or info.state == "lost":
            raise JobLost(f"job {job_id!r} is gone")
        return Page((), info.end_id)

    @asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[None]:
        watched = self._key(job_id, "watched")
        try:
            with suppress(BackendUnavailable):  # counted from now on (else from the next round)
                await self._call(self.client.set, watched, 1, px=_ms(self.lease))
            async with create_task_group() as tg:
                tg.start_soon(self._renew_watch, watched)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:  # a job still in its engine's queue counts as unwatched from now
            with CancelScope(shield=True), move_on_after(self.lease), suppress(BackendUnavailable):
                await self._call(self._unwatch, keys=self._keys(job_id), args=[])

    async def _renew_watch(self, watched: str) -> None:
        while True:
            await sleep(self.lease / 3)  # a lease renewal period, not a wait for an event
            with suppress(BackendUnavailable):  # renewed on the next round
                await self._call(self.client.set, watched, 1, px=_ms(self.lease))

    async def wait_unwatched(self, job_id: str, grace: float) -> None:
        watched = self._key(job_id, "watched")
        unwatched_since = current_time()  # a new job counts as unwatched until someone comes
        while True:
            if await self._call(self.client.exists, watched):
                unwatched_since = current_time()
            elif current_time() - unwatched_since >= grace:
                return
            await sleep(min(self.lease, max(grace, 0.01)) / 3)  # a lease check period
