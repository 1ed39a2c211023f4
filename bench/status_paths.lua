-- wrk script: random_paths.lua (same paths file, same mix) plus a count of
-- the responses by status class, for runs that must prove "no 5xx" rather
-- than only report wrk's "Non-2xx or 3xx" total. Prints one line:
--   RESULT rps=.. p50_ms=.. p99_ms=.. errors=.. requests=.. s2xx=.. s3xx=.. s4xx=..
--          s5xx=.. s429=.. s503=.. connect=.. read=.. write=.. timeout=..
-- Used by bench/hostile.sh. Defining response() makes wrk parse every
-- response into Lua, so runs compared with each other must all use it.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "random_paths.lua")

-- Per-thread counters: globals, so done() can read them with thread:get().
s2xx, s3xx, s4xx, s5xx, s429, s503 = 0, 0, 0, 0, 0, 0

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function response(status, headers, body)
  if status < 300 then s2xx = s2xx + 1
  elseif status < 400 then s3xx = s3xx + 1
  elseif status < 500 then
    s4xx = s4xx + 1
    if status == 429 then s429 = s429 + 1 end
  else
    s5xx = s5xx + 1
    if status == 503 then s503 = s503 + 1 end
  end
end

function done(summary, latency, requests)
  local c = { s2xx = 0, s3xx = 0, s4xx = 0, s5xx = 0, s429 = 0, s503 = 0 }
  for _, t in ipairs(threads) do
    for k in pairs(c) do c[k] = c[k] + t:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d requests=%d s2xx=%d s3xx=%d s4xx=%d s5xx=%d "
      .. "s429=%d s503=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status + e.connect + e.read + e.write + e.timeout, summary.requests,
    c.s2xx, c.s3xx, c.s4xx, c.s5xx, c.s429, c.s503, e.connect, e.read, e.write, e.timeout))
end
