-- DISCARD: undo an initiate whose message the broker did not acknowledge.
--
-- KEYS[1] transfer:{id}
-- KEYS[2] transfers              sorted set, every transfer by creation ms
-- KEYS[3] transfers:unpublished  set, stored but not yet acknowledged
-- KEYS[4] transfers:pending      sorted set, undecided transfers
-- KEYS[5] transfers:adopted      set, unpublished transfers a replay took over
-- KEYS[6] idempotency:transfer:{key}, only when the transfer has a key
-- ARGV[1] the transfer id
--
-- Returns 1 when the transfer was removed, 0 when it was processed after
-- all (some copy of its message reached the broker: it stays), 2 when a
-- replay of its key or `transfer resend` took it over (it stays).
--
-- Invariant: a transfer that anyone else has reported, published or
-- processed is never removed. Only an initiated transfer that is still
-- unpublished and not adopted goes, with its index entries and its key.

local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, t = pcall(cjson.decode, stored)
  if ok and type(t) == 'table' and t.status ~= 'initiated' then
    redis.call('SREM', KEYS[3], ARGV[1])
    redis.call('SREM', KEYS[5], ARGV[1])
    return 0
  end
  -- Adopted, or already acknowledged through another publish.
  if redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1
    or redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
    return 2
  end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if #KEYS >= 6 and redis.call('GET', KEYS[6]) == ARGV[1] then
  redis.call('DEL', KEYS[6])
end
return 1
