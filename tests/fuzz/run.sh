#!/usr/bin/env bash
# Runs libFuzzer targets built by `make fuzz-build`, each for a time budget.
#   tests/fuzz/run.sh --bin DIR --seconds N --findings DIR [NAME...]
# Each target fuzzes a temporary copy of its seed corpus
# (tests/fuzz/corpus/NAME), which is thrown away afterwards: the committed
# corpus is never written. A crash, sanitizer report, failed property,
# timeout (10 s per input), leak or out-of-memory (2 GiB) is saved under
# FINDINGS/NAME/ and fails the run; each target's full log is kept beside it
# (FINDINGS/NAME.log). Prints one line per target with its executions.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin_dir="" seconds=60 findings="$here/findings"
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin_dir="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --findings) findings="$2"; shift 2 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
  esac
done
[ -n "$bin_dir" ] || { echo "run.sh: --bin DIR is required" >&2; exit 2; }
if [ ${#names[@]} -eq 0 ]; then
  for source in "$here"/*.c; do names+=("$(basename "$source" .c)"); done
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tally-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$findings"

passed=0 failed=0
for name in "${names[@]}"; do
  binary="$bin_dir/fuzz-$name"
  [ -x "$binary" ] || { echo "fuzz $name: no binary $binary (make fuzz-build)" >&2; exit 2; }
  corpus="$work/$name"
  mkdir -p "$corpus" "$findings/$name"
  [ -d "$here/corpus/$name" ] && cp "$here/corpus/$name"/* "$corpus"/ 2>/dev/null || true
  options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
           -artifact_prefix="$findings/$name/")
  [ -f "$here/dict/$name.dict" ] && options+=(-dict="$here/dict/$name.dict")
  log="$findings/$name.log"
  status=0
  UBSAN_OPTIONS="print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}" \
    "$binary" "${options[@]}" "$corpus" >"$log" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  grown="$(find "$corpus" -type f | wc -l)"
  if [ "$status" -eq 0 ]; then
    echo "fuzz $name: ${runs:-?} executions in ${seconds} s, corpus $grown inputs, no findings"
    passed=$((passed + 1))
  else
    echo "fuzz $name: FAILED (exit $status) after ${runs:-?} executions; log $log:" >&2
    grep -E 'ERROR|runtime error|fuzz property failed|Test unit written|SUMMARY' "$log" \
      | head -n 20 >&2 || true
    failed=$((failed + 1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
