-- Tally schema, version 4: one window for creating and dropping event_ids
-- partitions.
--
-- Version 1 created partitions from the week of (now - horizon - 7 days) but
-- dropped every week that ended on or before (now - horizon - 1 day): on
-- most days the oldest created week was already expired, so every collector
-- start created it and dropped it again. Both now derive from one cutoff:
-- a week is kept while it ends after (now - horizon - 1 day), so creation
-- starts at the week containing that cutoff. The oldest accepted event
-- (now - horizon) always falls in a kept week.

-- The first day no longer needed: weeks ending on or before it are expired.
CREATE FUNCTION tally_event_partition_cutoff(horizon_days integer)
RETURNS date LANGUAGE sql STABLE
RETURN ((now() AT TIME ZONE 'UTC') - make_interval(days => horizon_days + 1))::date;

CREATE OR REPLACE FUNCTION tally_ensure_event_partitions(horizon_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    week    date := date_trunc('week', tally_event_partition_cutoff(horizon_days))::date;
    last    date := date_trunc('week', (now() AT TIME ZONE 'UTC') + interval '14 days')::date;
    created integer := 0;
    name    text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tally_event_partitions'));
    WHILE week <= last LOOP
        name := 'event_ids_' || to_char(week, 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF event_ids FOR VALUES FROM (%L) TO (%L)',
                           name, week, week + 7);
            created := created + 1;
        END IF;
        week := week + 7;
    END LOOP;
    RETURN created;
END $$;

CREATE OR REPLACE FUNCTION tally_drop_expired_event_partitions(horizon_days integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part    record;
    cutoff  date := tally_event_partition_cutoff(horizon_days);
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tally_event_partitions'));
    FOR part IN
        SELECT c.relname
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'event_ids'::regclass
           AND c.relname ~ '^event_ids_[0-9]{8}$'
    LOOP
        IF to_date(substr(part.relname, 11), 'YYYYMMDD') + 7 <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END $$;
