/* Runs every unit suite. Exit status is non-zero when any test fails, so
 * `make test` stops on a failure. Check forks each test by default, so a
 * crash or a setenv() in one test cannot leak into another. */
#include <stdlib.h>

#include "suites.h"

int main(void)
{
    SRunner *runner = srunner_create(timeutil_suite());
    srunner_add_suite(runner, period_suite());
    srunner_add_suite(runner, event_suite());
    srunner_add_suite(runner, utf8_suite());
    srunner_add_suite(runner, config_suite());
    srunner_add_suite(runner, api_route_suite());
    srunner_add_suite(runner, api_tokenbucket_suite());
    srunner_add_suite(runner, api_model_suite());
    srunner_add_suite(runner, api_text_suite());
    srunner_add_suite(runner, stripe_suite());
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
