/* One Check suite per module of services/collector/; main.c runs them all. */
#ifndef TALLY_TESTS_UNIT_COLLECTOR_SUITES_H
#define TALLY_TESTS_UNIT_COLLECTOR_SUITES_H

#include <check.h>

Suite *keyplans_suite(void);
Suite *offsets_suite(void);
Suite *rollup_suite(void);
Suite *status_suite(void);
Suite *writer_suite(void);

#endif
