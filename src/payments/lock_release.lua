-- Releases the `payments process` lock at the end of a run.
--
-- KEYS[1] payments:process-lock
-- ARGV[1] this run's token
--
-- Invariant: a run deletes only its own lock, never one another run took
-- after this one's expired.
--
-- Returns 1 released, 0 not ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
