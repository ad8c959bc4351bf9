-- One debit as a PostgreSQL user would write it: a conditional UPDATE that takes the amount only
-- if the balance covers it, committed on its own (synchronous_commit = on).
--   pgbench -M prepared -D users=N -D amount=A -f benches/peers/debit.sql
-- A uniform random user from lg-0 to lg-(N-1); N = 1 is the one hot user lg-0.
\set user random(0, :users - 1)
UPDATE wallets SET balance = balance - :amount WHERE user_id = 'lg-' || :user AND balance >= :amount;
