-- Notes that a batch's outcome events are acknowledged, per input partition.
--
-- KEYS: 1 the announced hash (field `topic/partition`, value `offset:timestamp`)
-- ARGV: triples of field, the batch's highest offset in that partition, and
--       its newest message timestamp (ms, -1 if none)
-- Keeps, per partition, the highest acknowledged offset and the newest
-- timestamp of every message up to it (producers' clocks differ, so a
-- later offset can carry an older timestamp). A batch below the stored
-- offset but newer than every message noted means the broker lost its log:
-- the partition starts again from that batch.
for i = 1, #ARGV, 3 do
  local field, offset, ts = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local stored = redis.call('HGET', KEYS[1], field)
  local old_offset, old_ts = -1, -1
  if stored then
    local o, t = string.match(stored, '^(%-?%d+):(%-?%d+)$')
    old_offset, old_ts = tonumber(o) or -1, tonumber(t) or -1
  end
  if offset < old_offset and ts > old_ts then
    old_offset, old_ts = -1, -1
  end
  redis.call('HSET', KEYS[1], field, math.max(offset, old_offset) .. ':' .. math.max(ts, old_ts))
end
return 1
