/* One Check suite per module of common/; main.c runs them all. */
#ifndef TALLY_TESTS_UNIT_COMMON_SUITES_H
#define TALLY_TESTS_UNIT_COMMON_SUITES_H

#include <check.h>

Suite *timeutil_suite(void);
Suite *period_suite(void);
Suite *event_suite(void);
Suite *utf8_suite(void);
Suite *config_suite(void);
Suite *tokenbucket_suite(void);
Suite *hashindex_suite(void);
Suite *digest_suite(void);
Suite *eventscan_suite(void);

#endif
