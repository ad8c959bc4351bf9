-- One debit as a Redis user would write it: check the balance and take the amount in one script
-- (Redis runs a script alone, so nothing slips in between the read and the write).
--   EVALSHA <sha> 1 <wallet key> <amount>
-- Returns the new balance, or -1 when the balance does not cover the amount (nothing changes);
-- an unknown wallet is an error. The wallet is a plain integer key, set by benches/peers/run.sh.
local balance = tonumber(redis.call('GET', KEYS[1]))
if balance == nil then
  return redis.error_reply('user not found')
end
local amount = tonumber(ARGV[1])
if balance < amount then
  return -1
end
return redis.call('DECRBY', KEYS[1], amount)
