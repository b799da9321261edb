-- Counts completed transaction events per user, each event once (the
-- `own_worker` example's effect).
--
-- KEYS: 1 the set of event ids already counted, 2 the hash user id -> count.
--       Both in one hash slot (one `{tag}`), so this works on a cluster too.
-- ARGV: pairs of (event id, user id), one pair per completed event, in the
--       batch's order.
-- Returns one integer per pair: 1 counted now, 0 counted before.
--
-- Invariant: a user's count is the number of distinct event ids counted for
-- them. The id is added and the count raised in one atomic step, so a batch
-- delivered again (at-least-once), or an event given twice in one batch,
-- changes nothing twice.
local answers = {}
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    answers[#answers + 1] = 1
  else
    answers[#answers + 1] = 0
  end
end
return answers
