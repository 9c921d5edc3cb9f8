/* The runner every unit-test binary (unit-common, unit-api, unit-collector,
 * unit-reporter) shares: each folder's main.c hands it that folder's suites. */
#ifndef TALLY_TESTS_UNIT_RUN_H
#define TALLY_TESTS_UNIT_RUN_H

#include <check.h>
#include <stddef.h>

/* Runs the `count` suites; the exit status for main(): non-zero when any
 * test fails, so `make test` stops on a failure. */
int unit_run(Suite *const suites[], size_t count);

#endif
