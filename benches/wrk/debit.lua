-- wrk script: POST /v1/users/<prefix>-<n>/debit {"amount":1} with a unique Idempotency-Key.
-- Create and fund the users first:  creditd loadgen --setup-only --users 10000
-- Then:  wrk -t2 -c64 -d10s -s benches/wrk/debit.lua http://127.0.0.1:8080
-- Environment: USERS (10000), USER_PREFIX (lg), KEY (the development service key).
local users = tonumber(os.getenv("USERS") or "10000")
local prefix = os.getenv("USER_PREFIX") or "lg"
local key = os.getenv("KEY") or "dev-service-secret-change-me"
local thread_count = 0

function setup(thread)
  thread:set("thread_id", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  sent = 0
  run = tostring(os.time())
  math.randomseed(os.time() + thread_id)
end

function request()
  sent = sent + 1
  local user = math.random(0, users - 1)
  local headers = {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "wrk-" .. run .. "-" .. thread_id .. "-" .. sent,
  }
  return wrk.format("POST", "/v1/users/" .. prefix .. "-" .. user .. "/debit", headers, '{"amount":1}')
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. body .. "\n")
  end
end
