-- wrk script of the API benchmark (bench/run.py, `--only api`).
--
--   wrk ... -s bench/api.lua URL -- authorize KEYS_FILE
--   wrk ... -s bench/api.lua URL -- quota IDS_FILE ADMIN_TOKEN
--
-- authorize: GET /v1/authorize, rotating x-api-key over the secrets in
--   KEYS_FILE (one a line), with X-Original-Method and X-Original-URI as
--   nginx auth_request sends them. The same script drives the nginx
--   yardstick, which keys its limit_req zone on $http_x_api_key.
-- quota: GET /v1/keys/{id}/quota with the admin bearer token, rotating over
--   the key ids in IDS_FILE.
--
-- Every request is formatted once, in init(); request() only picks the next
-- one. Each wrk thread starts at a different offset of the list.

local threads = 0

function setup(thread)
   thread:set("thread_index", threads)
   threads = threads + 1
end

local requests = {}
local count = 0
local next_index = 1

function init(args)
   local mode, file, token = args[1], args[2], args[3]
   if mode ~= "authorize" and mode ~= "quota" then
      error("bench/api.lua: first argument must be authorize or quota, got " .. tostring(mode))
   end
   for line in io.lines(file) do
      if line ~= "" then
         count = count + 1
         if mode == "authorize" then
            requests[count] = wrk.format("GET", "/v1/authorize", {
               ["x-api-key"] = line,
               ["X-Original-Method"] = "GET",
               ["X-Original-URI"] = "/v1/widgets/" .. count .. "?fields=name,price",
            })
         else
            requests[count] = wrk.format("GET", "/v1/keys/" .. line .. "/quota", {
               ["Authorization"] = "Bearer " .. token,
            })
         end
      end
   end
   if count == 0 then
      error("bench/api.lua: no lines in " .. file)
   end
   -- thread_index is set by setup() in the main state; 0, 1, ...
   local index = tonumber(thread_index) or 0
   next_index = (index * 7919) % count + 1
end

function request()
   local r = requests[next_index]
   next_index = next_index + 1
   if next_index > count then
      next_index = 1
   end
   return r
end
