"""The Lua scripts of :class:`~promptstate.stores.redis.RedisStore`.

The keys of one call share a hash tag, so each script is one atomic step on a single Redis and
on a Redis Cluster. On a single Redis the write scripts are also given the index keys of the
session's shard (``#KEYS > 2``) and update the index in the same step; on a Cluster the index
lives in another slot and is updated by a separate call (:data:`INDEX_SYNC`).

The index of one shard (base name ``<prefix>{%idx<n>}:``)::

    z          sorted set of session ids, all scored 0 (prefix listing: ZRANGEBYLEX)
    e          sorted set: session id -> expiry hint (ms), verified by pruning
    u / c      sorted sets: session id -> updated / created time (microseconds)
    w          hash: session id -> user id
    U:<user>   sorted set: that user's session ids -> updated time
    C:<user>   sorted set: that user's session ids -> created time

Scripts touch the keys given in ``KEYS`` and, for the index, the keys named from the shard's
base (``w``, ``u``, ``c`` and the user sets), which share the shard's hash tag and so its slot.

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
    "DELETE",
    "DELETE_MANY",
    "FORK",
    "GET",
    "INDEX_DROP",
    "INDEX_PRUNE",
    "INDEX_PRUNE_CHECKED",
    "INDEX_SYNC",
    "INFO",
    "LEASE_ABANDON",
    "LEASE_ACQUIRE",
    "LEASE_ACQUIRE_LOAD",
    "LEASE_RELEASE",
    "LEASE_RENEW",
    "LOAD_TOUCH",
    "MERGE_META",
    "META_TOUCH",
    "PAGE",
    "POP",
    "SAVE",
    "SET",
    "Script",
    "TRUNCATE",
]


class Script:
    """A Lua script and its SHA1, for EVALSHA with an EVAL fallback on NOSCRIPT."""

    __slots__ = ("lua", "sha")

    def __init__(self, lua: str) -> None:
        self.lua = lua
        self.sha = hashlib.sha1(lua.encode()).hexdigest()


# The listing index helpers (see the module docstring), in every script that changes it.
_INDEX = """
-- The listing index of one shard: z (ids, lexical), e (expiry hints), u / c (ids by updated /
-- created time, microseconds), w (hash: id -> cmsgpack array of the user ids whose sets may
-- hold it), U:<user> / C:<user> (one user's ids by updated / created time). Every name
-- derives from the shard's base name.
local function users(base, member)
  local raw = redis.call('HGET', base .. 'w', member)
  if not raw then return {} end
  return cmsgpack.unpack(raw)
end
local function unindex(base, member)
  redis.call('ZREM', base .. 'z', member)
  redis.call('ZREM', base .. 'e', member)
  redis.call('ZREM', base .. 'u', member)
  redis.call('ZREM', base .. 'c', member)
  for _, old in ipairs(users(base, member)) do
    redis.call('ZREM', base .. 'U:' .. old, member)
    redis.call('ZREM', base .. 'C:' .. old, member)
  end
  redis.call('HDEL', base .. 'w', member)
end
-- Index the session exactly: at these times, for ``user`` only (false: for no user).
local function reindex(base, member, ua, ca, user)
  redis.call('ZADD', base .. 'u', ua, member)
  redis.call('ZADD', base .. 'c', ca, member)
  local known = users(base, member)
  local same = false
  for _, old in ipairs(known) do
    if old == user then
      same = #known == 1
    else
      redis.call('ZREM', base .. 'U:' .. old, member)
      redis.call('ZREM', base .. 'C:' .. old, member)
    end
  end
  if user then
    redis.call('ZADD', base .. 'U:' .. user, ua, member)
    redis.call('ZADD', base .. 'C:' .. user, ca, member)
    if not same then redis.call('HSET', base .. 'w', member, cmsgpack.pack({user})) end
  elseif #known > 0 then
    redis.call('HDEL', base .. 'w', member)
  end
end
-- After a write on a single Redis (index keys given from KEYS[ix]): index the session as its
-- header now reads.
local function sync(ix, h, member)
  if #KEYS >= ix then
    local f = redis.call('HMGET', h, 'ua', 'ca', 'u')
    if f[1] then reindex(string.sub(KEYS[ix], 1, -2), member, f[1], f[2] or f[1], f[3]) end
  end
end
"""

# MessagePack walking (metadata merges, token counts of removed messages).
_MSGPACK = """
-- Just enough MessagePack to walk a map without decoding its values (cmsgpack can't read
-- msgspec's timestamps and would turn bin into str): skip(s, i) is the index after the
-- object starting at byte i.
local function u16(s, i)
  local a, b = string.byte(s, i, i + 1)
  return a * 256 + b
end
local function u32(s, i)
  local a, b, c, d = string.byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local skip
local function skip_n(s, j, n)
  for _ = 1, n do j = skip(s, j) end
  return j
end
skip = function(s, i)
  local b = string.byte(s, i)
  if b == nil then error('truncated MessagePack') end
  if b <= 0x7f or b >= 0xe0 then return i + 1 end
  if b <= 0x8f then return skip_n(s, i + 1, (b - 0x80) * 2) end
  if b <= 0x9f then return skip_n(s, i + 1, b - 0x90) end
  if b <= 0xbf then return i + 1 + b - 0xa0 end
  if b == 0xc0 or b == 0xc2 or b == 0xc3 then return i + 1 end
  if b == 0xc4 or b == 0xd9 then return i + 2 + string.byte(s, i + 1) end
  if b == 0xc5 or b == 0xda then return i + 3 + u16(s, i + 1) end
  if b == 0xc6 or b == 0xdb then return i + 5 + u32(s, i + 1) end
  if b == 0xc7 then return i + 3 + string.byte(s, i + 1) end
  if b == 0xc8 then return i + 4 + u16(s, i + 1) end
  if b == 0xc9 then return i + 6 + u32(s, i + 1) end
  if b == 0xca then return i + 5 end
  if b == 0xcb then return i + 9 end
  if b == 0xcc or b == 0xd0 then return i + 2 end
  if b == 0xcd or b == 0xd1 then return i + 3 end
  if b == 0xce or b == 0xd2 then return i + 5 end
  if b == 0xcf or b == 0xd3 then return i + 9 end
  if b == 0xd4 then return i + 3 end
  if b == 0xd5 then return i + 4 end
  if b == 0xd6 then return i + 6 end
  if b == 0xd7 then return i + 10 end
  if b == 0xd8 then return i + 18 end
  if b == 0xdc then return skip_n(s, i + 3, u16(s, i + 1)) end
  if b == 0xdd then return skip_n(s, i + 5, u32(s, i + 1)) end
  if b == 0xde then return skip_n(s, i + 3, 2 * u16(s, i + 1)) end
  if b == 0xdf then return skip_n(s, i + 5, 2 * u32(s, i + 1)) end
  error('invalid MessagePack')
end
-- The number of pairs of the map in s and the index of its first key.
local function map_start(s)
  local b = string.byte(s, 1)
  if b and b >= 0x80 and b <= 0x8f then return b - 0x80, 2 end
  if b == 0xde then return u16(s, 2), 4 end
  if b == 0xdf then return u32(s, 2), 6 end
  error('stored MessagePack is not a map')
end
local function map_header(n)
  if n < 16 then return string.char(0x80 + n) end
  if n < 65536 then return string.char(0xde, math.floor(n / 256), n % 256) end
  return string.char(0xdf, math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end
local TOKENS = string.char(0xa6) .. 'tokens'
-- The "tokens" of a stored message (0 when it has none).
local function message_tokens(item)
  local n, j = map_start(item)
  for _ = 1, n do
    local k = skip(item, j)
    if string.sub(item, j, k - 1) == TOKENS then
      local b = string.byte(item, k)
      if b <= 0x7f then return b end
      if b == 0xcc then return string.byte(item, k + 1) end
      if b == 0xcd then return u16(item, k + 1) end
      if b == 0xce then return u32(item, k + 1) end
      if b == 0xcf then return u32(item, k + 1) * 4294967296 + u32(item, k + 5) end
      return 0
    end
    j = skip(item, k)
  end
  return 0
end
local function tokens_from(key, first)
  local sum = 0
  for _, item in ipairs(redis.call('LRANGE', key, first, -1)) do
    sum = sum + message_tokens(item)
  end
  return sum
end
"""

# Shared Lua helpers, prepended to every script that writes.
_HELPERS = (
    _INDEX
    + """
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
-- Enter a new session in the index, when its keys are given (from KEYS[ix], 3 by default).
local function index(member, ttl, ix)
  ix = ix or 3
  if #KEYS > ix - 1 then
    redis.call('ZADD', KEYS[ix], 0, member)
    if ttl ~= '0' then
      local t = redis.call('TIME')
      local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ttl)
      redis.call('ZADD', KEYS[ix + 1], at, member)
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
)

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
sync(3, h, ARGV[4])
return n
"""
)

#: Append one pipeline turn, by the rules of :mod:`promptstate.stores.turns`, and with a
#: lease owner also release that owner's lease in the same step. KEYS: h, m, lease[, idx, exp].
#: ARGV: ttl, now_us, tokens, member, cost, turn id pattern ('' none), expected count ('-1'
#: none), lease owner ('' when the call releases no lease), messages... Returns {1, new count}
#: when written (the lease released), {0, count} when the turn is stored already or there is
#: nothing to write (the lease released if still held), {-1, count} when the session does not
#: hold the expected count, {-2, count} when the owner does not hold the lease and the turn is
#: not stored (nothing written).
APPEND_TURN = Script(
    _HELPERS
    + """
local h, m, lease, owner = KEYS[1], KEYS[2], KEYS[3], ARGV[8]
local head = redis.call('HMGET', h, 'v', 't', 'c')
local v, t, c = head[1], head[2], head[3]
if v and not (tonumber(v) and tonumber(t or '0') and tonumber(c or '0')) then
  return redis.error_reply('WRONGTYPE the session header holds a count that is not a number')
end
local held = owner ~= '' and redis.call('GET', lease) == owner
local count = redis.call('LLEN', m)
local k = #ARGV - 8
if ARGV[6] ~= '' and k > 0 and count >= k then
  -- ARGV[6] is the MessagePack of "turn_id" followed by that of the id, as it appears in
  -- the metadata of the turn's first message (cmsgpack can't decode msgspec's timestamps).
  if string.find(redis.call('LINDEX', m, count - k), ARGV[6], 1, true) then
    if held then redis.call('DEL', lease) end
    return {0, count}
  end
end
if owner ~= '' and not held then return {-2, count} end
if ARGV[7] ~= '-1' and tonumber(ARGV[7]) ~= count then return {-1, count} end
if k == 0 then
  if held then redis.call('DEL', lease) end
  return {0, count}
end
local n = push(m, 9)
local cost = string.format('%.17g', tonumber(c or '0') + tonumber(ARGV[5]))
if v then
  redis.call('HSET', h, 'v', string.format('%d', tonumber(v) + 1),
    't', string.format('%d', tonumber(t or '0') + tonumber(ARGV[3])), 'c', cost,
    'ua', ARGV[2])
else
  redis.call('HSET', h, 'v', 1, 't', ARGV[3], 'c', cost, 'ca', ARGV[2], 'ua', ARGV[2])
  index(ARGV[4], ARGV[1], 4)
end
expire(ARGV[1], h, m)
if held then redis.call('DEL', lease) end
sync(4, h, ARGV[4])
return {1, n}
"""
)

#: Take a lease unless this attempt was abandoned (its fence key exists, see LEASE_ABANDON).
#: A lease this owner holds already is taken again (its TTL set anew): redis-py sends a call
#: again when its reply was lost, and the second run must not find the lease busy because the
#: first one took it. KEYS: lease, fence. ARGV: owner, lease ms. Returns 1 when taken.
LEASE_ACQUIRE = Script(
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
)

#: Take a lease and read the newest messages in one step. KEYS: lease, h, m, fence.
#: ARGV: owner, lease ms, how many ('-1' all), ttl to slide ('0' none).
#: Returns nil when another owner holds the lease, or this attempt was abandoned (nothing
#: read), else the messages. A lease this owner holds already is taken again, as in
#: LEASE_ACQUIRE (a call sent again after its reply was lost).
LEASE_ACQUIRE_LOAD = Script(
    """
if redis.call('EXISTS', KEYS[4]) == 1 then return false end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
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

#: After an acquire attempt by ``owner`` failed or was cancelled, with its script perhaps
#: still on the way to the server: give the lease back if ``owner`` holds it, and write the
#: attempt's fence key for ARGV[2] ms so that its script, arriving later, takes nothing.
#: KEYS: lease, fence. ARGV: owner, fence ms. Returns 1.
LEASE_ABANDON = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], 1, 'PX', ARGV[2])
return 1
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
sync(3, h, ARGV[4])
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
sync(3, h, ARGV[3])
return {1, cur + 1}
"""
)

#: Delete a session; 1 when its header existed. ARGV: member. Index keys optional.
DELETE = Script(
    _INDEX
    + """
local e = redis.call('EXISTS', KEYS[1])
redis.call('UNLINK', KEYS[1], KEYS[2])
if #KEYS > 2 then unindex(string.sub(KEYS[3], 1, -2), ARGV[1]) end
return e
"""
)

#: Delete many sessions of one index shard (single Redis only).
#: KEYS: idx, exp, h1, m1, h2, m2, ...; ARGV: members. Returns how many headers existed.
DELETE_MANY = Script(
    _INDEX
    + """
local base = string.sub(KEYS[1], 1, -2)
local n = 0
for i = 1, #ARGV do
  local h, m = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  n = n + redis.call('EXISTS', h)
  redis.call('UNLINK', h, m)
  unindex(base, ARGV[i])
end
return n
"""
)

#: Copy a session (single Redis only, where every key is reachable in one script).
#: KEYS: src h, src m, dst h, dst m[, idx, exp]; ARGV: overwrite, ttl, now_us, member, at
#: ('-1' for all: with a number, the copy keeps that many messages and their tokens).
#: Returns {0} missing source, {1} target exists, {2, header pairs, messages}.
FORK = Script(
    _HELPERS
    + _MSGPACK
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
local keep = tonumber(ARGV[5])
if keep >= 0 and redis.call('LLEN', tm) > keep then
  local t = tonumber(redis.call('HGET', th, 't') or '0') - tokens_from(tm, keep)
  if t < 0 then t = 0 end
  if keep == 0 then
    redis.call('UNLINK', tm)
  else
    redis.call('LTRIM', tm, 0, keep - 1)
  end
  redis.call('HSET', th, 't', string.format('%d', t))
end
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
sync(5, th, ARGV[4])
return {2, redis.call('HGETALL', th), redis.call('LRANGE', tm, 0, -1)}
"""
)

#: Single Redis: drop index entries whose session is gone, checked in the same step.
#: KEYS: idx, exp, h1, h2, ...; ARGV: members. Entries of live sessions get their expiry
#: score corrected from the header's PTTL. Returns how many entries were dropped.
INDEX_PRUNE_CHECKED = Script(
    _INDEX
    + """
local base = string.sub(KEYS[1], 1, -2)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 1, #ARGV do
  local pttl = redis.call('PTTL', KEYS[2 + i])
  if pttl == -2 then
    unindex(base, ARGV[i])
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
    _INDEX
    + """
local base = string.sub(KEYS[1], 1, -2)
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
      unindex(base, member)
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

#: A session's listing facts: ``{header pairs, message count}`` or nil. KEYS: h, m.
INFO = Script(
    """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
return {h, redis.call('LLEN', KEYS[2])}
"""
)

#: Merge metadata without touching the messages. KEYS: h, m[, idx, exp].
#: ARGV: ttl, now_us, member, n, then n pairs of packed key and packed value, then the packed
#: keys to remove. The stored map is rewritten pair by pair (values are copied as bytes, never
#: decoded): kept keys keep their place, new ones go at the end, like ``{**old, **updates}``.
#: Returns {version, new metadata}.
MERGE_META = Script(
    _HELPERS
    + _MSGPACK
    + """
local h, m = KEYS[1], KEYS[2]
local bad = guard(h, m)
if bad then return bad end
local n = tonumber(ARGV[4])
local set, order = {}, {}
for i = 5, 4 + 2 * n, 2 do
  set[ARGV[i]] = ARGV[i + 1]
  order[#order + 1] = ARGV[i]
end
local drop = {}
for i = 5 + 2 * n, #ARGV do drop[ARGV[i]] = true end
local head = redis.call('HMGET', h, 'v', 'd')
local parts, count = {}, 0
local d = head[2]
if d and #d > 0 then
  local pairs_, j = map_start(d)
  for _ = 1, pairs_ do
    local k = skip(d, j)
    local e = skip(d, k)
    local key = string.sub(d, j, k - 1)
    if not drop[key] then
      local new = set[key]
      if new then
        parts[#parts + 1] = key .. new
        set[key] = nil
      else
        parts[#parts + 1] = string.sub(d, j, e - 1)
      end
      count = count + 1
    end
    j = e
  end
end
for _, key in ipairs(order) do
  if set[key] then
    parts[#parts + 1] = key .. set[key]
    count = count + 1
  end
end
local meta = map_header(count) .. table.concat(parts)
local v = 1
if head[1] then
  v = tonumber(head[1]) + 1
  redis.call('HSET', h, 'v', string.format('%d', v), 'd', meta, 'ua', ARGV[2])
else
  redis.call('HSET', h, 'v', 1, 't', 0, 'd', meta, 'ca', ARGV[2], 'ua', ARGV[2])
  index(ARGV[3], ARGV[1])
end
expire(ARGV[1], h, m)
sync(3, h, ARGV[3])
return {v, meta}
"""
)

#: Keep the first ARGV[4] messages. KEYS: h, m[, idx, exp]. ARGV: ttl, now_us, member, keep.
#: Returns the new count, or -1 when the session does not exist. Writes nothing when it holds
#: ``keep`` messages or fewer; the tokens of the removed messages are read from them.
TRUNCATE = Script(
    _HELPERS
    + _MSGPACK
    + """
local h, m = KEYS[1], KEYS[2]
local bad = guard(h, m)
if bad then return bad end
local head = redis.call('HMGET', h, 'v', 't')
if not head[1] then return -1 end
local count = redis.call('LLEN', m)
local keep = tonumber(ARGV[4])
if count <= keep then return count end
local t = tonumber(head[2] or '0') - tokens_from(m, keep)
if t < 0 then t = 0 end
if keep == 0 then
  redis.call('UNLINK', m)
else
  redis.call('LTRIM', m, 0, keep - 1)
end
redis.call('HSET', h, 'v', string.format('%d', tonumber(head[1]) + 1),
  't', string.format('%d', t), 'ua', ARGV[2])
expire(ARGV[1], h, m)
sync(3, h, ARGV[3])
return keep
"""
)

#: Remove the newest ARGV[4] messages and return them, oldest first. KEYS: h, m[, idx, exp].
#: ARGV: ttl, now_us, member, how many. Returns {} (and writes nothing) when the session does
#: not exist or holds no message; the tokens of the removed messages are read from them.
POP = Script(
    _HELPERS
    + _MSGPACK
    + """
local h, m = KEYS[1], KEYS[2]
local bad = guard(h, m)
if bad then return bad end
local head = redis.call('HMGET', h, 'v', 't')
if not head[1] then return {} end
local count = redis.call('LLEN', m)
if count == 0 then return {} end
local keep = count - tonumber(ARGV[4])
if keep < 0 then keep = 0 end
local popped = redis.call('LRANGE', m, keep, -1)
local t = tonumber(head[2] or '0')
for _, item in ipairs(popped) do
  t = t - message_tokens(item)
end
if t < 0 then t = 0 end
if keep == 0 then
  redis.call('UNLINK', m)
else
  redis.call('LTRIM', m, 0, keep - 1)
end
redis.call('HSET', h, 'v', string.format('%d', tonumber(head[1]) + 1),
  't', string.format('%d', t), 'ua', ARGV[2])
expire(ARGV[1], h, m)
sync(3, h, ARGV[3])
return popped
"""
)

#: One page of a time index (KEYS[1]: a sorted set of ids scored by microseconds).
#: ARGV: descending ('1'/'0'), after ('1'/'0'), its time, its id, how many to find, literal id
#: prefix ('' for all), how many entries to look at at most. Entries come in (time, id) order,
#: strictly after the given position; ties in time are ordered by id bytes, as Redis orders
#: them. Returns {id, time, id, time, ...}, 1 when the index has no more, the last time and
#: id looked at (where to go on from when fewer than asked were found).
PAGE = Script(
    """
local key, desc = KEYS[1], ARGV[1] == '1'
local want, prefix, budget = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local np = #prefix
local out, found, seen = {}, 0, 0
local last_s, last_m = '', ''
local function less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function consider(m, s)
  seen = seen + 1
  last_s, last_m = s, m
  if np == 0 or string.sub(m, 1, np) == prefix then
    out[#out + 1] = m
    out[#out + 1] = s
    found = found + 1
  end
end
local start
if ARGV[2] == '1' then
  local t, k = ARGV[3], ARGV[4]
  local ties = redis.call('ZRANGEBYSCORE', key, t, t)
  if desc then
    for i = #ties, 1, -1 do
      if less(ties[i], k) then consider(ties[i], t) end
    end
  else
    for i = 1, #ties do
      if less(k, ties[i]) then consider(ties[i], t) end
    end
  end
  start = '(' .. t
else
  start = desc and '+inf' or '-inf'
end
local stop = desc and '-inf' or '+inf'
local off, done = 0, false
while found < want and seen < budget do
  -- Without a prefix every entry counts: read just what is missing.
  local size = 256
  if np == 0 then size = want - found end
  local batch
  if desc then
    batch = redis.call('ZREVRANGEBYSCORE', key, start, stop, 'WITHSCORES', 'LIMIT', off, size)
  else
    batch = redis.call('ZRANGEBYSCORE', key, start, stop, 'WITHSCORES', 'LIMIT', off, size)
  end
  local i = 1
  while i < #batch and found < want do
    consider(batch[i], batch[i + 1])
    i = i + 2
  end
  if i >= #batch and #batch < 2 * size then
    done = true
    break
  end
  off = off + (i - 1) / 2
end
return {out, done and 1 or 0, last_s, last_m}
"""
)

#: Cluster: index a session just before a write (the index lives in another slot), or
#: repair its entries. KEYS: idx, exp. ARGV: member, ttl, updated time, created time ('' keeps
#: it, or the updated time for a new session), user mode ('k' keep, 's' set, 'n' none), user
#: id, exact ('1': index exactly so, as a listing that read the header does; '0': before a
#: write, which may still fail, only add: the updated time only grows and a user's sets only
#: gain the session, so a listing meets every entry it must check against the header).
INDEX_SYNC = Script(
    _INDEX
    + """
local base = string.sub(KEYS[1], 1, -2)
local member = ARGV[1]
redis.call('ZADD', KEYS[1], 0, member)
if ARGV[2] ~= '0' then
  local t = redis.call('TIME')
  local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[2], 'GT', at, member)
end
local user = false
if ARGV[5] == 's' then user = ARGV[6] end
if ARGV[7] == '1' then
  reindex(base, member, ARGV[3], ARGV[4], user)
  return 1
end
local c = base .. 'c'
if ARGV[4] == '' then
  redis.call('ZADD', c, 'NX', ARGV[3], member)
else
  redis.call('ZADD', c, ARGV[4], member)
end
local ca = redis.call('ZSCORE', c, member)
redis.call('ZADD', base .. 'u', 'GT', ARGV[3], member)
local known = users(base, member)
local all = {}
for _, old in ipairs(known) do all[#all + 1] = old end
if user then
  local seen = false
  for _, old in ipairs(known) do
    if old == user then seen = true end
  end
  if not seen then
    all[#all + 1] = user
    redis.call('HSET', base .. 'w', member, cmsgpack.pack(all))
  end
end
for _, u in ipairs(all) do
  redis.call('ZADD', base .. 'U:' .. u, 'GT', ARGV[3], member)
  redis.call('ZADD', base .. 'C:' .. u, ca, member)
end
return 1
"""
)

#: Cluster: drop sessions from an index shard. KEYS: idx, exp; ARGV: members.
INDEX_DROP = Script(
    _INDEX
    + """
local base = string.sub(KEYS[1], 1, -2)
for i = 1, #ARGV do unindex(base, ARGV[i]) end
return #ARGV
"""
)

#: Read the version, the metadata and the message count, sliding the TTL ARGV[1] (reads with
#: ``touch_on_read``). KEYS: h, m. Returns {version or false, metadata or false, count}.
META_TOUCH = Script(
    """
local f = redis.call('HMGET', KEYS[1], 'v', 'd')
if not f[1] then return {false, false, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {f[1], f[2], redis.call('LLEN', KEYS[2])}
"""
)
