/* One Check suite per module of services/api/; main.c runs them all. */
#ifndef TALLY_TESTS_UNIT_API_SUITES_H
#define TALLY_TESTS_UNIT_API_SUITES_H

#include <check.h>

Suite *api_route_suite(void);
Suite *api_model_suite(void);
Suite *api_text_suite(void);
Suite *api_sigv4_suite(void);
Suite *api_authorize_suite(void);
Suite *alert_model_suite(void);
Suite *api_dashlink_suite(void);
Suite *api_leases_suite(void);

#endif
