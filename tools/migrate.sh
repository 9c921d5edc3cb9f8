#!/usr/bin/env bash
# Applies pending migrations/NNN_*.sql to $TALLY_DATABASE_URL, in order, each
# once, each in its own transaction together with its row in
# schema_migrations. A session-wide advisory lock makes two migrators run one
# after the other: the second finds the work done and applies nothing.
#   usage: tools/migrate.sh [migrations-dir]
set -euo pipefail
dir=${1:-"$(cd "$(dirname "$0")/.." && pwd)/migrations"}
if [ -z "${TALLY_DATABASE_URL:-}" ]; then
  if [ -f .tally/env ]; then . ./.tally/env; fi
fi
: "${TALLY_DATABASE_URL:?TALLY_DATABASE_URL is required (a libpq connection string); run 'make stack-up' and source .tally/env}"

script=$(mktemp)
trap 'rm -f "$script"' EXIT
{
  echo '\set ON_ERROR_STOP on'
  echo 'SET client_min_messages = warning;'
  echo 'SELECT pg_advisory_lock(hashtext($$tally_migrations$$));'
  echo 'CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());'
  for f in "$dir"/[0-9][0-9][0-9]_*.sql; do
    [ -e "$f" ] || continue
    v=$(basename "$f" .sql)
    echo "SELECT NOT EXISTS (SELECT 1 FROM schema_migrations WHERE version = '$v') AS pending \\gset"
    echo '\if :pending'
    echo "\\echo applying $v"
    echo 'BEGIN;'
    echo "\\ir $f"
    echo "INSERT INTO schema_migrations (version) VALUES ('$v');"
    echo 'COMMIT;'
    echo '\endif'
  done
  echo 'SELECT pg_advisory_unlock(hashtext($$tally_migrations$$));'
} > "$script"
psql "$TALLY_DATABASE_URL" -X -q -t -A -o /dev/null -f "$script"
