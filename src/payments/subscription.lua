-- change_subscription(key, change, id, plan, amount, currency, now): applies
-- an answered payment to its user's subscription hash: 'activate' (an
-- accepted payment), 'end' (an accepted refund) or '' (nothing). Prepended
-- to answer.lua (one server) and to the user step of a cluster.
local function change_subscription(key, change, id, plan, amount, currency, now)
  if change == 'activate' then
    redis.call('HSET', key, 'status', 'active', 'plan', plan, 'amount', amount,
               'currency', currency, 'payment_id', id, 'since', now)
    redis.call('HDEL', key, 'ended_at')
  elseif change == 'end' then
    redis.call('HSET', key, 'status', 'ended', 'ended_at', now)
  end
end
