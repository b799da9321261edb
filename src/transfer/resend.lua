-- RESEND: decide whether one undecided transfer is to be published again.
--
-- KEYS[1] transfer:{id}
-- KEYS[2] transfers:pending      sorted set, undecided transfers by creation ms
-- KEYS[3] transfers:unpublished  set, stored but not yet acknowledged
-- KEYS[4] transfers:adopted      set, unpublished transfers someone took over
-- ARGV[1] the transfer id
--
-- Returns one of:
--   {'send', record}       still initiated: publish these bytes again
--   {'decided', status}    completed or rejected; its index entries are dropped
--   {'gone'}               no record; its index entries are dropped
--   {'unreadable', why}    a record payctl cannot read; left as it is
--
-- Invariant: only a record whose stored status is still 'initiated' is
-- sent again. One still in the unpublished set is marked adopted in the same
-- step, so the initiate that stored it keeps it if its own publish fails.

local stored = redis.call('GET', KEYS[1])
if not stored then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  return {'gone'}
end
local ok, t = pcall(cjson.decode, stored)
if not ok or type(t) ~= 'table' then return {'unreadable', 'not JSON'} end
if type(t.status) ~= 'string' then return {'unreadable', 'no status'} end
if t.status ~= 'initiated' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[1])
  redis.call('SREM', KEYS[4], ARGV[1])
  return {'decided', t.status}
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[4], ARGV[1])
end
return {'send', stored}
