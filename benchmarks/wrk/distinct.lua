-- distinct.lua: pass-through traffic as it comes to an edge: every request a URL of its own, or one of CYCLE URLs
-- in turn, so no two requests in flight ask for the same URL.
--
--   wrk -s distinct.lua URL -- 0 RUN   -- miss-1k: <URL's path>?n=<RUN>-<k>, k counting this thread's requests
--   wrk -s distinct.lua URL -- CYCLE   -- revalidate: <URL's path>?n=<k mod CYCLE>, each URL asked again CYCLE
--                                         requests later (stored once by the warm-up, then revalidated)
--
-- Why: with one URL for every request, a proxy that makes concurrent requests for one key wait for each other
-- (nginx's proxy_cache_lock) or collapses them onto one origin fetch (edgeproxy, on a stored stale entry) is
-- measured doing that, not passing requests through. Real pass-through traffic (API calls, personalised pages)
-- is many URLs. RUN (run.py gives each round its own) keeps one round's URLs new to the next.
-- The request() callback costs wrk some throughput, the same for every target; these rows run at a tenth of
-- wrk's ceiling. Run with -t1 (run.py does): one counter, no repeats.

wrk.method = "GET"
wrk.headers["User-Agent"] = "edgeproxy-bench (wrk)"

local cycle = 0
local run = "0"
local n = 0

function init(args)
   cycle = tonumber(args[1]) or 0
   run = args[2] or "0"
end

function request()
   n = n + 1
   if cycle > 0 then
      return wrk.format(nil, wrk.path .. "?n=" .. (n % cycle))
   end
   return wrk.format(nil, wrk.path .. "?n=" .. run .. "-" .. n)
end
