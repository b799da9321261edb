-- Stores the processor's answer to a payment.
--
-- KEYS[1] payment:{id}
-- KEYS[2] payments:status:in_processing
-- KEYS[3] payments:status:processed
-- KEYS[4] payments:unannounced
-- KEYS[5] subscription:{user}
-- KEYS[6] payments:claim:{kind}:{user}
-- ARGV[1] payment id
-- ARGV[2] the record's JSON, processed, with the payment status answered
-- ARGV[3] subscription change: 'activate' (an accepted payment), 'end' (an
--         accepted refund) or '' (decline, error)
-- ARGV[4] plan, ARGV[5] amount, ARGV[6] currency, ARGV[7] now (RFC 3339)
--
-- Invariant: the answer, the subscription change, the place in the announce
-- queue and the release of the user's claim (see claim.lua) happen together
-- or not at all, and only to a payment still in_processing: an answer
-- stored twice changes nothing twice. While the claim is held the user can
-- have no second charge; once it is released an accepted payment's active
-- subscription keeps it so, and a declined or failed one frees the user.
--
-- Returns 1 stored, 0 the payment is not in_processing (nothing written).
-- change_subscription comes from subscription.lua, prepended.

local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, payment = pcall(cjson.decode, current)
if not ok or type(payment) ~= 'table' or payment.processing_status ~= 'in_processing' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
change_subscription(KEYS[5], ARGV[3], ARGV[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if redis.call('GET', KEYS[6]) == ARGV[1] then redis.call('DEL', KEYS[6]) end
return 1
