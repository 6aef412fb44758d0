"""A :class:`~asgi_sse.resumable.Backend` on Redis Streams: jobs that any process can
publish and any process can stream (``pip install 'asgi-sse[redis]'``).

Per job, under one hash tag (so Redis Cluster keeps them in one slot):

- ``{id}:log``, a stream of the encoded events, entry ``N-0`` for event ``N``,
  trimmed exactly with ``MINID`` on every ``XADD``; entry ``N-1`` marks event
  ``N`` terminal, so a watcher blocked in ``XREAD`` learns of the end from the
  stream itself.
- ``{id}:meta``, a hash: state, terminal id, newest id, how long to keep it.
- ``{id}:alive``, set by the publisher every ``lease / 3`` seconds with a
  ``lease`` expiry: a job whose publisher stops refreshing it (its process
  died) is lost, and its watchers are told so.
- ``{id}:watched``, likewise set by every watcher: a job whose key has been
  missing for the grace period has nobody watching.

Every write is idempotent, so a retry after a lost reply is safe. Asyncio only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

from anyio import CancelScope, create_task_group, current_time, move_on_after, sleep

from ._store import BackendUnavailable, JobExists, JobInfo, JobLost, Page, State, retrying

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

# KEYS: meta, alive, log. A running job's keys expire a lease plus ``keep`` after
# its publisher's last renewal: a publisher that dies leaves nothing for ever.
# 1: created (or by this same call before); 0: the id is taken.
_CREATE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then return owner == ARGV[2] and 1 or 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'last', 0, 'keep', ARGV[1], 'owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
# 1: claimed (by this publisher); 0: it has another publisher; -1: unknown.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'pending' then
    return redis.call('HGET', KEYS[1], 'publisher') == ARGV[2] and 1 or 0
end
redis.call('HSET', KEYS[1], 'state', 'running', 'publisher', ARGV[2])
redis.call('SET', KEYS[2], 1, 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1] + redis.call('HGET', KEYS[1], 'keep'))
return 1
"""
# The publisher's sign of life. 0: the job is no longer its to publish (lost).
_RENEW = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
local ttl = ARGV[1] + redis.call('HGET', KEYS[1], 'keep')
redis.call('SET', KEYS[2], 1, 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""
# Lost: by its publisher leaving without finishing (ARGV[1] = 1), or, seen by a
# watcher, by its lease running out (ARGV[1] = 0: only if it has). Kept ``keep`` more.
_LOSE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if ARGV[1] == '0' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local keep = redis.call('HGET', KEYS[1], 'keep')
redis.call('HSET', KEYS[1], 'state', 'lost')
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[3], keep)
return 1
"""
# Events numbered from ARGV[2] on; those the log already has (a retry) are
# skipped. -1: the job is no longer running (declared lost): publish nothing.
_APPEND = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return -1 end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local minid = ARGV[1] .. '-0'
local id = tonumber(ARGV[2])
for i = 3, #ARGV do
    if id > last then
        redis.call('XADD', KEYS[3], 'MINID', minid, id .. '-0', 'd', ARGV[i])
        last = id
    end
    id = id + 1
end
if #ARGV == 2 then redis.call('XTRIM', KEYS[3], 'MINID', minid) end
redis.call('HSET', KEYS[1], 'last', last)
return last
"""
# The end: marker entry N-1 after terminal event N, so blocked readers see it.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'ended' then return 1 end
if state ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], 'state', 'ended', 'end', ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], ARGV[1] .. '-1', 'e', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""


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
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._lose = client.register_script(_LOSE)
        self._append = client.register_script(_APPEND)
        self._finish = client.register_script(_FINISH)

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
        return [self._key(job_id, part) for part in ("meta", "alive", "log")]

    async def create(self, job_id: str, keep: float) -> None:
        token = secrets.token_hex(8)  # so that a retry of this very call is not refused
        if not await self._once(self._create, self._keys(job_id)[:1], [_ms(keep), token]):
            raise JobExists(f"job {job_id!r} already exists")

    @asynccontextmanager
    async def publishing(self, job_id: str) -> AsyncIterator[None]:
        keys, token = self._keys(job_id), secrets.token_hex(8)
        claimed = await self._once(self._claim, keys[:2], [_ms(self.lease), token])
        if claimed == -1:
            raise JobLost(f"no job {job_id!r}")
        if claimed == 0:
            raise JobExists(f"job {job_id!r} already has a publisher")
        try:
            async with create_task_group() as tg:
                tg.start_soon(self._renew_lease, keys)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            # Also when cancelled: the job is not running any more, say so now.
            with CancelScope(shield=True), move_on_after(self.lease):
                try:
                    await self._call(self._lose, keys=keys, args=[1])
                except BackendUnavailable:
                    logger.warning("job %s: could not mark it lost; its lease will run out", job_id)

    async def _renew_lease(self, keys: list[str]) -> None:
        while True:
            await sleep(self.lease / 3)  # a lease renewal period, not a wait for an event
            with suppress(BackendUnavailable):  # renewed on the next round: watchers
                await self._call(self._renew, keys=keys, args=[_ms(self.lease)])  # wait a lease

    async def append(self, job_id: str, events: Sequence[tuple[int, bytes]], first: int) -> None:
        # One script call per batch: atomic, and one command to pack however
        # many events the batch holds.
        args: list[int | bytes] = [first, events[0][0] if events else 0]
        args += [frame for _, frame in events]
        if await self._call(self._append, keys=self._keys(job_id), args=args) == -1:
            raise JobLost(f"job {job_id!r} was declared lost (its lease ran out)")

    async def finish(self, job_id: str, end_id: int, keep: float) -> None:
        if await self._call(self._finish, keys=self._keys(job_id), args=[end_id, _ms(keep)]) == -1:
            raise JobLost(f"job {job_id!r} was declared lost (its lease ran out)")

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
            events: list[tuple[int, bytes]] = []
            end_id = None
            for entry_id, fields in reply[0][1]:
                number, _, sub = entry_id.partition(b"-")
                if sub == b"1":  # the end marker
                    end_id = int(number)
                else:
                    events.append((int(number), fields[b"d"]))
            return Page(events, end_id)
        # Nothing for a while: is anyone still publishing?
        info = await self.info(job_id)
        if info is not None and info.state == "lost":
            # Give a publisher cut off from Redis (a restart) one lease to come back,
            # then make it official, so that it publishes nothing more if it does.
            await sleep(self.lease)  # a lease period, not a wait for an event
            await self._call(self._lose, keys=self._keys(job_id), args=[0])
            info = await self.info(job_id)
        if info is None or info.state == "lost":
            raise JobLost(f"job {job_id!r} is gone")
        return Page((), info.end_id)

    @asynccontextmanager
    async def watching(self, job_id: str) -> AsyncIterator[None]:
        watched = self._key(job_id, "watched")
        async with create_task_group() as tg:
            tg.start_soon(self._renew_watch, watched)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _renew_watch(self, watched: str) -> None:
        while True:
            with suppress(BackendUnavailable):  # renewed on the next round
                await self._call(self.client.set, watched, 1, px=_ms(self.lease))
            await sleep(self.lease / 3)  # a lease renewal period, not a wait for an event

    async def wait_unwatched(self, job_id: str, grace: float) -> None:
        watched = self._key(job_id, "watched")
        unwatched_since = current_time()  # a new job counts as unwatched until someone comes
        while True:
            if await self._call(self.client.exists, watched):
                unwatched_since = current_time()
            elif current_time() - unwatched_since >= grace:
                return
            await sleep(min(self.lease, max(grace, 0.01)) / 3)  # a lease check period
