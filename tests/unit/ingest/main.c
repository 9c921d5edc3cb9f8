/* unit-ingest: the unit tests of services/ingest/. */
#include "run.h"
#include "suites.h"

int main(void)
{
    Suite *const suites[] = {
        ingestbody_suite(),
    };
    return unit_run(suites, sizeof suites / sizeof suites[0]);
}
