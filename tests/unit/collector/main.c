/* unit-collector: the unit tests of services/collector/. */
#include "run.h"
#include "suites.h"

int main(void)
{
    Suite *const suites[] = {
        keyplans_suite(),
        offsets_suite(),
        rollup_suite(),
        status_suite(),
        writer_suite(),
    };
    return unit_run(suites, sizeof suites / sizeof suites[0]);
}
