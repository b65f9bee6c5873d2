-- zipfhits.lua: what zipf.lua and real.lua share, loaded by both with dofile from their own directory (wrk runs
-- from any working directory, so the path comes from the loading script's own: see LOAD below).
--
-- - The Zipf(s) draw over 1..N: the CDF is precomputed once per wrk thread (N = 100,000 doubles, a few ms); each
--   draw is one math.random() and a binary search (17 steps).
-- - Hit counting: response() counts edgeproxy's Cache-Status (RFC 9211: "edgeproxy; hit") or nginx's
--   X-Cache-Status ("HIT"), and done() prints "HITS <hits> TOTAL <responses>", which run.py parses. Defining
--   response() at all makes wrk hand every header to Lua, which costs the client some throughput: only scripts that
--   count call count_hits(), and they must do it when they are loaded, before wrk looks for response().
--
-- LOAD (in a script next to this file):
--   local shared = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "zipfhits.lua")

local M = {}

-- The normalized CDF of Zipf(s) over 1..n.
function M.cdf(n, s)
   local cdf, total = {}, 0.0
   for k = 1, n do
      total = total + 1.0 / (k ^ s)
      cdf[k] = total
   end
   for k = 1, n do cdf[k] = cdf[k] / total end
   return cdf
end

-- One draw from a CDF made by M.cdf: the least k with cdf[k] >= u.
function M.draw(cdf)
   local u = math.random()
   local lo, hi = 1, #cdf
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end

local function is_hit(headers)
   local value = headers["Cache-Status"] or headers["cache-status"]
      or headers["X-Cache-Status"] or headers["x-cache-status"]
   if value == nil then return false end
   value = string.lower(value)
   -- "edgeproxy; hit" or nginx "hit"; a forward looks like "edgeproxy; fwd=miss" and never contains "hit".
   return string.find(value, "; hit", 1, true) ~= nil or value == "hit"
end

-- Define wrk's setup(), response() and done() to count hits; init() must set the globals hits and responses to 0.
function M.count_hits()
   local threads = {}
   function setup(thread)
      table.insert(threads, thread)
   end
   function response(status, headers, body)
      responses = responses + 1
      if is_hit(headers) then hits = hits + 1 end
   end
   -- done() runs in wrk's main Lua state, where init() never ran: the counts are read from each thread's.
   function done(summary, latency, requests)
      local h, r = 0, 0
      for _, thread in ipairs(threads) do
         h = h + thread:get("hits")
         r = r + thread:get("responses")
      end
      io.write(string.format("HITS %d TOTAL %d\n", h, r))
   end
end

return M
