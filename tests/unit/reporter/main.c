/* unit-reporter: the unit tests of services/reporter/. */
#include "run.h"
#include "suites.h"

int main(void)
{
    Suite *const suites[] = {
        stripe_suite(),
        hookwire_suite(),
    };
    return unit_run(suites, sizeof suites / sizeof suites[0]);
}
