-- Claims a payment for the processor: one charge per subscription.
--
-- KEYS[1] payment:{id}
-- KEYS[2] payments:claim:{kind}:{user}  the id of the user's payment (or
--         refund) that is with the processor
-- KEYS[3] subscription:{user}
-- KEYS[4] payments:status:{from}        the set the payment is in now
-- KEYS[5] payments:status:in_processing
-- KEYS[6] payments:status:duplicated
-- ARGV[1] payment id
-- ARGV[2] from: 'new', or 'in_processing' for a payment sent before and
--         still unanswered
-- ARGV[3] kind: 'payment' or 'refund'
-- ARGV[4] user id
-- ARGV[5] the record's JSON as in_processing
-- ARGV[6] the record's JSON as duplicated, without a detail (a JSON object,
--         so it ends with '}'; the reason is added here)
--
-- Invariant: a payment goes to the processor only if it holds its user's
-- claim for its kind, and the claim is taken only when
--   * no other payment of that kind of the user is in_processing, and
--   * for a payment: the user's subscription is not active (an accepted
--     payment of an active subscription is a charge already made);
--     for a refund: the subscription is active (a refunded subscription has
--     ended, so a second refund of it has nothing to refund).
-- Otherwise the payment becomes duplicated, with the reason. Check and claim
-- happen in this one script, so two passes cannot both claim. The claim is
-- released by answer.lua, in the step that stores the processor's answer.
--
-- Returns {1, ''} claimed (or already held by this payment), {2, reason}
-- duplicated, {0, ''} the record is not in `from` (moved on, or changed
-- under us): nothing written.

local id, from, kind, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local current = redis.call('GET', KEYS[1])
if not current then return {0, ''} end
local ok, payment = pcall(cjson.decode, current)
if not ok or type(payment) ~= 'table' or payment.processing_status ~= from
   or payment.user_id ~= user or payment.kind ~= kind then
  return {0, ''}
end

local function duplicate(reason)
  local record = string.sub(ARGV[6], 1, -2) .. ',"detail":' .. cjson.encode(reason) .. '}'
  redis.call('SET', KEYS[1], record)
  redis.call('SREM', KEYS[4], id)
  redis.call('SADD', KEYS[6], id)
  return {2, reason}
end

local holder = redis.call('GET', KEYS[2])
if holder == id then return {1, ''} end
-- A holder that is no longer in_processing (its record was edited or
-- removed by hand) holds nothing: its claim is stale and is taken over.
if holder and redis.call('SISMEMBER', KEYS[5], holder) == 1 then
  return duplicate(kind .. ' ' .. holder .. ' of this user is with the processor')
end

local subscription = redis.call('HMGET', KEYS[3], 'status', 'payment_id')
local active = subscription[1] == 'active'
if kind == 'payment' and active then
  return duplicate('the subscription is already paid (payment ' .. (subscription[2] or 'unknown') .. ')')
elseif kind == 'refund' and not active then
  return duplicate('no active subscription to refund')
end

redis.call('SET', KEYS[2], id)
if from ~= 'in_processing' then
  redis.call('SET', KEYS[1], ARGV[5])
  redis.call('SREM', KEYS[4], id)
  redis.call('SADD', KEYS[5], id)
end
return {1, ''}
