-- Tally schema, version 2: when a plan's quota was last set.
--
-- A quota's offset applies in its first period: the one containing the time
-- the quota (limit, period or offset) was set, which is not the plan's
-- creation when a quota is added or changed later by PATCH. Existing plans
-- keep what they had: their quota counts as set when they were created.
ALTER TABLE plans ADD COLUMN quota_set_at timestamptz;
UPDATE plans SET quota_set_at = created_at;
ALTER TABLE plans ALTER COLUMN quota_set_at SET DEFAULT now(),
                  ALTER COLUMN quota_set_at SET NOT NULL;
