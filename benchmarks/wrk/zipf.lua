-- zipf.lua: requests one of N URLs /bytes/1024?i=K, K drawn from Zipf(s) over 1..N, and counts cache hits.
--
-- The draw and the hit counting are zipfhits.lua's (shared with real.lua). The generator is seeded with a fixed
-- value so every target and every round sees the same URL sequence; a seed given as the script's argument
-- (wrk ... -s zipf.lua URL -- SEED) replaces it: zipf-workers gives each round its own, the same for every
-- target, so a measured run never replays the URLs its warm-up asked for.
-- Counting hits makes wrk hand every header to Lua, which costs the client some throughput: the same for every
-- target, so the comparison stays fair, but zipf's req/s is not comparable to hit-1k's.

local shared = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "zipfhits.lua")

local N = 100000
local S = 1.0
local SEED = 20240101

local cdf

shared.count_hits()

function init(args)
   cdf = shared.cdf(N, S)
   math.randomseed(tonumber(args[1]) or SEED)
   hits = 0
   responses = 0
end

function request()
   return wrk.format("GET", "/bytes/1024?i=" .. shared.draw(cdf))
end
