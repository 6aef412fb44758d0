"""The Lua scripts of :mod:`asgi_sse.resumable.redis`, sans-IO: every write to a
job's keys is one of these, atomic, and safe to repeat after a lost reply.

KEYS, always in this order: ``meta`` (a hash: state, ids, tokens), ``alive`` (the
publisher's lease), ``log`` (the stream), ``watched`` (the watchers' lease), ``ctl``
(a list its publisher blocks on, to hear of a cancel at once).
A running job's keys expire a lease plus ``keep`` after its publisher's last
renewal: a publisher that dies leaves nothing for ever.

A batch of events is one stream entry (see ``_redis_entries``); entry ``N-1``
marks event ``N`` terminal, so a watcher blocked in ``XREAD`` learns of the end
from the stream.
"""

__all__ = ["APPEND", "SCRIPTS"]


# The job ends with terminal event ``id`` (``frame``): its entry, and the end marker.
_END = """
redis.call('XADD', KEYS[3], id .. '-0', 'f', id, 'n', struct.pack('<I4', #frame), 'd', frame)
redis.call('XADD', KEYS[3], id .. '-1', 'e', 1)
redis.call('HSET', KEYS[1], 'state', 'ended', 'last', id, 'end', id)
redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
"""

_NOW = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# 1: created (or by this same call before); 0: the id is taken.
CREATE = (
    _NOW
    + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then return owner == ARGV[2] and 1 or 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'last', 0, 'keep', ARGV[1], 'owner', ARGV[2],
           'attempts', 0, 'since', now)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
)

# ARGV: lease, token, takeover (1: the engine delivered the task again, so its
# publisher may be dead), grace (-1: none). Returns {code, last id, attempt,
# ms, cancelled}. code 1: claimed; 2: taken over from a publisher whose lease
# ran out; 3: claimed, but unwatched for the grace period while it waited (end
# it, do not run it); 0: it has a publisher, alive for ms more (a takeover
# waits that long and asks again); -1: unknown; -2: ended; -3: lost.
# cancelled 1: claimed, but cancelled (end it too); or, ended, by a cancel ('cut').
# A repeat of the same claim (after a lost reply) gets the same answer.
CLAIM = (
    _NOW
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1, 0, 0, 0, 0} end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
local code = 1
if state == 'running' then
    if redis.call('HGET', KEYS[1], 'publisher') == ARGV[2] then
        code = tonumber(redis.call('HGET', KEYS[1], 'claimed'))
        return {code, last, attempts, 0, redis.call('HEXISTS', KEYS[1], 'cancel')}
    end
    local alive = redis.call('PTTL', KEYS[2])
    if ARGV[3] ~= '1' or alive > 0 then return {0, last, attempts, math.max(alive, 0), 0} end
    code = 2
elseif state == 'ended' then
    return {-2, last, attempts, 0, redis.call('HEXISTS', KEYS[1], 'cut')}
elseif state ~= 'pending' then
    return {-3, last, attempts, 0, 0}
elseif tonumber(ARGV[4]) >= 0 and redis.call('EXISTS', KEYS[4]) == 0
       and now - tonumber(redis.call('HGET', KEYS[1], 'since')) >= tonumber(ARGV[4]) then
    code = 3
end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'state', 'running', 'publisher', ARGV[2], 'attempts', attempts,
           'claimed', code)
redis.call('SET', KEYS[2], 1, 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1] + redis.call('HGET', KEYS[1], 'keep'))
redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
return {code, last, attempts, 0, redis.call('HEXISTS', KEYS[1], 'cancel')}
"""
)

# The publisher's sign of life. 0: the job is no longer its to publish.
RENEW = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running'
   or redis.call('HGET', KEYS[1], 'publisher') ~= ARGV[2] then return 0 end
local ttl = ARGV[1] + redis.call('HGET', KEYS[1], 'keep')
redis.call('SET', KEYS[2], 1, 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""

# Lost: by its publisher leaving without finishing (ARGV[1] = its token), or,
# seen by a watcher, by its lease running out (ARGV[1] = '': only if it has).
LOSE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if ARGV[1] == '' then
    if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
elseif redis.call('HGET', KEYS[1], 'publisher') ~= ARGV[1] then return 0 end
local keep = redis.call('HGET', KEYS[1], 'keep')
redis.call('HSET', KEYS[1], 'state', 'lost')
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[3], keep)
return 1
"""

# Back to pending, for the engine's next attempt; ARGV: the token, and the
# terminal event (id, frame) to end with instead if it was cancelled meanwhile
# (a cancel is never undone). 1: released; 2: ended, cancelled; 0: not its job.
RELEASE = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'released') == ARGV[1] then  -- a repeat: the same answer
    return redis.call('HGET', KEYS[1], 'state') == 'ended' and 2 or 1
end
if redis.call('HGET', KEYS[1], 'state') ~= 'running'
   or redis.call('HGET', KEYS[1], 'publisher') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'publisher')
redis.call('HSET', KEYS[1], 'released', ARGV[1])
redis.call('PEXPIRE', KEYS[1], redis.call('HGET', KEYS[1], 'keep'))
if redis.call('HEXISTS', KEYS[1], 'cancel') == 1 then
    local id, frame = tonumber(ARGV[2]), ARGV[3]
    redis.call('HSET', KEYS[1], 'cut', 1)
"""
    + _END
    + """
    return 2
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'since', now)
redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
return 1
"""
)

# A batch of events, ARGV: token, first id to keep, first id, lengths, frames
# (or only the first two: trimming alone, as expiry by age does).
# A batch the log already has (a retry) is skipped. -1: not this publisher's
# job any more (declared lost, or taken over): publish nothing.
APPEND = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running'
   or redis.call('HGET', KEYS[1], 'publisher') ~= ARGV[1] then return -1 end
local minid = ARGV[2] .. '-0'
if #ARGV == 2 then
    redis.call('XTRIM', KEYS[3], 'MINID', minid)
    return 0
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
local first = tonumber(ARGV[3])
if first > last then
    last = first + #ARGV[4] / 4 - 1
    redis.call('XADD', KEYS[3], 'MINID', minid, last .. '-0',
               'f', first, 'k', ARGV[2], 'n', ARGV[4], 'd', ARGV[5])
    redis.call('HSET', KEYS[1], 'last', last)
    if redis.call('PTTL', KEYS[3]) == -1 then  -- made just now: it expires with its job
        redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
    end
end
return last
"""

# The end: marker entry N-1 after terminal event N, so blocked readers see it.
# ARGV: token, terminal id, keep.
FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if redis.call('HGET', KEYS[1], 'publisher') ~= ARGV[1] then return -1 end
if state == 'ended' then return 1 end  -- a repeat of its own end
if state ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], 'state', 'ended', 'end', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], ARGV[2] .. '-1', 'e', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# Cancel, for good: the flag stays, so a later claim or release ends the job
# rather than run it. A running job with a live publisher is told (it waits
# on KEYS[5]): 'told'. A pending one, or one whose publisher's lease ran out,
# ends here with the terminal event given (ARGV: its id, its frame) if its
# last id is still the one before: 'ended', else 'moved' (read again). Else 'over'.
CANCEL = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'ended' and redis.call('HGET', KEYS[1], 'cancel') == ARGV[1] then
    return 'ended'  -- a repeat of the cancel that ended it
end
if state ~= 'running' and state ~= 'pending' then return 'over' end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
if state == 'running' and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RPUSH', KEYS[5], 1)
    redis.call('PEXPIRE', KEYS[5], redis.call('PTTL', KEYS[1]))
    return 'told'
end
if tonumber(redis.call('HGET', KEYS[1], 'last')) ~= tonumber(ARGV[1]) - 1 then return 'moved' end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], 'publisher')
redis.call('PEXPIRE', KEYS[1], redis.call('HGET', KEYS[1], 'keep'))
redis.call('HSET', KEYS[1], 'cut', 1)
local id, frame = tonumber(ARGV[1]), ARGV[2]
"""
    + _END
    + """
return 'ended'
"""
)

# An event for the watchers of a job still waiting for its engine (``queued``),
# ARGV: its id and frame. 0: it is not pending any more, or its last id moved.
NOTE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
local id = tonumber(ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'last')) ~= id - 1 then return 0 end
redis.call('XADD', KEYS[3], id .. '-0', 'f', id, 'n', struct.pack('<I4', #ARGV[2]), 'd', ARGV[2])
redis.call('HSET', KEYS[1], 'last', id)
redis.call('PEXPIRE', KEYS[3], redis.call('PTTL', KEYS[1]))
return 1
"""

# A watcher's sign of life (ARGV: the lease): a waiting job's unwatched time
# (CLAIM's grace) counts from the last one.
WATCH = (
    _NOW
    + """
redis.call('SET', KEYS[4], 1, 'PX', ARGV[1])
if redis.call('HGET', KEYS[1], 'state') == 'pending' then
    redis.call('HSET', KEYS[1], 'since', now)
end
return 1
"""
)

# A watcher leaves: the job's unwatched time counts from now (for CLAIM's grace).
UNWATCH = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'state') == 'pending' then
    redis.call('HSET', KEYS[1], 'since', now)
end
return 1
"""
)

#: Every script the backend runs through the client, by name (``APPEND``, on an
#: event's path, runs on a connection of its own: ``_redis_wire``).
SCRIPTS = {
    "create": CREATE,
    "claim": CLAIM,
    "renew": RENEW,
    "lose": LOSE,
    "release": RELEASE,
    "finish": FINISH,
    "cancel": CANCEL,
    "note": NOTE,
    "watch": WATCH,
    "unwatch": UNWATCH,
}
