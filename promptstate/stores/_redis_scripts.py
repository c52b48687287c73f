"""The Lua scripts of :class:`~promptstate.stores.redis.RedisStore`.

Every script touches only the keys it is given (``KEYS``), and the keys of one call share a
hash tag, so each script is one atomic step on a single Redis and on a Redis Cluster. On a
single Redis the write scripts are also given the prefix index keys (``#KEYS > 2``) and update
the index in the same step; on a Cluster the index lives in another slot and is updated by a
separate call (:data:`INDEX_ADD`).

Layout of a session (see ``docs/redis.md``)::

    <prefix>{<tag>}:h   hash: v version, t tokens, c cost, u user id, d metadata (msgpack),
                              ca / ua created / updated (microseconds since the epoch)
    <prefix>{<tag>}:m   list of msgpack-packed messages, oldest first

TTL: ``ttl`` is in milliseconds, ``'0'`` for none. Every write sets it on every key of the
session in the same step (``PERSIST`` when the store has none).
"""

from __future__ import annotations

import hashlib

__all__ = [
    "APPEND",
    "APPEND_TURN",
    "APPEND_TURN_RELEASE",
    "DELETE",
    "DELETE_MANY",
    "FORK",
    "GET",
    "INDEX_ADD",
    "INDEX_PRUNE",
    "INDEX_PRUNE_CHECKED",
    "LEASE_ACQUIRE_LOAD",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "LOAD_TOUCH",
    "SAVE",
    "SET",
    "Script",
]


class Script:
    """A Lua script and its SHA1, for EVALSHA with an EVAL fallback on NOSCRIPT."""

    __slots__ = ("lua", "sha")

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()


# Shared Lua helpers, prepended to every script that writes.
_HELPERS = """
local function guard(h, m)
  local th = redis.call('TYPE', h)['ok']
  local tm = redis.call('TYPE', m)['ok']
  if (th ~= 'hash' and th ~= 'none') or (tm ~= 'list' and tm ~= 'none') then
    return redis.error_reply('WRONGTYPE a key of this session holds a value of another type')
  end
  local v = redis.call('HGET', h, 'v')
  if v and not tonumber(v) then
    return redis.error_reply('WRONGTYPE the session header has a version that is not a number')
  end
  return false
end
local function expire(ttl, a, b)
  if ttl == '0' then
    redis.call('PERSIST', a)
    redis.call('PERSIST', b)
  else
    redis.call('PEXPIRE', a, ttl)
    redis.call('PEXPIRE', b, ttl)
  end
end
local function index(member, ttl)
  if #KEYS > 2 then
    redis.call('ZADD', KEYS[3], 0, member)
    if ttl ~= '0' then
      local t = redis.call('TIME')
      local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ttl)
      redis.call('ZADD', KEYS[4], at, member)
    end
  end
end
local function push(key, first)
  local n = 0
  for i = first, #ARGV, 4000 do
    n = redis.call('RPUSH', key, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
  end
  return n
end
"""

#: Read a whole session: ``{header pairs, messages}`` or nil. ARGV: ttl to slide or '0'.
GET = Script(
    """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
local m = redis.call('LRANGE', KEYS[2], 0, -1)
if ARGV[1] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return {h, m}
"""
)

#: The newest ARGV[2] messages (all when '-1'), sliding the TTL ARGV[1].
LOAD_TOUCH = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local m
if ARGV[2] == '-1' then
  m = redis.call('LRANGE', KEYS[2], 0, -1)
else
  m = redis.call('LRANGE', KEYS[2], -tonumber(ARGV[2]), -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return m
"""
)

#: Append. ARGV: ttl, now_us, tokens, member, messages... Returns the new count.
#: Every call that can fail on a foreign value (HGET, the first RPUSH) comes before the first
#: write, so an error leaves the session as it was. The index entry is written only when the
#: session is created: the entry of a live session is never removed, and its expiry hint is
#: corrected by the pruning pass (INDEX_PRUNE_CHECKED) rather than on every write.
APPEND = Script(
    _HELPERS
    + """
local h = KEYS[1]
local head = redis.call('HMGET', h, 'v', 't')
local v, t = head[1], head[2]
if v and not (tonumber(v) and tonumber(t or '0')) then
  return redis.error_reply('WRONGTYPE the session header holds a count that is not a number')
end
local n = push(KEYS[2], 5)
if v then
  redis.call('HSET', h, 'v', string.format('%d', tonumber(v) + 1),
    't', string.format('%d', tonumber(t or '0') + tonumber(ARGV[3])), 'ua', ARGV[2])
else
  redis.call('HSET', h, 'v', 1, 't', ARGV[3], 'ca', ARGV[2], 'ua', ARGV[2])
  index(ARGV[4], ARGV[1])
end
expire(ARGV[1], h, KEYS[2])
return n
"""
)

#: Append one pipeline turn. ARGV: ttl, now_us, tokens, member, cost, turn id pattern ('' none),
#: expected count ('-1' none), messages... Returns {1, new count} when written,
#: {0, count} when the turn is stored already (or there is nothing to write), {-1, count}
#: when the session does not hold the expected count.
APPEND_TURN = Script(
    _HELPERS
    + """
local h, m = KEYS[1], KEYS[2]
local head = redis.call('HMGET', h, 'v', 't', 'c')
local v, t, c = head[1], head[2], head[3]
if v and not (tonumber(v) and tonumber(t or '0') and tonumber(c or '0')) then
  return redis.error_reply('WRONGTYPE the session header holds a count that is not a number')
end
local count = redis.call('LLEN', m)
local k = #ARGV - 7
if ARGV[6] ~= '' and k > 0 and count >= k then
  -- ARGV[6] is the MessagePack of "turn_id" followed by that of the id, as it appears in
  -- the metadata of the turn's first message (cmsgpack can't decode msgspec's timestamps).
  if string.find(redis.call('LINDEX', m, count - k), ARGV[6], 1, true) then
    return {0, count}
  end
end
if ARGV[7] ~= '-1' and tonumber(ARGV[7]) ~= count then return {-1, count} end
if k == 0 then return {0, count} end
local n = push(m, 8)
local cost = string.format('%.17g', tonumber(c or '0') + tonumber(ARGV[5]))
if v then
  redis.call('HSET', h, 'v', string.format('%d', tonumber(v) + 1),
    't', string.format('%d', tonumber(t or '0') + tonumber(ARGV[3])), 'c', cost,
    'ua', ARGV[2])
else
  redis.call('HSET', h, 'v', 1, 't', ARGV[3], 'c', cost, 'ca', ARGV[2], 'ua', ARGV[2])
  index(ARGV[4], ARGV[1])
end
expire(ARGV[1], h, m)
return {1, n}
"""
)

#: Append one pipeline turn while holding its lease, and release the lease in the same step.
#: KEYS: h, m, lease[, idx, exp]. ARGV: as APPEND_TURN, then the lease owner (ARGV[8]), then
#: the messages. Returns {1, new count} when written (lease released), {0, count} when the
#: turn is stored already or there is nothing to write (lease released if still held),
#: {-1, count} when the session does not hold the expected count, {-2, count} when ``owner``
#: does not hold the lease and the turn is not stored (nothing written).
APPEND_TURN_RELEASE = Script(
    """
local h, m, lease = KEYS[1], KEYS[2], KEYS[3]
local head = redis.call('HMGET', h, 'v', 't', 'c')
local v, t, c = head[1], head[2], head[3]
if v and not (tonumber(v) and tonumber(t or '0') and tonumber(c or '0')) then
  return redis.error_reply('WRONGTYPE the session header holds a count that is not a number')
end
local held = redis.call('GET', lease) == ARGV[8]
local count = redis.call('LLEN', m)
local k = #ARGV - 8
if ARGV[6] ~= '' and k > 0 and count >= k then
  if string.find(redis.call('LINDEX', m, count - k), ARGV[6], 1, true) then
    if held then redis.call('DEL', lease) end
    return {0, count}
  end
end
if not held then return {-2, count} end
if ARGV[7] ~= '-1' and tonumber(ARGV[7]) ~= count then return {-1, count} end
if k == 0 then
  redis.call('DEL', lease)
  return {0, count}
end
local n = 0
for i = 9, #ARGV, 4000 do
  n = redis.call('RPUSH', m, unpack(ARGV, i, math.min(i + 3999, #ARGV)))
end
local cost = string.format('%.17g', tonumber(c or '0') + tonumber(ARGV[5]))
if v then
  redis.call('HSET', h, 'v', string.format('%d', tonumber(v) + 1),
    't', string.format('%d', tonumber(t or '0') + tonumber(ARGV[3])), 'c', cost,
    'ua', ARGV[2])
else
  redis.call('HSET', h, 'v', 1, 't', ARGV[3], 'c', cost, 'ca', ARGV[2], 'ua', ARGV[2])
  if #KEYS > 3 then
    redis.call('ZADD', KEYS[4], 0, ARGV[4])
    if ARGV[1] ~= '0' then
      local tm = redis.call('TIME')
      local at = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000) + tonumber(ARGV[1])
      redis.call('ZADD', KEYS[5], at, ARGV[4])
    end
  end
end
if ARGV[1] == '0' then
  redis.call('PERSIST', h)
  redis.call('PERSIST', m)
else
  redis.call('PEXPIRE', h, ARGV[1])
  redis.call('PEXPIRE', m, ARGV[1])
end
redis.call('DEL', lease)
return {1, n}
"""
)

#: Take a lease and read the newest messages in one step. KEYS: lease, h, m.
#: ARGV: owner, lease ms, how many ('-1' all), ttl to slide ('0' none).
#: Returns nil when another owner holds the lease (nothing read), else the messages.
LEASE_ACQUIRE_LOAD = Script(
    """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
if ARGV[4] ~= '0' then
  if redis.call('EXISTS', KEYS[2]) == 0 then return {} end
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
if ARGV[3] == '0' then return {} end
if ARGV[3] == '-1' then return redis.call('LRANGE', KEYS[3], 0, -1) end
return redis.call('LRANGE', KEYS[3], -tonumber(ARGV[3]), -1)
"""
)

#: Renew a lease if ``owner`` (ARGV[1]) holds it, for ARGV[2] ms. 1 when renewed.
LEASE_RENEW = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)

#: Delete a lease if ``owner`` (ARGV[1]) holds it. 1 when released.
LEASE_RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
)

#: Replace the message list. ARGV: ttl, now_us, tokens, member, messages...
SAVE = Script(
    _HELPERS
    + """
local bad = guard(KEYS[1], KEYS[2])
if bad then return bad end
local h = KEYS[1]
redis.call('HSETNX', h, 'ca', ARGV[2])
redis.call('HINCRBY', h, 'v', 1)
redis.call('HSET', h, 't', ARGV[3], 'ua', ARGV[2])
redis.call('UNLINK', KEYS[2])
push(KEYS[2], 5)
expire(ARGV[1], h, KEYS[2])
index(ARGV[4], ARGV[1])
return 1
"""
)

#: Replace the whole state, optionally compare-and-set.
#: ARGV: expected ('-1' for none), ttl, member, nfields, field, value, ..., messages...
#: Returns {1, new version} or {0, stored version}.
SET = Script(
    _HELPERS
    + """
local bad = guard(KEYS[1], KEYS[2])
if bad then return bad end
local h = KEYS[1]
local cur = tonumber(redis.call('HGET', h, 'v') or '0')
if ARGV[1] ~= '-1' and tonumber(ARGV[1]) ~= cur then return {0, cur} end
local nf = tonumber(ARGV[4])
redis.call('UNLINK', h, KEYS[2])
redis.call('HSET', h, 'v', string.format('%d', cur + 1), unpack(ARGV, 5, 4 + 2 * nf))
push(KEYS[2], 5 + 2 * nf)
expire(ARGV[2], h, KEYS[2])
index(ARGV[3], ARGV[2])
return {1, cur + 1}
"""
)

#: Delete a session; 1 when its header existed. ARGV: member. Index keys optional.
DELETE = Script(
    """
local e = redis.call('EXISTS', KEYS[1])
redis.call('UNLINK', KEYS[1], KEYS[2])
if #KEYS > 2 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
end
return e
"""
)

#: Delete many sessions of one index shard (single Redis only).
#: KEYS: idx, exp, h1, m1, h2, m2, ...; ARGV: members. Returns how many headers existed.
DELETE_MANY = Script(
    """
local n = 0
for i = 1, #ARGV do
  local h, m = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  n = n + redis.call('EXISTS', h)
  redis.call('UNLINK', h, m)
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('ZREM', KEYS[2], ARGV[i])
end
return n
"""
)

#: Copy a session (single Redis only, where every key is reachable in one script).
#: KEYS: src h, src m, dst h, dst m[, idx, exp]; ARGV: overwrite, ttl, now_us, member.
#: Returns {0} missing source, {1} target exists, {2, header pairs, messages}.
FORK = Script(
    _HELPERS
    + """
local sh, sm, th, tm = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local bad = guard(sh, sm) or guard(th, tm)
if bad then return bad end
if redis.call('EXISTS', sh) == 0 then return {0} end
local tv = redis.call('HGET', th, 'v')
if tv and ARGV[1] == '0' then return {1} end
tv = tonumber(tv or '0')
redis.call('COPY', sh, th, 'REPLACE')
if redis.call('EXISTS', sm) == 1 then
  redis.call('COPY', sm, tm, 'REPLACE')
else
  redis.call('UNLINK', tm)
end
redis.call('HSET', th, 'v', string.format('%d', tv + 1), 'ua', ARGV[3])
local ttl = ARGV[2]
if ttl == '0' then
  redis.call('PERSIST', th)
  redis.call('PERSIST', tm)
else
  redis.call('PEXPIRE', th, ttl)
  redis.call('PEXPIRE', tm, ttl)
end
if #KEYS > 4 then
  redis.call('ZADD', KEYS[5], 0, ARGV[4])
  if ttl ~= '0' then
    local t = redis.call('TIME')
    local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ttl)
    redis.call('ZADD', KEYS[6], at, ARGV[4])
  end
end
return {2, redis.call('HGETALL', th), redis.call('LRANGE', tm, 0, -1)}
"""
)

#: Cluster: add a member to an index shard. KEYS: idx, exp; ARGV: member, ttl.
#: The expiry score only ever grows (GT): it is a hint that pruning verifies.
INDEX_ADD = Script(
    """
redis.call('ZADD', KEYS[1], 0, ARGV[1])
if ARGV[2] ~= '0' then
  local t = redis.call('TIME')
  local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[2], 'GT', at, ARGV[1])
end
return 1
"""
)

#: Single Redis: drop index entries whose session is gone, checked in the same step.
#: KEYS: idx, exp, h1, h2, ...; ARGV: members. Entries of live sessions get their expiry
#: score corrected from the header's PTTL. Returns how many entries were dropped.
INDEX_PRUNE_CHECKED = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 1, #ARGV do
  local pttl = redis.call('PTTL', KEYS[2 + i])
  if pttl == -2 then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    n = n + 1
  elseif pttl == -1 then
    redis.call('ZREM', KEYS[2], ARGV[i])
  else
    redis.call('ZADD', KEYS[2], now + pttl, ARGV[i])
  end
end
return n
"""
)

#: Cluster: apply what a pruning pass saw on the session nodes, unless a write moved the
#: entry's expiry score since it was read. KEYS: idx, exp; ARGV: triples of member, score
#: seen ('none' when absent), remaining PTTL of its header (-2 gone, -1 no TTL).
INDEX_PRUNE = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 1, #ARGV, 3 do
  local member, seen, pttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local score = redis.call('ZSCORE', KEYS[2], member)
  local unchanged = (score == false and seen == 'none') or
    (score ~= false and seen ~= 'none' and tonumber(score) == tonumber(seen))
  if unchanged then
    if pttl == -2 then
      redis.call('ZREM', KEYS[1], member)
      redis.call('ZREM', KEYS[2], member)
      n = n + 1
    elseif pttl == -1 then
      redis.call('ZREM', KEYS[2], member)
    else
      redis.call('ZADD', KEYS[2], 'GT', now + pttl, member)
    end
  end
end
return n
"""
)
