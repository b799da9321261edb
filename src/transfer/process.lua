-- Applies one transfer, atomically: the stored record decides, every check
-- runs before the first write, and the sum of all balances never changes.
--
-- KEYS: 1 transfer record, 2 sender account, 3 receiver account,
--       4 pending transfers (sorted set)
-- ARGV: 1 the record as the worker read it ('' = there was none), 2 mode
--       (ledger | status-only | reject), 3 amount in minor units,
--       4 currency, 5 completed record JSON (no reason field), 6 reason
--       (mode reject), 7 the largest balance in minor units (below 2^53, so
--       Lua's doubles hold every balance exactly), 8 transfer id,
--       9 sender id, 10 receiver id
-- Returns {'completed'}, {'rejected', reason}, or {'stale'} when the record
-- changed since the worker read it (nothing written: read and plan again).
local stored = redis.call('GET', KEYS[1])
if (stored or '') ~= ARGV[1] then
  return {'stale'}
end

local max = tonumber(ARGV[7])
-- A balance is an integer in canonical form: optional '-', digits, no
-- leading zeros, within the bound. '100.0', '+5', ' 5', '1e3' and '05' are
-- not balances, whatever tonumber makes of them.
local function balance(text)
  if type(text) ~= 'string' or #text > 17 then return nil end
  if text ~= '0' and not string.match(text, '^%-?[1-9]%d*$') then return nil end
  local n = tonumber(text)
  if n > max or n < -max then return nil end
  return n
end

local reason = nil
if ARGV[2] == 'reject' then
  reason = ARGV[6]
elseif ARGV[2] == 'ledger' then
  local sender = redis.call('HMGET', KEYS[2], 'currency', 'balance')
  local receiver = redis.call('HMGET', KEYS[3], 'currency', 'balance')
  local amount = tonumber(ARGV[3])
  local sender_balance = balance(sender[2])
  local receiver_balance = balance(receiver[2])
  if not sender[1] or not receiver[1] then
    reason = 'unknown account'
  elseif not sender_balance then
    reason = 'invalid balance on ' .. ARGV[9]
  elseif not receiver_balance then
    reason = 'invalid balance on ' .. ARGV[10]
  elseif sender[1] ~= ARGV[4] or receiver[1] ~= ARGV[4] then
    reason = 'currency mismatch'
  elseif sender_balance < amount then
    reason = 'insufficient funds'
  elseif receiver_balance + amount > max then
    reason = 'receiver balance limit'
  end
end

redis.call('ZREM', KEYS[4], ARGV[8])
if reason then
  -- The rejected record is the completed one with another status and a reason.
  local rejected = string.gsub(ARGV[5], '"status":"completed"', '"status":"rejected"', 1)
  redis.call('SET', KEYS[1], string.sub(rejected, 1, -2) .. ',"reason":' .. cjson.encode(reason) .. '}')
  return {'rejected', reason}
end
if ARGV[2] == 'ledger' then
  redis.call('HINCRBY', KEYS[2], 'balance', '-' .. ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'balance', ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[5])
return {'completed'}
