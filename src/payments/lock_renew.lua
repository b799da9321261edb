-- Renews the `payments process` lock, only if this run still holds it.
--
-- KEYS[1] payments:process-lock
-- ARGV[1] this run's token, ARGV[2] time to live in milliseconds
--
-- Invariant: a run never extends a lock it no longer holds (expired, or
-- taken by another run since): then it must stop before its next
-- processor call.
--
-- Returns 1 renewed, 0 not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
