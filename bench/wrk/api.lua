-- bench/wrk/api.lua - the request of one api-suite load of bench/run.sh, read
-- from the environment so one script serves every target and server:
--   BENCH_METHOD  request method (default GET)
--   BENCH_BODY    JSON request body, sent with Content-Type: application/json
--   BENCH_TOKEN   JWT sent as `Authorization: Bearer <token>`
--   BENCH_CHECK=1 also count the response statuses and print them at the end
--                 as `bench-status STATUS COUNT` lines (run.sh does this for
--                 the warm-up only: a response() callback makes wrk parse
--                 every response in Lua, which would slow the measured run)
-- The request is static: wrk formats it once per thread.

local method = os.getenv("BENCH_METHOD")
local body = os.getenv("BENCH_BODY")
local token = os.getenv("BENCH_TOKEN")

wrk.method = (method and method ~= "") and method or "GET"
if token and token ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. token
end
if body and body ~= "" then
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
end

if os.getenv("BENCH_CHECK") == "1" then
   local threads = {}

   function setup(thread)
      table.insert(threads, thread)
   end

   function init(args)
      statuses = {}
   end

   function response(status, headers, body)
      statuses[status] = (statuses[status] or 0) + 1
   end

   function done(summary, latency, requests)
      local total = {}
      for _, thread in ipairs(threads) do
         for status, n in pairs(thread:get("statuses") or {}) do
            total[status] = (total[status] or 0) + n
         end
      end
      for status, n in pairs(total) do
         io.write(string.format("bench-status %d %d\n", status, n))
      end
   end
end
