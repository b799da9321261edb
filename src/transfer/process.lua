-- Applies a batch of transfers in one call, each one atomically and in
-- order: for each, the stored record decides, every check runs before its
-- first write, and the sum of all balances never changes. A transfer
-- later in the batch sees the balances the earlier ones left.
--
-- KEYS: 1 pending transfers (sorted set), then three per transfer: its
--       record, its sender's account, its receiver's account
-- ARGV: 1 the largest balance in minor units (below 2^53, so Lua's doubles
--       hold every balance exactly), then nine per transfer: the record as
--       the worker read it ('' = there was none), mode (ledger |
--       status-only | reject), amount in minor units, currency, completed
--       record JSON (no reason field), reason (mode reject), transfer id,
--       sender id, receiver id
-- Returns two per transfer: 'completed' and '', 'rejected' and the
-- reason, 'stale' and '' when the record changed since the worker read it
-- (nothing written: read and plan again), or 'error' and Redis's error
-- when one of its keys cannot be read (a key of another type: nothing
-- written for that transfer, the others go on).
local pending = KEYS[1]
local kind = redis.call('TYPE', pending).ok
if kind ~= 'zset' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. pending .. ' holds a ' .. kind .. ', not a sorted set')
end
local max = tonumber(ARGV[1])

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

-- A reply of redis.pcall that is an error, as its text; nil otherwise.
local function failure(reply)
  if type(reply) == 'table' and reply.err then return reply.err end
  return nil
end

-- The outcome of one transfer: outcome, detail.
local function apply(record, sender_key, receiver_key, a)
  local read, mode, amount_text = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local stored = redis.pcall('GET', record)
  local err = failure(stored)
  if err then return 'error', err end
  if (stored or '') ~= read then return 'stale', '' end

  local reason = nil
  if mode == 'reject' then
    reason = ARGV[a + 5]
  elseif mode == 'ledger' then
    local sender = redis.pcall('HMGET', sender_key, 'currency', 'balance')
    err = failure(sender)
    if err then return 'error', err end
    local receiver = redis.pcall('HMGET', receiver_key, 'currency', 'balance')
    err = failure(receiver)
    if err then return 'error', err end
    local amount = tonumber(amount_text)
    local currency = ARGV[a + 3]
    local sender_balance = balance(sender[2])
    local receiver_balance = balance(receiver[2])
    if not sender[1] or not receiver[1] then
      reason = 'unknown account'
    elseif not sender_balance then
      reason = 'invalid balance on ' .. ARGV[a + 7]
    elseif not receiver_balance then
      reason = 'invalid balance on ' .. ARGV[a + 8]
    elseif sender[1] ~= currency or receiver[1] ~= currency then
      reason = 'currency mismatch'
    elseif sender_balance < amount then
      reason = 'insufficient funds'
    elseif receiver_balance + amount > max then
      reason = 'receiver balance limit'
    end
  end

  -- Every check is done: from here on, only writes.
  redis.call('ZREM', pending, ARGV[a + 6])
  local completed = ARGV[a + 4]
  if reason then
    -- The rejected record is the completed one with another status and a reason.
    local rejected = string.gsub(completed, '"status":"completed"', '"status":"rejected"', 1)
    redis.call('SET', record, string.sub(rejected, 1, -2) .. ',"reason":' .. cjson.encode(reason) .. '}')
    return 'rejected', reason
  end
  if mode == 'ledger' then
    redis.call('HINCRBY', sender_key, 'balance', '-' .. amount_text)
    redis.call('HINCRBY', receiver_key, 'balance', amount_text)
  end
  redis.call('SET', record, completed)
  return 'completed', ''
end

local replies = {}
local transfers = (#ARGV - 1) / 9
for i = 0, transfers - 1 do
  local k = 1 + i * 3
  local outcome, detail = apply(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], 2 + i * 9)
  replies[#replies + 1] = outcome
  replies[#replies + 1] = detail
end
return replies
