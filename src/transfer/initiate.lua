-- INITIATE: store a new transfer, or answer with the transfer its
-- idempotency key already names.
--
-- KEYS[1] transfer:{id} of the new transfer
-- KEYS[2] transfers              sorted set, every transfer by creation ms
-- KEYS[3] transfers:unpublished  set, stored but not yet acknowledged by the broker
-- KEYS[4] transfers:pending      sorted set, undecided transfers by creation ms
-- KEYS[5] transfers:adopted      set, unpublished transfers a replay took over
-- KEYS[6] idempotency:transfer:{key}, only when the request has a key
-- ARGV[1] the new record's JSON   ARGV[2] its id   ARGV[3] creation ms
-- ARGV[4] sender   ARGV[5] receiver   ARGV[6] amount (decimal text)
-- ARGV[7] currency   ARGV[8] the prefix of record keys ('transfer:')
--
-- Returns one of:
--   {'created', id}
--   {'earlier', id, record}    the key's transfer, asked for with the same parameters
--   {'adopted', id, record}    the same, still initiated and unpublished: the
--                              caller publishes it, and the run that stored it
--                              will not roll it back (see discard.lua)
--   {'different', id}          the key named a transfer with other parameters
--   {'gone', id, why}          the key names a transfer that is missing or unreadable
--   {'invalid', why}           the key holds something that is not a transfer id
--
-- Invariant: an idempotency key names at most one transfer, and a request
-- whose sender, receiver, amount (by value: 12.5 = 12.50) or currency
-- differs from it writes nothing. Every check runs before the first write.
--
-- The earlier record, ARGV[8] .. {earlier id}, is read under a name taken
-- from KEYS[6]'s value: the key, its transfer and the adoption are one atomic step.

-- canonical(text) comes from canonical.lua, prepended when the script is built.

if #KEYS >= 6 then
  local earlier = redis.pcall('GET', KEYS[6])
  if type(earlier) == 'table' then
    return {'invalid', tostring(earlier.err)}
  end
  if earlier then
    local stored = redis.call('GET', ARGV[8] .. earlier)
    if not stored then return {'gone', earlier, 'its record is missing'} end
    local ok, t = pcall(cjson.decode, stored)
    if not ok or type(t) ~= 'table' then
      return {'gone', earlier, 'its record is not JSON'}
    end
    -- The amount's own digits: cjson would read it as a double.
    local amount = string.match(stored, '"amount"%s*:%s*"?([^,}"]*)')
    local same = t.sender_id == ARGV[4] and t.receiver_id == ARGV[5]
      and t.currency == ARGV[7]
      and canonical(amount) ~= nil and canonical(amount) == canonical(ARGV[6])
    if not same then return {'different', earlier} end
    if t.status == 'initiated' and redis.call('SISMEMBER', KEYS[3], earlier) == 1 then
      redis.call('SADD', KEYS[5], earlier)
      return {'adopted', earlier, stored}
    end
    return {'earlier', earlier, stored}
  end
  redis.call('SET', KEYS[6], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return {'created', ARGV[2]}
