#include "tokenbucket.h"

#include <math.h>

/* A non-negative count or duration as int64: floor or ceil already taken,
 * NaN and anything from 2^63 up (a rate of 1e-300, a burst near INT64_MAX)
 * clamped to INT64_MAX, below 0 to 0. A plain cast of those is undefined
 * behaviour. 0x1p63 is exactly 2^63; every double below it fits. */
static int64_t clamp_to_int64(double value)
{
    if (!(value < 0x1p63))
        return INT64_MAX;
    if (value <= 0)
        return 0;
    return (int64_t)value;
}

static double refilled(const tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    double tokens = bucket->tokens;
    if (now > bucket->updated_at && rate > 0)
        tokens += rate * (double)(now - bucket->updated_at) / 1e6;
    /* A plan change may lower the burst: the bucket never holds more. */
    if (tokens > (double)burst)
        tokens = (double)burst;
    if (tokens < 0)
        tokens = 0;
    return tokens;
}

void tokenbucket_init(tokenbucket *bucket, int64_t burst, int64_t now)
{
    bucket->tokens = burst > 0 ? (double)burst : 0;
    bucket->updated_at = now;
}

bool tokenbucket_take(tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    double tokens = refilled(bucket, rate, burst, now);
    if (now > bucket->updated_at)
        bucket->updated_at = now;
    bool allowed = tokens >= 1.0;
    bucket->tokens = allowed ? tokens - 1.0 : tokens;
    return allowed;
}

int64_t tokenbucket_available(const tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    return clamp_to_int64(floor(refilled(bucket, rate, burst, now)));
}

int64_t tokenbucket_wait_usec(const tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    double tokens = refilled(bucket, rate, burst, now);
    if (tokens >= 1.0)
        return 0;
    if (rate <= 0 || burst < 1)
        return INT64_MAX;
    return clamp_to_int64(ceil((1.0 - tokens) / rate * 1e6));
}

int64_t tokenbucket_full_usec(const tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    double tokens = refilled(bucket, rate, burst, now);
    if (tokens >= (double)burst)
        return 0;
    if (rate <= 0)
        return INT64_MAX;
    return clamp_to_int64(ceil(((double)burst - tokens) / rate * 1e6));
}
