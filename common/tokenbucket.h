/* A token bucket, as AWS API Gateway throttles: `rate` tokens per second
 * flow into a bucket holding at most `burst`; a request takes one token or
 * is throttled. The bucket starts full. Times are usec (timeutil.h). Pure
 * functions on caller-owned state, no locking: the caller serialises. */
#ifndef TALLY_TOKENBUCKET_H
#define TALLY_TOKENBUCKET_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    double tokens;       /* tokens in the bucket at `updated_at` */
    int64_t updated_at;  /* usec */
} tokenbucket;

/* A full bucket of `burst` tokens at time `now`. */
void tokenbucket_init(tokenbucket *bucket, int64_t burst, int64_t now);
/* Refills for the time since the last call, then takes one token if there
 * is one. True when the request may pass. A clock that went backwards adds
 * nothing. A burst of 0 passes nothing. */
bool tokenbucket_take(tokenbucket *bucket, double rate, int64_t burst, int64_t now);
/* Whole tokens in the bucket at `now` (after refilling; does not change it). */
int64_t tokenbucket_available(const tokenbucket *bucket, double rate, int64_t burst, int64_t now);
/* Microseconds from `now` until one token is available (0 when one is);
 * INT64_MAX when none ever will be (rate 0 or burst 0) or the wait does
 * not fit in an int64 (a rate like 1e-300). Every result here is clamped
 * into 0..INT64_MAX, never a cast that overflows. */
int64_t tokenbucket_wait_usec(const tokenbucket *bucket, double rate, int64_t burst, int64_t now);
/* Microseconds from `now` until the bucket is full again (0 when it is);
 * INT64_MAX when it never will be or the wait does not fit. */
int64_t tokenbucket_full_usec(const tokenbucket *bucket, double rate, int64_t burst, int64_t now);

#endif
