"""The Lua scripts the transport runs in Redis, and their cache per connection.

Each script does in one atomic round trip what kombu does in several commands
(or cannot do atomically at all); the channel mixins say when each runs.
"""

from __future__ import annotations

from typing import Any

#: Milliseconds an ack that found no slot to remove is remembered (a mark at
#: ``<unacked hash key>:acked:<tag>``, see AckSlotRecordsMixin.acked_mark_key), so
#: the slot's record, still on its way on another connection, does not make it.
#: A record is sent before its message's worker starts; only a record held up
#: in transit for longer than this could still come after it.
ACKED_MARK_MS = 60_000

#: Records the ack slot of delivery tag ARGV[1]: its delivery time ARGV[2] in
#: the index KEYS[1], the message ARGV[3] in the hash ARGV[4]. One atomic
#: command instead of kombu's MULTI/ZADD/HSET/EXEC (four replies to read).
#: A slot whose ack came first (its mark, see PUBLISH_SCRIPT) is not made.
#: Returns the length of list ARGV[5] if given (messages waiting), else 0.
APPEND_SCRIPT = """
if redis.call('DEL', ARGV[4] .. ':acked:' .. ARGV[1]) == 1 then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', ARGV[4], ARGV[1], ARGV[3])
if ARGV[5] then
    return redis.call('LLEN', ARGV[5])
end
return 0
"""

#: Most wake-up tokens TAKE_SCRIPT adds to a queue's wake-up list at once when
#: it finds fewer tokens than messages (a consumer killed after its BRPOP took
#: a token, a message restored or published without one): enough to wake
#: several consumers, never a push per message of a long backlog.
WAKE_TOKENS_ADDED = 16

#: Takes messages and records their ack slots in one atomic step: the only way
#: a consumer takes a message from a queue consumed with acks, so a consumer
#: killed at any instant leaves each message either in its queue or in its
#: slot. KEYS[1]: the slot index; ARGV[1]: the slot hash, ARGV[2]: most
#: messages to take, ARGV[3]: the delivery time; then one group per queue:
#: its wake-up list, '1' if its messages need a slot (else '0'), the number n
#: of its lists, and its n lists in priority order. Pops from each list in
#: turn and records each slot as APPEND_SCRIPT does; a message whose delivery
#: tag it cannot read is taken without a slot (as a BRPOP would take it: the
#: consumer then meets it). Then sets each queue's wake-up tokens to the
#: messages it still holds (trimmed, or up to WAKE_TOKENS_ADDED added), so a
#: token is never lost for good and never wakes a consumer for nothing twice.
#: Returns {messages left in these queues, list, message, list, message, ...}.
TAKE_SCRIPT = """
local taken = {0}
local room = tonumber(ARGV[2])
local waiting = 0
local i = 4
while i <= #ARGV do
    local wake, record, n = ARGV[i], ARGV[i + 1] == '1', tonumber(ARGV[i + 2])
    local first, last = i + 3, i + 2 + n
    local left = 0
    for j = first, last do
        local key = ARGV[j]
        while room > 0 do
            local item = redis.call('RPOP', key)
            if not item then
                break
            end
            if record then
                local ok, message = pcall(cjson.decode, item)
                local properties = ok and type(message) == 'table' and message['properties']
                local tag = type(properties) == 'table' and properties['delivery_tag']
                if type(tag) == 'string' then
                    local info = properties['delivery_info']
                    local exchange, routing_key = '', ''
                    if type(info) == 'table' then
                        if type(info['exchange']) == 'string' then exchange = info['exchange'] end
                        if type(info['routing_key']) == 'string' then
                            routing_key = info['routing_key']
                        end
                    end
                    redis.call('ZADD', KEYS[1], ARGV[3], tag)
                    local tail = cjson.encode(exchange) .. ',' .. cjson.encode(routing_key)
                    redis.call('HSET', ARGV[1], tag, '[' .. item .. ',' .. tail .. ']')
                end
            end
            taken[#taken + 1] = key
            taken[#taken + 1] = item
            room = room - 1
        end
        left = left + redis.call('LLEN', key)
    end
    local tokens = redis.call('LLEN', wake)
    if tokens > left then
        if left == 0 then
            redis.call('DEL', wake)
        else
            redis.call('LTRIM', wake, 0, left - 1)
        end
    elseif tokens < left then
        for _ = 1, math.min(left - tokens, WAKE_TOKENS_ADDED) do
            redis.call('LPUSH', wake, '1')
        end
    end
    waiting = waiting + left
    i = last + 1
end
taken[1] = waiting
return taken
""".replace("WAKE_TOKENS_ADDED", str(WAKE_TOKENS_ADDED))

#: Removes the ack slot ARGV[1] from the index KEYS[1] and the hash ARGV[2].
ACK_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', ARGV[2], ARGV[1])
"""

#: If the binding table ARGV[3] of exchange ARGV[1] is still at version
#: ARGV[2] (versions in hash KEYS[1]), pushes message copies ARGV[7..] to
#: queues KEYS[2..], a wake-up token for each copy to the wake-up list named
#: after the copies (ARGV[7 + copies..], '' for a queue consumed without
#: tokens, see TAKE_SCRIPT) and, when ARGV[4] is a delivery tag, removes its ack slot
#: (hash ARGV[5], index ARGV[6]) in the same step; else does nothing and
#: returns {version, table} for the caller to route again. One round trip
#: instead of SMEMBERS + LPUSH (+ the request's ack), and never a message
#: routed by a stale table. An ack whose slot is not there yet (its record,
#: sent on the consumer's connection, not yet run) leaves a mark for
#: ACKED_MARK_MS, and APPEND_SCRIPT then does not make the slot.
PUBLISH_SCRIPT = """
local version = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
if version ~= ARGV[2] then
    return {version, redis.call('SMEMBERS', ARGV[3])}
end
local copies = #KEYS - 1
for i = 2, #KEYS do
    redis.call('LPUSH', KEYS[i], ARGV[i + 5])
    local wake = ARGV[i + 5 + copies]
    if wake and wake ~= '' then
        redis.call('LPUSH', wake, '1')
    end
end
if ARGV[4] ~= '' then
    redis.call('ZREM', ARGV[6], ARGV[4])
    if redis.call('HDEL', ARGV[5], ARGV[4]) == 0 then
        redis.call('SET', ARGV[5] .. ':acked:' .. ARGV[4], '1', 'PX', ACKED_MARK_MS)
    end
end
return #KEYS - 1
""".replace("ACKED_MARK_MS", str(ACKED_MARK_MS))

#: Bumps the binding-table version of exchange ARGV[1] in hash KEYS[1].
BUMP_VERSION_SCRIPT = """
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""

#: Adds binding member ARGV[1] to table KEYS[1] (also to the permanent set
#: ARGV[4] when it has no TTL), and sets its deadline in KEYS[2] to ARGV[3] ms
#: from now by the server clock; ARGV[2] is the deadline-set member. A new
#: member bumps the version of exchange ARGV[6] in hash ARGV[5].
BIND_SCRIPT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
    redis.call('HINCRBY', ARGV[5], ARGV[6], 1)
end
if tonumber(ARGV[3]) > 0 then
    local now = redis.call('TIME')
    local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    redis.call('ZADD', KEYS[2], ms + tonumber(ARGV[3]), ARGV[2])
else
    redis.call('SADD', ARGV[4], ARGV[1])
end
"""

#: Removes up to ARGV[4] bindings whose deadline in KEYS[1] has passed, and
#: the messages of their queues. ARGV[1] is the key prefix, ARGV[2] the
#: separator, ARGV[3] a space-separated list of priority suffixes, ARGV[5]
#: the binding-versions hash (bumped for each binding removed).
SWEEP_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local prefix, sep = ARGV[1], ARGV[2]
local overdue = redis.call(
    'ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[4]))
for _, entry in ipairs(overdue) do
    local cut = string.find(entry, sep, 1, true)
    local exchange = string.sub(entry, 1, cut - 1)
    local member = string.sub(entry, cut + string.len(sep))
    if redis.call('SREM', prefix .. '_kombu.binding.' .. exchange, member) == 1 then
        redis.call('HINCRBY', prefix .. ARGV[5], exchange, 1)
    end
    local queue = member
    local pos = string.find(queue, sep, 1, true)
    while pos do
        queue = string.sub(queue, pos + string.len(sep))
        pos = string.find(queue, sep, 1, true)
    end
    redis.call('DEL', prefix .. queue)
    for suffix in string.gmatch(ARGV[3], '%S+') do
        redis.call('DEL', prefix .. queue .. sep .. suffix)
    end
    redis.call('ZREM', KEYS[1], entry)
end
return #overdue
"""


class ScriptCache:
    """Lua scripts registered once per connection, not once per channel."""

    def __init__(self) -> None:
        self._scripts: dict[str, Any] = {}

    def __call__(self, channel: Any, name: str, source: str) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = channel.new_client().register_script(source)
        return script
