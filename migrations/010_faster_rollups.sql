-- Tally schema, version 10: a collector batch's rollup statement made
-- cheaper (issue #16: it sets how fresh quota answers are under load).
--
-- 1. Room on the rollup tables' pages for in-place (HOT) updates.
--
-- Every batch of the collector adds to one usage_hourly row and three
-- usage_counters rows per key it saw. At the default fillfactor (100) a
-- page has no room for the new version of a row, so each of those updates
-- goes to another page and adds an entry to every index of the table (two
-- for usage_hourly). With 30 % of each page kept free the new version stays
-- on its page and no index changes (a heap-only tuple); pruning reclaims the
-- old versions as the page is read. This applies to pages written from now
-- on; existing ones follow as they are rewritten (VACUUM FULL rewrites all).
ALTER TABLE usage_hourly SET (fillfactor = 70);
ALTER TABLE usage_counters SET (fillfactor = 70);

-- 2. The threshold alerts' check (migration 006's tally_raise_quota_alerts,
-- same rules and answers) with less work per counter. Under 20,000
-- events/s on 1,000 keys (bench/run.py --only freshness) it was about 40 of
-- a batch's 190 ms: keys were looked up for every counter before the period
-- filter, the key's adjustment in a scalar subquery per counter
-- (tally_key_limit_in_force), and the limit in force computed again for
-- every threshold compared. tally_adjusted_limit is the adjustment rule
-- alone (plan limit + adjustment, never below 0, saturating at the bigint
-- maximum, as keycache_adjusted_limit() in tally-api);
-- the alert statement joins quota_adjustments and calls it, and
-- tally_key_limit_in_force, which nothing calls any more, is dropped.
CREATE FUNCTION tally_adjusted_limit(plan_limit bigint, adjustment bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN plan_limit IS NULL THEN 9223372036854775807 -- no limit (as 007's)
            WHEN adjustment IS NULL OR adjustment = 0 THEN greatest(plan_limit, 0)
            ELSE greatest(least(plan_limit::numeric + adjustment, 9223372036854775807),
                          0)::bigint END;

CREATE OR REPLACE FUNCTION tally_raise_quota_alerts(key_ids text[], periods text[],
                                         period_starts timestamptz[], old_units bigint[],
                                         new_units bigint[]) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    -- The counters that moved, of a period kind some plan counts (a hashed
    -- set of at most three kinds). MATERIALIZED: the planner, which cannot
    -- see the arrays' length, otherwise looked keys up for every counter
    -- before this filter (3,000 look-ups instead of 1,000 here).
    WITH moved AS MATERIALIZED (
        SELECT * FROM unnest(key_ids, periods, period_starts, old_units, new_units)
                          AS c (key_id, period, period_start, old_units, new_units)
         WHERE c.new_units > c.old_units
           AND c.period IN (SELECT quota_period FROM plans WHERE quota_period IS NOT NULL)),
    -- Each counter's key by its primary key, then its plan, when of the
    -- counter's period kind, and the key's adjustment; LIMIT 1 (one key per
    -- id anyway) keeps the planner from flattening this into a scan of every
    -- key of a plan per counter. MATERIALIZED: the limit in force is then
    -- computed once per counter, not once per threshold compared.
    limited AS MATERIALIZED (
        SELECT c.*, l.*
          FROM moved AS c
          CROSS JOIN LATERAL (
              SELECT k.customer_id, coalesce(k.alert_thresholds, p.alert_thresholds),
                     p.id, p.quota_enforcement,
                     tally_adjusted_limit(
                         tally_quota_limit_in_force(p.quota_limit, p.quota_offset,
                                                    p.quota_period, p.quota_set_at,
                                                    c.period_start),
                         a.adjustment)
                FROM api_keys k JOIN plans p ON p.id = k.plan_id
                LEFT JOIN quota_adjustments a
                       ON a.key_id = k.id AND a.period = c.period
                      AND a.period_start = c.period_start
               WHERE k.id = c.key_id AND p.quota_period = c.period
               LIMIT 1) AS l (customer_id, thresholds, plan_id, enforcement, quota_limit)),
    raised AS (
        INSERT INTO quota_alerts (type, key_id, customer_id, plan_id, period, period_start,
                                  period_end, threshold, quota_limit, used, enforcement)
        SELECT CASE WHEN t.threshold = 100 THEN 'quota.exhausted'
                    ELSE 'quota.threshold_reached' END,
               c.key_id, c.customer_id, c.plan_id, c.period, c.period_start,
               tally_period_end(c.period, c.period_start), t.threshold, c.quota_limit,
               c.new_units, c.enforcement
          FROM limited AS c
          CROSS JOIN LATERAL unnest(c.thresholds) AS t (threshold)
         WHERE c.old_units < tally_threshold_units(c.quota_limit, t.threshold)
           AND tally_threshold_units(c.quota_limit, t.threshold) <= c.new_units
         -- (key, period, start, threshold) order: two writers take the
         -- unique index's locks in one order
         ORDER BY c.key_id, c.period, c.period_start, t.threshold
        ON CONFLICT DO NOTHING
        RETURNING 1)
    SELECT count(*) FROM raised
$$;

DROP FUNCTION tally_key_limit_in_force(text, bigint, text, timestamptz);
