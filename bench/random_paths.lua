-- wrk script: GET a random path from the file named by $PATHS_FILE (one per
-- line; a line "path<TAB>bytes=a-b" also sends that Range header). Used by
-- the retrieval benchmarks for every server, so all see the same mix.
local paths = {}
local ranges = {}

function init(args)
  local f = assert(io.open(os.getenv("PATHS_FILE"), "r"))
  for line in f:lines() do
    local path, range = line:match("^([^\t]*)\t(.*)$")
    paths[#paths + 1] = path or line
    ranges[#paths] = range
  end
  f:close()
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

function request()
  local i = math.random(#paths)
  if ranges[i] then
    return wrk.format("GET", paths[i], { Range = ranges[i] })
  end
  return wrk.format("GET", paths[i])
end

function done(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.2f p99_ms=%.2f errors=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
