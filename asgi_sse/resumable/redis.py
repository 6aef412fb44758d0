"""A :class:`~asgi_sse.resumable.Backend` on Redis Streams: jobs that any process can
publish and any process can stream (``pip install 'asgi-sse[redis]'``).

Per job, under one hash tag (so Redis Cluster keeps them in one slot):

- ``{id}:log``, a stream of the encoded events, one entry per batch (``_redis_entries``)
  and an end marker, so a watcher blocked in ``XREAD`` learns of the end from the stream.
- ``{id}:meta``, a hash: state, ids, how long to keep it, and the token of the
  attempt that may write (one shut out by a later attempt cannot).
- ``{id}:alive``, set by the publisher every ``lease / 3`` s, expiring after ``lease``:
  a job whose publisher stops (its process died) is lost, and its watchers told.
- ``{id}:watched``, likewise set by every watcher: missing for the grace period, nobody watches.
- ``{id}:ctl``, a list the publisher blocks on: a cancel reaches it at once.

Every write is one script (``_redis_lua``), safe to repeat after a lost reply. Appends
and blocking reads, an event's path, go over connections of their own (``_redis_wire``);
the rest over the client. Asyncio only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from anyio import CancelScope, create_task_group, current_time, move_on_after, sleep

from ._redis_entries import pack, unpack
from ._redis_lua import APPEND, SCRIPTS
from ._store import (
    BackendUnavailable,
    Cancel,
    Claim,
    EndedByCancel,
    JobExists,
    JobInfo,
    JobLost,
    Page,
    State,
    retrying,
)

try:
    from redis.asyncio import Redis

    from ._redis_wire import PASSING, Line, check_client
except ImportError:  # pragma: no cover (the message is the point)
    _NEEDS = "asgi_sse.resumable.redis needs redis-py: pip install 'asgi-sse[redis]'"
    raise ImportError(_NEEDS) from None

__all__ = ["RedisBackend"]

logger = logging.getLogger("asgi_sse")
T = TypeVar("T")

#: The line a watcher reads on, inside :meth:`RedisBackend.watching`, and whose backend it is.
_reading: ContextVar[tuple[RedisBackend, Line] | None] = ContextVar("asgi_sse_redis_reading")


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
        check_client(client, block)
        self.client = client
        self.prefix = prefix
        self.lease = lease
        self.block = block
        self.page = page
        self._tokens: dict[str, str] = {}  # job id: the token of the attempt publishing it here
        self._lines: dict[str, Line] = {}  # job id: the line its attempt here appends on
        self._fenced: set[str] = set()  # tokens a later attempt (or a watcher) has shut out
        self._scripts = {name: client.register_script(code) for name, code in SCRIPTS.items()}

    def _key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}{{{job_id}}}:{part}"

    async def _call(self, call: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Redis's passing troubles (:data:`._redis_wire.PASSING`) as the
        backend-neutral :class:`BackendUnavailable`."""
        try:
            return await call(*args, **kwargs)
        except PASSING as exc:
            raise BackendUnavailable(f"redis: {exc}") from exc

    async def _script(self, name: str, job_id: str, *args: Any) -> Any:
        """Run one of the scripts (:mod:`._redis_lua`) on a job's keys."""
        return await self._call(self._scripts[name], keys=self._keys(job_id), args=list(args))

    async def _once(self, name: str, job_id: str, *args: Any) -> Any:
        """Run a script that a token makes safe to repeat, retrying for up to a
        lease: on a request's path, an outage must end in an answer."""
        with move_on_after(self.lease):
            return await retrying(self._script, name, job_id, *args)
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
        if not await self._once("create", job_id, _ms(keep), token):
            raise JobExists(f"job {job_id!r} already exists")

    @asynccontextmanager
    async def publishing(
        self, job_id: str, *, takeover: bool = False, grace: float | None = None
    ) -> AsyncIterator[Claim]:
        if job_id in self._tokens:  # a publisher in this process is alive: never taken over
            raise JobExists(f"job {job_id!r} already has a publisher")
        token = secrets.token_hex(8)
        args = [_ms(self.lease), token, int(takeover), -1 if grace is None else _ms(grace)]
        code, last, attempt, alive, cancelled = await self._once("claim", job_id, *args)
        if code == 0 and takeover:
            # Its publisher's lease has not run out: wait until it would have, once. One
            # alive renews it meanwhile and keeps the job (a duplicate delivery); a dead one not.
            await sleep(alive / 1000)  # a lease's end, not a wait for an event
            code, last, attempt, alive, cancelled = await self._once("claim", job_id, *args)
        if code in (-1, -3):
            raise JobLost(f"job {job_id!r} is {'unknown' if code == -1 else 'lost'}")
        if code == -2 and cancelled:
            raise EndedByCancel(f"job {job_id!r} was cancelled")
        if code in (0, -2):
            raise JobExists(f"job {job_id!r} {'has ended' if code else 'has a live publisher'}")
        self._tokens[job_id] = token
        self._lines[job_id] = Line(self.client.connection_pool)
        try:
            async with create_task_group() as tg:
                tg.start_soon(self._renew_lease, job_id, token)
                try:
                    how = {"taken_over": code == 2, "abandoned": code == 3}
                    yield Claim(last, attempt, cancelled=bool(cancelled), **how)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            del self._tokens[job_id]
            self._fenced.discard(token)
            # Also when cancelled: the job is not running any more, say so now.
            with CancelScope(shield=True), move_on_after(self.lease):
                await self._lines.pop(job_id).aclose()
                try:
                    await self._script("lose", job_id, token)
                except BackendUnavailable:
                    logger.warning("job %s: could not mark it lost; its lease will run out", job_id)

    async def _renew_lease(self, job_id: str, token: str) -> None:
        while True:
            await sleep(self.lease / 3)  # a lease renewal period, not a wait for an event
            with suppress(BackendUnavailable):  # renewed on the next round: watchers
                if not await self._script("renew", job_id, _ms(self.lease), token):
                    self._fenced.add(token)  # wait_cancelled says so
                    return

    async def release(self, job_id: str, cancelled: tuple[int, bytes]) -> bool:
        done = await self._once("release", job_id, self._token(job_id), *cancelled)
        if not done:
            raise JobLost(f"job {job_id!r} is no longer this attempt's to publish")
        return bool(done == 1)

    async def note(self, job_id: str, event: tuple[int, bytes]) -> bool:
        return bool(await self._once("note", job_id, *event))

    async def cancel(self, job_id: str, event: tuple[int, bytes]) -> Cancel:
        done: bytes = await self._once("cancel", job_id, *event)
        return cast(Cancel, done.decode())

    async def wait_cancelled(self, job_id: str) -> None:
        """The flag says, the list wakes: a signal taken, or sent before, is not missed."""
        token = self._token(job_id)
        meta, ctl = self._key(job_id, "meta"), self._key(job_id, "ctl")
        while not await retrying(self._call, self.client.hexists, meta, "cancel"):
            if token in self._fenced:
                raise JobLost(f"job {job_id!r} is no longer this attempt's to publish")
            await retrying(self._call, self.client.blpop, [ctl], timeout=self.block)

    async def append(self, job_id: str, events: Sequence[tuple[int, bytes]], first: int) -> None:
        # One entry per batch: however many events it holds, one script call,
        # one XADD, and one entry for each watcher to read.
        args: list[int | bytes | str] = [self._token(job_id), first]
        if events:
            args += pack(events)
        line = self._lines[job_id]  # an event's path: a line of its own, not the client
        if await line.script(APPEND, self._keys(job_id), args, within=self.lease) == -1:
            raise JobLost(f"job {job_id!r} is no longer this attempt's to publish")

    async def finish(self, job_id: str, end_id: int, keep: float) -> None:
        args = [self._token(job_id), end_id, _ms(keep)]
        if await self._script("finish", job_id, *args) == -1:
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
        reading = _reading.get(None)
        line = reading[1] if reading is not None and reading[0] is self else None
        if line is None:  # not watching (here): a line for this one read
            line = Line(self.client.connection_pool)
            try:
                return await self._read(line, job_id, after)
            finally:
                with CancelScope(shield=True):
                    await line.aclose()
        return await self._read(line, job_id, after)

    async def _read(self, line: Line, job_id: str, after: int) -> Page:
        command = ("XREAD", "COUNT", self.page, "BLOCK", _ms(self.block), "STREAMS")
        log = self._key(job_id, "log")
        reply = await line.call(*command, log, f"{after}-0", within=self.block + self.lease)
        if reply:  # [[log, entries]]
            return Page(*unpack(reply[0][1], after))
        # Nothing for a while: is anyone still publishing?
        info = await self.info(job_id)
        if info is not None and info.state == "lost":
            # Give a publisher cut off from Redis (a restart) one lease to come back,
            # then make it official, so that it publishes nothing more if it does.
            await sleep(self.lease)  # a lease period, not a wait for an event
            await self._script("lose", job_id, "")
            info = await self.info(job_id)
        if info is None or info.state == "lost":
            raise JobLost(f"job {job_id!r} is gone")
        return Page((), info.end_id)

    @asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[None]:
        line = Line(self.client.connection_pool)
        reading = _reading.set((self, line))  # its reads go over this line, blocked or not
        try:
            with suppress(BackendUnavailable):  # counted from now on (else from the next round)
                await self._script("watch", job_id, _ms(self.lease))
            async with create_task_group() as tg:
                tg.start_soon(self._renew_watch, job_id)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:  # a job still in its engine's queue counts as unwatched from now
            _reading.reset(reading)
            with CancelScope(shield=True), move_on_after(self.lease):
                await line.aclose()
                with suppress(BackendUnavailable):
                    await self._script("unwatch", job_id)

    async def _renew_watch(self, job_id: str) -> None:
        while True:
            await sleep(self.lease / 3)  # a lease renewal period, not a wait for an event
            with suppress(BackendUnavailable):  # renewed on the next round
                await self._script("watch", job_id, _ms(self.lease))

    async def wait_unwatched(self, job_id: str, grace: float) -> None:
        watched = self._key(job_id, "watched")
        unwatched_since = current_time()  # a new job counts as unwatched until someone comes
        while True:
            if await self._call(self.client.exists, watched):
                unwatched_since = current_time()
            elif current_time() - unwatched_since >= grace:
                return
            await sleep(min(self.lease, max(grace, 0.01)) / 3)  # a lease check period
