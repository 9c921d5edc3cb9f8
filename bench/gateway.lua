-- wrk script of the gateway benchmark (bench/gateway.py, `--only gateway`).
--
--   wrk ... -s bench/gateway.lua URL -- KEYS_FILE [DELAY_MS]
--
-- GET URL's path, rotating x-api-key over the secrets in KEYS_FILE (one a
-- line); each wrk thread starts at a different offset. DELAY_MS > 0 makes
-- each connection wait that long before each request: connections / delay
-- is then the most requests a second (the freshness run's steady rate).

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

local requests = {}
local count = 0
local next_index = 1
local delay_ms = 0

function init(args)
   local file = args[1]
   delay_ms = tonumber(args[2] or "0")
   for line in io.lines(file) do
      if line ~= "" then
         count = count + 1
         requests[count] = wrk.format("GET", wrk.path, {["x-api-key"] = line})
      end
   end
   if count == 0 then
      error("bench/gateway.lua: no keys in " .. tostring(file))
   end
   next_index = (thread_index * 7919) % count + 1
   -- Defined only when asked for: wrk looks for delay() after init, and a
   -- delay of 0 would still cost a timer per request.
   if delay_ms > 0 then
      delay = function()
         return delay_ms
      end
   end
end

function request()
   local r = requests[next_index]
   next_index = next_index % count + 1
   return r
end
