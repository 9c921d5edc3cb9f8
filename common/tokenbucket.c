#include "tokenbucket.h"

#include <math.h>

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
    return (int64_t)floor(refilled(bucket, rate, burst, now));
}

int64_t tokenbucket_wait_usec(const tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    double tokens = refilled(bucket, rate, burst, now);
    if (tokens >= 1.0)
        return 0;
    if (rate <= 0 || burst < 1)
        return INT64_MAX;
    return (int64_t)ceil((1.0 - tokens) / rate * 1e6);
}

int64_t tokenbucket_full_usec(const tokenbucket *bucket, double rate, int64_t burst, int64_t now)
{
    double tokens = refilled(bucket, rate, burst, now);
    if (tokens >= (double)burst)
        return 0;
    if (rate <= 0)
        return INT64_MAX;
    return (int64_t)ceil(((double)burst - tokens) / rate * 1e6);
}
