-- zipf.lua: requests one of N URLs /bytes/1024?i=K, K drawn from Zipf(s) over 1..N, and counts cache hits.
--
-- The CDF is precomputed once per wrk thread in init() (N = 100,000 doubles, a few ms); each request is
-- then one math.random() and a binary search (17 steps). The generator is seeded with a fixed value so
-- every target and every round sees the same URL sequence; a seed given as the script's argument
-- (wrk ... -s zipf.lua URL -- SEED) replaces it: zipf-workers gives each round its own, the same for every
-- target, so a measured run never replays the URLs its warm-up asked for.
--
-- Hits are counted in response() from edgeproxy's Cache-Status (RFC 9211: "edgeproxy; hit") or nginx's
-- X-Cache-Status ("HIT"), and printed by done() as "HITS <hits> TOTAL <responses>", which run.py parses.
-- response() makes wrk hand every header to Lua, which costs the client some throughput: the same for
-- every target, so the comparison stays fair, but zipf's req/s is not comparable to hit-1k's.

local N = 100000
local S = 1.0
local SEED = 20240101

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

local cdf = {}

function init(args)
   local total = 0.0
   for k = 1, N do
      total = total + 1.0 / (k ^ S)
      cdf[k] = total
   end
   for k = 1, N do
      cdf[k] = cdf[k] / total
   end
   math.randomseed(tonumber(args[1]) or SEED)
   hits = 0
   responses = 0
end

local function draw()
   local u = math.random()
   local lo, hi = 1, N
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end

function request()
   return wrk.format("GET", "/bytes/1024?i=" .. draw())
end

local function is_hit(headers)
   local value = headers["Cache-Status"] or headers["cache-status"]
      or headers["X-Cache-Status"] or headers["x-cache-status"]
   if value == nil then return false end
   value = string.lower(value)
   -- "edgeproxy; hit" or nginx "hit"; a forward looks like "edgeproxy; fwd=miss" and never contains "hit".
   return string.find(value, "; hit", 1, true) ~= nil or value == "hit"
end

function response(status, headers, body)
   responses = responses + 1
   if is_hit(headers) then hits = hits + 1 end
end

function done(summary, latency, requests)
   local h, r = 0, 0
   for _, thread in ipairs(threads) do
      h = h + thread:get("hits")
      r = r + thread:get("responses")
   end
   io.write(string.format("HITS %d TOTAL %d\n", h, r))
end
