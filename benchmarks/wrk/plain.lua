-- plain.lua: one GET of the URL given to wrk, over and over on keep-alive connections.
--
-- Used by every scenario except zipf (see run.py's SCENARIOS table). It defines no request() or
-- response() callback on purpose: with them wrk calls into Lua for every request and hands every response
-- header to Lua, which costs the client about 10% of its throughput (measured against nginx hit-1k) and
-- would make the single wrk thread, not the server under test, the limit on the fast targets.
wrk.method = "GET"
wrk.headers["User-Agent"] = "edgeproxy-bench (wrk)"
