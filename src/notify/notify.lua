-- Pushes a batch's notifications, each exactly once, in one call.
--
-- Exactly once without a key per event: `applied` holds, per input
-- partition, the highest offset whose notifications are written and the
-- highest message timestamp up to it ("offset:timestamp"), updated in this
-- same atomic step as the pushes. A message at or below that offset, and
-- not newer than that timestamp, was applied before: it pushes nothing
-- (whichever consumer group reads it again). A message at or below the
-- offset but newer than every applied one means the log was reset (a
-- broker that lost its topics): it is applied, and the partition's record
-- starts again from it. An outcome that may have been announced before (a
-- re-announcement, or a producer that gives no event id) is also looked
-- for among the user's last `window` notifications.
--
-- KEYS: 1 the applied-offsets hash, then one notifications list per push.
-- ARGV: 1 window (notifications searched), 2 replay ('1': ignore applied
--       offsets), then five per push: partition field ("topic/partition"),
--       offset, timestamp (ms, -1 if none), notification JSON, and the text
--       that marks an earlier copy in the list ('' to skip the search).
-- Returns 1 for each notification pushed, 0 for each already there.
local window = tonumber(ARGV[1])
local replay = ARGV[2] == '1'
local applied, changed, seen = {}, {}, {}

local function read(field)
  if applied[field] == nil then
    local stored = redis.call('HGET', KEYS[1], field)
    local offset, ts = nil, nil
    if stored then offset, ts = string.match(stored, '^(%d+):(%-?%d+)$') end
    applied[field] = {tonumber(offset) or -1, tonumber(ts) or -1}
  end
  return applied[field]
end

local pushes = (#ARGV - 2) / 5
-- Every check before the first write: a list key of another type fails the
-- whole call, with nothing pushed, so the worker can find its message.
for i = 1, pushes do
  local kind = redis.call('TYPE', KEYS[i + 1]).ok
  if kind ~= 'list' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i + 1] .. ' holds a ' .. kind .. ', not a list')
  end
end

local pushed = {}
for i = 1, pushes do
  local base = 2 + (i - 1) * 5
  local field, offset, ts = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local json, mark = ARGV[base + 4], ARGV[base + 5]
  local list = KEYS[i + 1]
  local message = field .. '@' .. ARGV[base + 2]
  -- All pushes of one message share its decision.
  if seen[message] == nil then
    local state = read(field)
    local fresh = true
    if not replay and offset <= state[1] then
      if ts < 0 or ts <= state[2] then
        fresh = false
      else
        state[1], state[2] = -1, -1
      end
    end
    if fresh then
      if offset > state[1] then state[1] = offset end
      if ts > state[2] then state[2] = ts end
      changed[field] = true
    end
    seen[message] = fresh
  end
  local push = seen[message]
  if push and mark ~= '' then
    for _, item in ipairs(redis.call('LRANGE', list, -window, -1)) do
      if string.find(item, mark, 1, true) then push = false break end
    end
  end
  if push then
    redis.call('RPUSH', list, json)
    pushed[i] = 1
  else
    pushed[i] = 0
  end
end
for field in pairs(changed) do
  redis.call('HSET', KEYS[1], field, applied[field][1] .. ':' .. applied[field][2])
end
return pushed
