-- wrk script of the ingestion benchmark (bench/run.py, `--only ingest`).
--
--   wrk ... -s bench/ingest.lua URL -- TOKEN TIME KEYS_FILE RUN [BATCH [MAX]]
--
-- POST /v1/events, batch mode: every request carries BATCH (default 100)
-- new CloudEvents, ids "<RUN>-<thread>-<request>-<n>" never repeated, so
-- each accepted event must be counted once by the collector. Subjects
-- rotate over the key ids in KEYS_FILE (one a line); TIME is every event's
-- `time` (RFC 3339). A thread stops once MAX of its requests were answered
-- (default: no limit, wrk's -d alone ends the run): the dev broker keeps
-- only about 5 MB a partition, so an unbounded fast run would have its
-- first events dropped before the collector could count them.

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

local keys, key_count = {}, 0
local headers
local event_time, run, batch
local sent = 0
local answered = 0
local max_answers
local index = 0

function init(args)
   local token, file = args[1], args[3]
   event_time, run, batch = args[2], args[4], tonumber(args[5] or "100")
   max_answers = tonumber(args[6] or "")
   if not token or not event_time or not file or not run then
      error("bench/ingest.lua: arguments TOKEN TIME KEYS_FILE RUN [BATCH]")
   end
   for line in io.lines(file) do
      if line ~= "" then
         key_count = key_count + 1
         keys[key_count] = line
      end
   end
   if key_count == 0 then
      error("bench/ingest.lua: no key ids in " .. file)
   end
   headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/cloudevents-batch+json",
   }
   index = tonumber(thread_index) or 0
end

local format = string.format
local template = '{"specversion":"1.0","id":"%s-%d-%d-%d","source":"bench-ingest",' ..
   '"type":"api.request","subject":"%s","time":"%s","data":{"method":"GET",' ..
   '"endpoint":"/items/{id}","status":200,"units":1,"bytes":512}}'

function request()
   sent = sent + 1
   local events = {}
   for n = 1, batch do
      local key = keys[(sent * batch + n) % key_count + 1]
      events[n] = format(template, run, index, sent, n, key, event_time)
   end
   local body = "[" .. table.concat(events, ",") .. "]"
   return wrk.format("POST", "/v1/events", headers, body)
end

function response()
   answered = answered + 1
   if max_answers and answered >= max_answers then
      wrk.thread:stop()
   end
end
