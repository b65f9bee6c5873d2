-- fill.lua: every request is a URL never asked before, <the URL's path>?f=<run>-<n>, to fill a cache with
-- distinct objects as fast as wrk can (the shared-rss scenario, benchmarks/shared_rss.py).
--
-- <run> comes from the script's argument (wrk ... -s fill.lua URL -- RUN), so the URLs of one wrk run are new
-- to the next as well; <n> counts this thread's requests (run with -t1: one counter, no repeats). No response()
-- callback: wrk hands no headers to Lua, which keeps the client cheap.

local run = "0"
local n = 0

function init(args)
   run = args[1] or "0"
end

function request()
   n = n + 1
   return wrk.format("GET", wrk.path .. "?f=" .. run .. "-" .. n)
end
