/* One Check suite per module of services/reporter/; main.c runs them all. */
#ifndef TALLY_TESTS_UNIT_REPORTER_SUITES_H
#define TALLY_TESTS_UNIT_REPORTER_SUITES_H

#include <check.h>

Suite *stripe_suite(void);
Suite *hookwire_suite(void);

#endif
