-- wrk script: POST one real image as multipart/form-data (field "file") on every request.
-- Usage: wrk -t1 -c16 -d5s --latency -s bench/wrk_multipart.lua URL -- /path/to/image
-- The body is built once per thread in init(); done() prints one JSON line for bench/http.py.

local boundary = "cbmirbench0a6f3d9e71"
local req

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*all")
  f:close()
  local body = "--" .. boundary .. "\r\n"
    .. 'Content-Disposition: form-data; name="file"; filename="query.jpeg"\r\n'
    .. "Content-Type: application/octet-stream\r\n\r\n"
    .. data .. "\r\n--" .. boundary .. "--\r\n"
  local headers = {}
  headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
  -- wrk.path carries the URL's query string (k, scope).
  req = wrk.format("POST", wrk.path, headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p95_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, "errors_connect": %d, '
      .. '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
