/* unit-common: the unit tests of common/. */
#include "run.h"
#include "suites.h"

int main(void)
{
    Suite *const suites[] = {
        timeutil_suite(),
        period_suite(),
        event_suite(),
        utf8_suite(),
        config_suite(),
        tokenbucket_suite(),
        hashindex_suite(),
        digest_suite(),
        eventscan_suite(),
    };
    return unit_run(suites, sizeof suites / sizeof suites[0]);
}
