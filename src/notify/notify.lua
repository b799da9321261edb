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
-- starts again from it. Every outcome is also looked for among the user's
-- last `window` notifications, and among those this call is about to push
-- (by its event id, or by its text when the producer gives none): a
-- re-announcement can reach the topic before the first announcement it
-- repeats (a worker that lost its partitions mid-batch publishes late).
--
-- KEYS: 1 the applied-offsets hash, then one notifications list per push.
-- ARGV: 1 window (notifications searched), 2 replay ('1': ignore applied
--       offsets), then five per push: partition field ("topic/partition"),
--       offset, timestamp (ms, -1 if none), notification JSON, and the text
--       that marks an earlier copy in the list ('' to skip the search).
--       The pushes of one message are consecutive.
-- Returns 1 for each notification pushed, 0 for each already there.
--
-- Cost: one TYPE and one RPUSH per distinct list, not per push; a batch's
-- pushes to one list go in order in one RPUSH.
local window = tonumber(ARGV[1])
local replay = ARGV[2] == '1'
local applied, changed = {}, {}

local function read(field)
  local state = applied[field]
  if state == nil then
    local stored = redis.call('HGET', KEYS[1], field)
    local offset, ts = nil, nil
    if stored then offset, ts = string.match(stored, '^(%d+):(%-?%d+)$') end
    state = {tonumber(offset) or -1, tonumber(ts) or -1}
    applied[field] = state
  end
  return state
end

local pushes = (#ARGV - 2) / 5
-- Every check before the first write: a list key of another type fails the
-- whole call, with nothing pushed, so the worker can find its message.
local queued, order = {}, {}
for i = 2, pushes + 1 do
  local list = KEYS[i]
  if queued[list] == nil then
    local kind = redis.call('TYPE', list).ok
    if kind ~= 'list' and kind ~= 'none' then
      return redis.error_reply('WRONGTYPE ' .. list .. ' holds a ' .. kind .. ', not a list')
    end
    queued[list] = {}
    order[#order + 1] = list
  end
end

-- Is `mark` in the list's last `window` items, or queued for it already?
-- A list's tail is read once per call (nothing is pushed before the end).
local tails = {}
local function copied(list, mark)
  local pending = queued[list]
  for j = #pending, 1, -1 do
    if string.find(pending[j], mark, 1, true) then return true end
  end
  local wanted = window - #pending
  if wanted <= 0 then return false end
  local tail = tails[list]
  if tail == nil then
    tail = redis.call('LRANGE', list, -window, -1)
    tails[list] = tail
  end
  for j = math.max(1, #tail - wanted + 1), #tail do
    if string.find(tail[j], mark, 1, true) then return true end
  end
  return false
end

local pushed = {}
local last_field, last_offset, fresh = nil, nil, false
for i = 1, pushes do
  local base = 2 + (i - 1) * 5
  local field, offset_text = ARGV[base + 1], ARGV[base + 2]
  -- All pushes of one message (consecutive) share its decision.
  if field ~= last_field or offset_text ~= last_offset then
    last_field, last_offset = field, offset_text
    local offset, ts = tonumber(offset_text), tonumber(ARGV[base + 3])
    local state = read(field)
    fresh = true
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
  end
  local list, mark = KEYS[i + 1], ARGV[base + 5]
  local push = fresh
  if push and mark ~= '' and copied(list, mark) then push = false end
  if push then
    local pending = queued[list]
    pending[#pending + 1] = ARGV[base + 4]
    pushed[i] = 1
  else
    pushed[i] = 0
  end
end
for _, list in ipairs(order) do
  local pending = queued[list]
  -- unpack is bounded by Lua's stack: push long runs in slices.
  for from = 1, #pending, 1000 do
    redis.call('RPUSH', list, unpack(pending, from, math.min(from + 999, #pending)))
  end
end
for field in pairs(changed) do
  redis.call('HSET', KEYS[1], field, applied[field][1] .. ':' .. applied[field][2])
end
return pushed
