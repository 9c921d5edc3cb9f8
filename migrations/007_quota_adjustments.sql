-- Tally schema, version 7: per-key quota adjustments, and the AWS facade's
-- apiStages.
--
-- AWS's UpdateUsage ("replace /remaining") grants or takes away quota for
-- one key in the current period without touching its plan: the key's limit
-- in that period is the plan's (less its offset in the first period) plus
-- this adjustment, never below 0. One row per key, period kind and period
-- start; a row for an earlier period is history and changes nothing now.
-- tally-api's key cache loads the current period's row with the counters,
-- so authorize applies it within a reload, and /v1/keys/{id}/quota and
-- /v1/me/quota answer with it.
CREATE TABLE quota_adjustments (
    key_id       text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    period       text NOT NULL CHECK (period IN ('DAY', 'WEEK', 'MONTH')),
    period_start timestamptz NOT NULL,
    adjustment   bigint NOT NULL
                 CHECK (adjustment BETWEEN -1000000000000000 AND 1000000000000000),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, period, period_start)
);

-- The AWS facade's apiStages of a plan, [{"apiId": ..., "stage": ...}], kept
-- only to be answered back: Tally meters whatever a gateway sends, and the
-- stages' per-method throttle maps are the plan's method_throttles.
ALTER TABLE plans ADD COLUMN aws_api_stages jsonb NOT NULL DEFAULT '[]'::jsonb;

-- The key's limit in force with its adjustment (migration 006 defined it as
-- the plan's alone), so that threshold alerts are raised against the limit
-- authorize enforces: plan limit + adjustment, never below 0, saturating
-- at the bigint maximum as keycache_adjusted_limit() does.
CREATE OR REPLACE FUNCTION tally_key_limit_in_force(key_id text, plan_limit bigint, period text,
                                                    start timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN greatest(least(plan_limit::numeric
                      + coalesce((SELECT a.adjustment FROM quota_adjustments a
                                   WHERE a.key_id = tally_key_limit_in_force.key_id
                                     AND a.period = tally_key_limit_in_force.period
                                     AND a.period_start = start), 0),
                      9223372036854775807), 0)::bigint;
