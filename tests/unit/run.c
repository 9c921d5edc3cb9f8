/* Check forks each test by default, so a crash or a setenv() in one test
 * cannot leak into another. */
#include "run.h"

#include <stdlib.h>

int unit_run(Suite *const suites[], size_t count)
{
    if (count == 0)
        return EXIT_FAILURE;
    SRunner *runner = srunner_create(suites[0]);
    for (size_t i = 1; i < count; i++)
        srunner_add_suite(runner, suites[i]);
    srunner_run_all(runner, CK_NORMAL);
    int failed = srunner_ntests_failed(runner);
    srunner_free(runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
