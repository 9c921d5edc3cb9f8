/* tally-api's input model: plans and keys as they arrive in JSON bodies
 * (camelCase, docs/CONTRACT.md §4.3; AWS model: docs/AWS-USAGE-PLANS.md §2), usage query
 * parameters and list cursors, each validated field by field. Pure: no I/O,
 * no logging; a refusal fills an apimodel_error whose code and message go
 * straight into the 400 answer. */
#ifndef TALLY_APIMODEL_H
#define TALLY_APIMODEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "period.h"

#define APIMODEL_NAME_MAX 256         /* plan and key names (plans.name CHECK) */
#define APIMODEL_DESCRIPTION_MAX 1024
#define APIMODEL_CUSTOMER_ID_MAX 256  /* customerId, stripeCustomerId */
#define APIMODEL_METER_MAX 100        /* plans.stripe_meter_event_name CHECK */
#define APIMODEL_SUBSCRIPTION_ITEM_MAX 100 /* stripe_subscription_item_id CHECK (plans, keys) */
#define APIMODEL_VALUE_MIN 20         /* a supplied key secret */
#define APIMODEL_VALUE_MAX 256
#define APIMODEL_ID_MAX 128
#define APIMODEL_METHOD_THROTTLES_MAX 100
#define APIMODEL_METHOD_PATH_MAX 256  /* "/path/METHOD" */
#define APIMODEL_BURST_MAX 2147483647 /* plans.throttle_burst_limit is an integer */
#define APIMODEL_RATE_MAX 1e9
#define APIMODEL_QUOTA_MAX INT64_C(1000000000000000) /* 10^15 */
#define APIMODEL_LIST_LIMIT_DEFAULT 100
#define APIMODEL_LIST_LIMIT_MAX 500
#define APIMODEL_USAGE_POINTS_MAX 1000
#define APIMODEL_CURSOR_MAX 180       /* base64url of an id, with room */
#define APIMODEL_THRESHOLDS_MAX 16    /* alert thresholds of a plan or key (migration 006) */
#define APIMODEL_PERCENT_MAX 100000   /* a threshold or a quota ceiling, in percent */

typedef struct {
    const char *code;   /* static: "invalid_field", "unknown_field", "missing_field", ... */
    char message[300];
} apimodel_error;

/* Fills err (code static, message formatted) and returns false, so that a
 * check can end with `return apimodel_fail(err, ...)`. */
bool apimodel_fail(apimodel_error *err, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies a JSON string member into `out` after checking its length (bytes)
 * and characters: no control characters, except tab and line breaks when
 * `multiline`. */
bool apimodel_take_string(const json_t *value, const char *field, size_t min, size_t max,
                          bool multiline, char *out, apimodel_error *err);
/* A description: text of 0..APIMODEL_DESCRIPTION_MAX bytes over any number
 * of lines; null empties it. `out` holds APIMODEL_DESCRIPTION_MAX + 1. */
bool apimodel_apply_description(const json_t *value, char *out, apimodel_error *err);

typedef struct {
    double rate_limit;    /* requests per second, >= 0 */
    int64_t burst_limit;  /* 0..APIMODEL_BURST_MAX */
} apimodel_throttle;

/* Alert thresholds, percentages of the quota: ascending, distinct,
 * 1..APIMODEL_PERCENT_MAX each; none turns alerts off. */
typedef struct {
    int count;
    int32_t percent[APIMODEL_THRESHOLDS_MAX];
} apimodel_thresholds;

typedef struct {
    char name[APIMODEL_NAME_MAX + 1];
    char description[APIMODEL_DESCRIPTION_MAX + 1];
    bool has_quota;
    int64_t quota_limit, quota_offset;
    period_kind quota_period;
    /* quota.enforcement "soft": authorize allows past the limit, up to the
     * optional ceiling (quota.ceilingPercent, 100..APIMODEL_PERCENT_MAX). */
    bool quota_soft;
    bool has_ceiling;
    int64_t ceiling_percent;
    apimodel_thresholds thresholds; /* alertThresholds; default 80, 100, 120 */
    bool has_throttle;
    apimodel_throttle throttle;
    json_t *method_throttles; /* owned: {"/path/METHOD": {"rateLimit","burstLimit"}} */
    bool has_meter;
    char meter[APIMODEL_METER_MAX + 1];
    /* Stripe's legacy usage-records target; a key's own one wins over it. */
    bool has_subscription_item;
    char subscription_item[APIMODEL_SUBSCRIPTION_ITEM_MAX + 1];
} apimodel_plan;

typedef struct {
    char name[APIMODEL_NAME_MAX + 1];
    char description[APIMODEL_DESCRIPTION_MAX + 1];
    bool has_customer_id;
    char customer_id[APIMODEL_CUSTOMER_ID_MAX + 1];
    bool has_stripe_customer_id;
    char stripe_customer_id[APIMODEL_CUSTOMER_ID_MAX + 1];
    bool has_subscription_item;     /* wins over the plan's */
    char subscription_item[APIMODEL_SUBSCRIPTION_ITEM_MAX + 1];
    bool enabled;
    bool has_value;                 /* creation only */
    char value[APIMODEL_VALUE_MAX + 1];
    bool has_plan_id;               /* creation only */
    char plan_id[APIMODEL_ID_MAX + 1];
    bool has_thresholds;            /* alertThresholds; false: the plan's */
    apimodel_thresholds thresholds;
} apimodel_key;

typedef enum { GRANULARITY_HOUR = 0, GRANULARITY_DAY, GRANULARITY_MONTH } apimodel_granularity;

typedef struct {
    int64_t from, to;        /* usec; aligned to bucket starts, to exclusive */
    apimodel_granularity granularity;
    bool group_by_endpoint;
    int64_t points;          /* buckets between from and to */
} apimodel_usage_query;

/* A plan with no name, quota, throttle, meter or subscription item and no
 * method throttles.
 * Free with apimodel_plan_free. False when out of memory. */
bool apimodel_plan_init(apimodel_plan *plan);
void apimodel_plan_free(apimodel_plan *plan);
/* Applies a JSON body (borrowed) to `plan`. Creating: `name` is required.
 * Otherwise (PATCH) it is a merge patch: members present replace, `null`
 * removes quota, throttle, stripeMeterEventName, stripeSubscriptionItemId
 * (and empties description);
 * quota and throttle objects merge into what is there. Unknown members,
 * wrong types and out-of-range values are refused; on refusal `plan` may be
 * partly changed (the caller discards it). */
bool apimodel_plan_apply(apimodel_plan *plan, const json_t *body, bool creating,
                         apimodel_error *err) __attribute__((warn_unused_result));
/* Validates a methodThrottles object (borrowed), as stored in plans. */
bool apimodel_method_throttles_valid(const json_t *value, apimodel_error *err);
/* The methodThrottles object (borrowed) as stored: each key "/path/METHOD"
 * rewritten as its canonical path (apitext_canonical_path), '/', and its
 * canonical method (HEAD is GET; "*" any method), each throttle copied with
 * a rate of -0.0 written 0. Refused: anything apimodel_method_throttles_valid
 * refuses, a key longer than APIMODEL_METHOD_PATH_MAX once canonical, and
 * two keys with the same canonical form. New object, or NULL with err. */
json_t *apimodel_method_throttles_canonical(const json_t *value, apimodel_error *err);
/* Splits a methodThrottles key "/path/METHOD" (the path starting with '/',
 * the method upper-case letters or "*") into its canonical path and
 * method, each at most APIMODEL_METHOD_PATH_MAX bytes plus NUL. False when
 * the key is not of that form or is too long once canonical. The keys of
 * rows stored before keys were canonical are split the same way, so that
 * both sides of a match are always canonical. */
bool apimodel_method_key_split(const char *key, char *path, char *method);

/* Alert thresholds as PostgreSQL's integer[] text ("{80,100,120}"), the
 * form they are stored and read in: parse (false for anything else than
 * what apimodel_thresholds_text writes, within the bounds) and write (at
 * most APIMODEL_THRESHOLDS_TEXT_MAX bytes with the NUL). */
#define APIMODEL_THRESHOLDS_TEXT_MAX (APIMODEL_THRESHOLDS_MAX * 7 + 3)
bool apimodel_thresholds_parse_text(const char *text, apimodel_thresholds *out);
void apimodel_thresholds_text(const apimodel_thresholds *t, char *out, size_t size);
/* A JSON array of the thresholds, new reference (NULL when out of memory). */
json_t *apimodel_thresholds_json(const apimodel_thresholds *t);

/* The units at which `percent` of `limit` is reached, ceil(limit * percent
 * / 100), as the alerts' SQL computes it (tally_threshold_units);
 * INT64_MAX when that does not fit (never reached). For a soft quota's
 * ceiling: authorize refuses once used reaches it. */
int64_t apimodel_percent_units(int64_t limit, int64_t percent);

/* Defaults: enabled, everything else unset. */
void apimodel_key_init(apimodel_key *key);
/* As apimodel_plan_apply, for keys. `value` and `planId` are accepted only
 * when creating; customerId, stripeCustomerId and stripeSubscriptionItemId
 * may be null (unset). */
bool apimodel_key_apply(apimodel_key *key, const json_t *body, bool creating, apimodel_error *err)
    __attribute__((warn_unused_result));

/* Parses the usage query: `from`, `to` (RFC 3339 or YYYY-MM-DD; a date `to`
 * includes that whole day), `granularity` (hour|day|month, default day) and
 * `groupBy` (only "endpoint"); each may be NULL (absent). Defaults: `to` =
 * now; `from` = 24 hours (hour), 30 days (day) or 12 months (month) before
 * `to`. The range is widened to whole buckets. from > to, more than
 * APIMODEL_USAGE_POINTS_MAX points, and anything malformed are refused. */
bool apimodel_usage_query_parse(const char *from, const char *to, const char *granularity,
                                const char *group_by, int64_t now, apimodel_usage_query *out,
                                apimodel_error *err) __attribute__((warn_unused_result));
const char *apimodel_granularity_name(apimodel_granularity granularity);
/* Start of the bucket containing t, and of the next bucket. */
int64_t apimodel_bucket_start(apimodel_granularity granularity, int64_t t);
int64_t apimodel_bucket_next(apimodel_granularity granularity, int64_t start);

/* List paging: `limit` text (NULL: default) into 1..APIMODEL_LIST_LIMIT_MAX. */
bool apimodel_parse_limit(const char *text, int *out, apimodel_error *err)
    __attribute__((warn_unused_result));
/* The opaque `position` of a list: the last id of a page, base64url
 * encoded. Encode writes at most APIMODEL_CURSOR_MAX + 1 bytes; decode
 * refuses anything that is not the encoding of a valid id. */
void apimodel_cursor_encode(const char *last_id, char *out, size_t out_size);
bool apimodel_cursor_decode(const char *text, char *id_out, size_t id_size, apimodel_error *err)
    __attribute__((warn_unused_result));
/* Ids as the api generates and accepts them in bodies:
 * 1..APIMODEL_ID_MAX of [A-Za-z0-9._:~-]. */
bool apimodel_valid_id(const char *text);

/* The authorize cache's counts of requests it allowed for one key,
 * measured on a running total of allowed requests (count = total - mark):
 * since it last read the key's quota counter (for the quota period
 * starting at `period`), and in the current quota period as a whole (since
 * `in_period_start`, kept across reloads). */
typedef struct {
    int64_t mark;   /* the running total the since-reload count starts from */
    int64_t period; /* start of the quota period that count belongs to */
    int64_t in_period_mark;  /* the running total the in-period count starts from */
    int64_t in_period_start; /* start of the quota period that count belongs to */
} apimodel_quota_local;
/* A reload read the counters of the period starting at `loaded_period`
 * after taking `next_mark`. The since-reload count starts from next_mark,
 * unless it has already rolled over into a later period than the reload
 * read (then the reload's counter is not the current period's: the count
 * since the rollover stays). The in-period count is not touched (a reload
 * does not change what this process allowed), except that `plan_changed`
 * (another period kind, say) restarts both counts at next_mark, for the
 * period starting at `loaded_period`. */
void apimodel_quota_local_reload(apimodel_quota_local *q, int64_t next_mark,
                                 int64_t loaded_period, bool plan_changed);
/* The requests allowed here since the reload, in the period starting at
 * `period_now`, given the running total; when that period is later than
 * the count's, the count starts afresh at `total` (requests allowed in an
 * earlier period do not count against this one). */
int64_t apimodel_quota_local_count(apimodel_quota_local *q, int64_t total, int64_t period_now);
/* The quota units used in the period starting at `period_now`, as the
 * authorize decision sees them: the larger of
 *   the counter read at the last reload (`counter`, read for the period
 *   starting at `counter_period`; 0 when that is not `period_now`) + the
 *   requests allowed here since that reload, and
 *   the requests allowed here in this period (across reloads),
 * so never below what this process knows it allowed, however far behind
 * the collector (which writes the counter) is. Rolls both counts over when
 * `period_now` is later than theirs. */
int64_t apimodel_quota_used(apimodel_quota_local *q, int64_t counter, int64_t counter_period,
                            int64_t total, int64_t period_now);

#endif
