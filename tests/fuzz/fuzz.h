/* Shared by the libFuzzer targets in tests/fuzz (built by `make fuzz`):
 * the entry point's prototype and a property check that stops the run.
 * A failed check aborts, so libFuzzer saves the input as a crash artifact
 * in the findings folder, exactly as it does for a sanitizer report. */
#ifndef TALLY_FUZZ_H
#define TALLY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* 2026-11-23T12:00:00Z, the clock of the README's example event. */
#define FUZZ_NOW_USEC INT64_C(1795435200000000)

#endif
