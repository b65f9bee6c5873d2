-- real.lua: browser-like request heads, as real clients send them, for the realistic scenarios.
--
-- A pool of POOL heads is made once per wrk thread in init(): each picks a user agent, an Accept, an
-- Accept-Language, an Accept-Encoding, a cookie of its own (a session id and a consent string) and a Referer,
-- ~600 bytes in all, and every request adds a unique X-Request-Id (a counter), so no two heads are the same
-- bytes: a head memo can't answer them, and a cache must key on the URL alone, as it should.
--
--   wrk -s real.lua URL                 -- "real-hit": OBJECTS cached objects /bytes/1024?o=K, K in turn
--   wrk -s real.lua URL -- zipf [SEED]  -- "real-zipf": /bytes/1024?i=K, K drawn from Zipf(1.0) over N URLs
--
-- With REAL_COUNT_HITS=1 in wrk's environment it counts hits from Cache-Status / X-Cache-Status (zipfhits.lua, as zipf.lua)
-- and prints "HITS h TOTAL r"; without, it defines no response() (wrk then hands no header to Lua, which keeps
-- the client fast). The variable, not the "zipf" argument, decides: response() must exist when the script is
-- loaded, before init() sees the arguments, and done() runs in wrk's main Lua state, where init() never ran.
-- Everything is seeded: every target and every round sees the same heads and URLs. A SEED after "zipf" replaces
-- the URL generator's seed (the heads stay the same): run.py gives each round of real-zipf its own, the same for
-- every target, so a measured run never replays the URLs of the warm-up or of the round before.

local POOL = 300
local OBJECTS = 8
local N = 100000
local S = 1.0
local SEED = 20261206

local AGENTS = {
   "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
   "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15",
   "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
   "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1",
   "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
   "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67",
   "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
   "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
}
local ACCEPTS = {
   "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
   "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8",
   "*/*",
   "application/json, text/plain, */*",
}
local LANGUAGES = {
   "en-US,en;q=0.9", "en-GB,en;q=0.9", "de-DE,de;q=0.9,en;q=0.8", "fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7",
   "es-ES,es;q=0.9", "ja-JP,ja;q=0.9,en;q=0.8", "pt-BR,pt;q=0.9,en;q=0.8", "nl-NL,nl;q=0.9,en;q=0.8",
}
local ENCODINGS = { "gzip, deflate, br, zstd", "gzip, deflate, br", "gzip, deflate" }
local REFERERS = {
   "https://www.example.com/", "https://www.example.com/articles/2026/12/a-long-article-title?utm_source=news",
   "https://shop.example.com/category/shoes?page=2&sort=price", "https://www.search.example/search?q=edge+cache",
}

local shared = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "zipfhits.lua")

local heads = {}
local cdf
local zipf = false
local counter = 0

local function hex(n)
   local out = {}
   for i = 1, n do out[i] = string.format("%x", math.random(0, 15)) end
   return table.concat(out)
end

local function pick(list)
   return list[math.random(1, #list)]
end

function init(args)
   zipf = args[1] == "zipf"
   math.randomseed(SEED)
   for p = 1, POOL do
      heads[p] = "User-Agent: " .. pick(AGENTS) .. "\r\n"
         .. "Accept: " .. pick(ACCEPTS) .. "\r\n"
         .. "Accept-Language: " .. pick(LANGUAGES) .. "\r\n"
         .. "Accept-Encoding: " .. pick(ENCODINGS) .. "\r\n"
         .. "Cookie: session=" .. hex(32) .. "; consent=" .. hex(16) .. "; _ga=GA1.2." .. math.random(100000000, 999999999)
         .. "." .. math.random(1600000000, 1700000000) .. "\r\n"
         .. "Referer: " .. pick(REFERERS) .. "\r\n"
   end
   if zipf then
      if tonumber(args[2]) then math.randomseed(tonumber(args[2])) end
      cdf = shared.cdf(N, S)
   end
   hits = 0
   responses = 0
end

function request()
   counter = counter + 1
   local path
   if zipf then
      path = "/bytes/1024?i=" .. shared.draw(cdf)
   else
      path = "/bytes/1024?o=" .. (counter % OBJECTS)
   end
   return "GET " .. path .. " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port .. "\r\n"
      .. heads[counter % POOL + 1] .. "X-Request-Id: " .. counter .. "-" .. SEED .. "\r\n\r\n"
end

-- Only with REAL_COUNT_HITS=1 (real-zipf): defining response() at all makes wrk hand every header to Lua.
if os.getenv("REAL_COUNT_HITS") == "1" then
   shared.count_hits()
end
