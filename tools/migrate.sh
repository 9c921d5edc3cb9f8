#!/usr/bin/env bash
# Applies pending migrations/NNN_*.sql to $TALLY_DATABASE_URL, in order, each
# once, each in its own transaction together with its row in
# schema_migrations; concurrent runs wait for each other on an advisory lock.
# A thin wrapper: the work is tally-migrate's (tools/migrate/migrate.c, built
# by `make`), found in build/bin or else on PATH (the container image).
#   usage: tools/migrate.sh [migrations-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-"$root/migrations"}
if [ -z "${TALLY_DATABASE_URL:-}" ]; then
  if [ -f .tally/env ]; then . ./.tally/env; fi
fi
: "${TALLY_DATABASE_URL:?TALLY_DATABASE_URL is required (a libpq connection string); run 'make stack-up' and source .tally/env}"
export TALLY_DATABASE_URL

program="$root/build/bin/tally-migrate"
if [ ! -x "$program" ]; then
  program=$(command -v tally-migrate) || {
    echo "tools/migrate.sh: tally-migrate not found: run 'make' first" >&2; exit 1; }
fi
exec "$program" --dir "$dir"
