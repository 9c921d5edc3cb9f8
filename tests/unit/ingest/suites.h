/* One Check suite per module of services/ingest/; main.c runs them all. */
#ifndef TALLY_TESTS_UNIT_INGEST_SUITES_H
#define TALLY_TESTS_UNIT_INGEST_SUITES_H

#include <check.h>

Suite *ingestbody_suite(void);

#endif
