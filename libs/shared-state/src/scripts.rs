//! The Lua scripts Redis runs. Each logged batch is one script call, so it is applied whole
//! or not at all, and together with the log position it came from: a batch applied twice
//! (a catch-up after a lost reply) changes nothing the second time.
//!
//! Keys (after the configured prefix): `r:<user>` recent events (sorted set, score = event
//! time, member = `<seq>:<n>:<type>:<item id>`), `p:<user>` purchases (hash, item id →
//! `count:last ms`), `s:<user>` impressions (hash, item id → `times:last ms`) and `d:<user>`
//! the same for items shown often enough to be demoted (what an answer reads), `trending`
//! (sorted set of scaled counts, see `tandem_personalization::TrendingConfig`) with
//! `trending:meta` (`ref`, `latest`), `applied:<log id>` how far each gateway's log is
//! applied, `e:<user>` the user's producer event ids (sorted set, score = when claimed). Scripts touch keys they
//! compute, so the store is one Redis primary (or a Sentinel-managed one), not a cluster.

/// ARGV: seq, expected position, prefix, events per user, half-life ms, four type weights,
/// trending items kept, idle TTL s (0: none), record kind (`E` events, `F` forget), then for
/// `E` groups of user, item, type code, time ms; for `F` the user.
/// KEYS: the log's `applied:` key. Returns `{1, seq}` applied, `{0, position}` already
/// applied, `{-1, position}` when the store is behind what this gateway knew it held (it
/// lost data: catch up from its position).
pub(crate) const APPLY: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
if current < tonumber(ARGV[2]) then return {-1, current} end
if current >= seq then return {0, current} end
local p = ARGV[3]
if ARGV[12] == 'F' then
  local u = ARGV[13]
  redis.call('DEL', p .. 'r:' .. u, p .. 'p:' .. u, p .. 's:' .. u, p .. 'd:' .. u, p .. 'e:' .. u)
  redis.call('SET', KEYS[1], ARGV[1])
  return {1, seq}
end
local cap = tonumber(ARGV[4])
local half_life = tonumber(ARGV[5])
local weights = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local trending_max = tonumber(ARGV[10])
local ttl = tonumber(ARGV[11])
local tkey = p .. 'trending'
local mkey = p .. 'trending:meta'
local meta = redis.call('HMGET', mkey, 'ref', 'latest')
local ref = tonumber(meta[1])
local latest = tonumber(meta[2])
local users = {}
local n = 0
for i = 13, #ARGV, 4 do
  local u, item, kind, ts = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  redis.call('ZADD', p .. 'r:' .. u, ts, ARGV[1] .. ':' .. n .. ':' .. kind .. ':' .. item)
  n = n + 1
  if kind == 4 then
    local pkey = p .. 'p:' .. u
    local old = redis.call('HGET', pkey, item)
    local count, last = 0, ts
    if old then
      local sep = string.find(old, ':', 1, true)
      count = tonumber(string.sub(old, 1, sep - 1))
      last = math.max(tonumber(string.sub(old, sep + 1)), ts)
    end
    redis.call('HSET', pkey, item, string.format('%d:%d', count + 1, last))
  end
  redis.call('HDEL', p .. 's:' .. u, item)
  redis.call('HDEL', p .. 'd:' .. u, item)
  users[u] = true
  if ref == nil then ref = ts end
  if latest == nil or ts > latest then latest = ts end
  local exponent = (ts - ref) / half_life
  if exponent > 64 then
    -- Rescale every count to the new reference (rare: once per 64 half-lives).
    local factor = 2 ^ (-exponent)
    local all = redis.call('ZRANGE', tkey, 0, -1, 'WITHSCORES')
    for j = 1, #all, 2 do
      local scaled = tonumber(all[j + 1]) * factor
      if scaled > 1e-6 then
        redis.call('ZADD', tkey, scaled, all[j])
      else
        redis.call('ZREM', tkey, all[j])
      end
    end
    ref = ts
    exponent = 0
  end
  redis.call('ZINCRBY', tkey, weights[kind] * 2 ^ exponent, item)
end
for u, _ in pairs(users) do
  local rkey = p .. 'r:' .. u
  redis.call('ZREMRANGEBYRANK', rkey, 0, -(cap + 1))
  if ttl > 0 then
    redis.call('EXPIRE', rkey, ttl)
    redis.call('EXPIRE', p .. 'p:' .. u, ttl)
    redis.call('EXPIRE', p .. 's:' .. u, ttl)
    redis.call('EXPIRE', p .. 'd:' .. u, ttl)
  end
end
redis.call('HSET', mkey, 'ref', string.format('%d', ref), 'latest', string.format('%d', latest))
if trending_max > 0 and redis.call('ZCARD', tkey) > trending_max + trending_max / 8 then
  redis.call('ZREMRANGEBYRANK', tkey, 0, -(trending_max + 1))
end
redis.call('SET', KEYS[1], ARGV[1])
return {1, seq}
"#;

/// ARGV: prefix, user, time ms, idle TTL s (0: none), impressions kept, times shown from
/// which an item is demoted (0: never), then item ids. Only for users with events (an answer
/// to an unknown user creates no state); beyond the limit plus an eighth, the least recently
/// shown are forgotten down to the limit. Items shown at least the demotion count are also
/// in `d:<user>`, so that an answer reads only those.
pub(crate) const SHOWN: &str = r#"
local p, u = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. 'r:' .. u) == 0 then return 0 end
local skey, dkey = p .. 's:' .. u, p .. 'd:' .. u
local at = tonumber(ARGV[3])
local demote = tonumber(ARGV[6])
for i = 7, #ARGV do
  local old = redis.call('HGET', skey, ARGV[i])
  local times, last = 0, at
  if old then
    local sep = string.find(old, ':', 1, true)
    times = tonumber(string.sub(old, 1, sep - 1))
    last = math.max(tonumber(string.sub(old, sep + 1)), at)
  end
  local value = string.format('%d:%d', times + 1, last)
  redis.call('HSET', skey, ARGV[i], value)
  if demote > 0 and times + 1 >= demote then redis.call('HSET', dkey, ARGV[i], value) end
end
local keep = tonumber(ARGV[5])
if redis.call('HLEN', skey) > keep + keep / 8 then
  local all = redis.call('HGETALL', skey)
  local by_age = {}
  for j = 1, #all, 2 do
    local sep = string.find(all[j + 1], ':', 1, true)
    table.insert(by_age, {tonumber(string.sub(all[j + 1], sep + 1)), all[j]})
  end
  table.sort(by_age, function(a, b) return a[1] < b[1] end)
  for j = 1, #by_age - keep do
    redis.call('HDEL', skey, by_age[j][2])
    redis.call('HDEL', dkey, by_age[j][2])
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', skey, ttl)
  redis.call('EXPIRE', dkey, ttl)
end
return 1
"#;

/// ARGV: prefix, now ms, how long ids are remembered (ms), then pairs of user and event id.
/// Returns 1 per new id (claimed now), 0 per id claimed before within the time; a pair
/// repeated within the call is new only the first time.
pub(crate) const CLAIM: &str = r#"
local p, now, keep = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local touched = {}
for i = 4, #ARGV, 2 do
  local key = p .. 'e:' .. ARGV[i]
  local seen = redis.call('ZSCORE', key, ARGV[i + 1])
  if seen and tonumber(seen) > now - keep then
    out[#out + 1] = 0
  else
    redis.call('ZADD', key, now, ARGV[i + 1])
    out[#out + 1] = 1
    touched[key] = true
  end
end
for key, _ in pairs(touched) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
  redis.call('PEXPIRE', key, keep)
end
return out
"#;
