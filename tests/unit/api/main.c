/* unit-api: the unit tests of services/api/. */
#include "run.h"
#include "suites.h"

int main(void)
{
    Suite *const suites[] = {
        api_route_suite(),
        api_model_suite(),
        api_text_suite(),
        api_sigv4_suite(),
        api_authorize_suite(),
        alert_model_suite(),
        api_dashlink_suite(),
        api_leases_suite(),
    };
    return unit_run(suites, sizeof suites / sizeof suites[0]);
}
