#include "apimodel.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apiroute.h"
#include "apitext.h"
#include "timeutil.h"

bool apimodel_fail(apimodel_error *err, const char *code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return false;
}

bool apimodel_valid_id(const char *text)
{
    return apiroute_valid_id(text, strlen(text));
}

bool apimodel_take_string(const json_t *value, const char *field, size_t min, size_t max,
                          bool multiline, char *out, apimodel_error *err)
{
    if (!json_is_string(value))
        return apimodel_fail(err, "invalid_field", "%s must be a string", field);
    const char *text = json_string_value(value);
    size_t len = json_string_length(value);
    if (len < min || len > max) {
        if (min > 0 && len < min)
            return apimodel_fail(err, "invalid_field", "%s must be %zu to %zu bytes long", field,
                                 min, max);
        return apimodel_fail(err, "invalid_field", "%s is longer than %zu bytes", field, max);
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == 0x7f || (c < 0x20 && !(multiline && (c == '\t' || c == '\n' || c == '\r'))))
            return apimodel_fail(err, "invalid_field", "%s contains a control character", field);
    }
    memcpy(out, text, len + 1);
    return true;
}

static bool take_integer(const json_t *value, const char *field, int64_t min, int64_t max,
                         int64_t *out, apimodel_error *err)
{
    if (!json_is_integer(value))
        return apimodel_fail(err, "invalid_field", "%s must be a whole number", field);
    json_int_t n = json_integer_value(value);
    if (n < min || n > max)
        return apimodel_fail(err, "invalid_field", "%s must be from %lld to %lld", field,
                             (long long)min, (long long)max);
    *out = (int64_t)n;
    return true;
}

static bool take_rate(const json_t *value, const char *field, double *out, apimodel_error *err)
{
    if (!json_is_number(value))
        return apimodel_fail(err, "invalid_field", "%s must be a number", field);
    double d = json_number_value(value);
    if (!isfinite(d) || d < 0 || d > APIMODEL_RATE_MAX)
        return apimodel_fail(err, "invalid_field", "%s must be from 0 to %g", field,
                             APIMODEL_RATE_MAX);
    *out = d == 0 ? 0.0 : d; /* -0.0 is 0: never stored nor echoed with its sign */
    return true;
}

/* A throttle object: {rateLimit, burstLimit}. Creating (has == false before):
 * both are required; otherwise each present member replaces. */
static bool apply_throttle(apimodel_throttle *throttle, bool existed, const json_t *value,
                           const char *field, apimodel_error *err)
{
    if (!json_is_object(value))
        return apimodel_fail(err, "invalid_field", "%s must be an object {rateLimit, burstLimit}",
                             field);
    bool seen_rate = false, seen_burst = false;
    const char *name;
    json_t *member;
    char path[APIMODEL_METHOD_PATH_MAX + 40];
    json_object_foreach((json_t *)value, name, member) {
        if (strcmp(name, "rateLimit") == 0) {
            snprintf(path, sizeof path, "%s.rateLimit", field);
            if (!take_rate(member, path, &throttle->rate_limit, err))
                return false;
            seen_rate = true;
        } else if (strcmp(name, "burstLimit") == 0) {
            snprintf(path, sizeof path, "%s.burstLimit", field);
            if (!take_integer(member, path, 0, APIMODEL_BURST_MAX, &throttle->burst_limit, err))
                return false;
            seen_burst = true;
        } else {
            return apimodel_fail(err, "unknown_field", "%s has no member \"%.*s\"", field,
                        (int)apitext_utf8_prefix(name, 60), name);
        }
    }
    if (!existed && (!seen_rate || !seen_burst))
        return apimodel_fail(err, "missing_field", "%s needs both rateLimit and burstLimit", field);
    return true;
}

/* "/path/METHOD": a path starting with '/', then '/' and an upper-case
 * method, or "*" for any method. */
static bool valid_method_path(const char *key)
{
    size_t len = strlen(key);
    if (len < 3 || len > APIMODEL_METHOD_PATH_MAX || key[0] != '/')
        return false;
    const char *slash = strrchr(key, '/');
    if (slash == key) /* needs a path and a method */
        return false;
    const char *method = slash + 1;
    if (strcmp(method, "*") != 0) {
        if (method[0] == '\0')
            return false;
        for (const char *c = method; *c; c++) {
            if (*c < 'A' || *c > 'Z')
                return false;
        }
    }
    for (const char *c = key; c < slash; c++) {
        if ((unsigned char)*c <= 0x20 || *c == 0x7f || *c == '?' || *c == '#')
            return false;
    }
    return true;
}

bool apimodel_method_key_split(const char *key, char *path, char *method)
{
    if (!valid_method_path(key))
        return false;
    const char *slash = strrchr(key, '/');
    char canonical[APITEXT_CANONICAL_SIZE(APIMODEL_METHOD_PATH_MAX)];
    size_t path_len = apitext_canonical_path(key, (size_t)(slash - key), canonical,
                                             sizeof canonical);
    char verb[APIMODEL_METHOD_PATH_MAX + 1];
    size_t method_len = apitext_canonical_method(slash + 1, strlen(slash + 1), verb, sizeof verb);
    if (path_len == 0 || method_len == 0 || path_len + 1 + method_len > APIMODEL_METHOD_PATH_MAX)
        return false;
    memcpy(path, canonical, path_len + 1);
    memcpy(method, verb, method_len + 1);
    return true;
}

/* A throttle object as stored: the member copied, a rate of -0.0 as 0. */
static json_t *stored_throttle(const json_t *member)
{
    json_t *copy = json_deep_copy(member);
    json_t *rate = json_object_get(copy, "rateLimit");
    if (copy != NULL && json_is_real(rate) && json_real_value(rate) == 0 &&
        json_object_set_new(copy, "rateLimit", json_real(0.0)) != 0) {
        json_decref(copy);
        return NULL;
    }
    return copy;
}

json_t *apimodel_method_throttles_canonical(const json_t *value, apimodel_error *err)
{
    if (!json_is_object(value)) {
        apimodel_fail(err, "invalid_field", "methodThrottles must be an object");
        return NULL;
    }
    if (json_object_size(value) > APIMODEL_METHOD_THROTTLES_MAX) {
        apimodel_fail(err, "invalid_field", "methodThrottles has more than %d entries",
             APIMODEL_METHOD_THROTTLES_MAX);
        return NULL;
    }
    json_t *out = json_object();
    if (out == NULL) {
        apimodel_fail(err, "internal", "out of memory");
        return NULL;
    }
    const char *key;
    json_t *member;
    json_object_foreach((json_t *)value, key, member) {
        char path[APIMODEL_METHOD_PATH_MAX + 1], method[APIMODEL_METHOD_PATH_MAX + 1];
        if (!apimodel_method_key_split(key, path, method)) {
            apimodel_fail(err, "invalid_field",
                 "methodThrottles key \"%.*s\" is not of the form \"/path/METHOD\" (at most %d "
                 "bytes, also once canonical)",
                 (int)apitext_utf8_prefix(key, 80), key, APIMODEL_METHOD_PATH_MAX);
            goto fail;
        }
        apimodel_throttle ignored = {0, 0};
        char field[APIMODEL_METHOD_PATH_MAX + 20];
        snprintf(field, sizeof field, "methodThrottles[\"%s\"]", key);
        if (!apply_throttle(&ignored, false, member, field, err))
            goto fail;
        char canonical_key[2 * APIMODEL_METHOD_PATH_MAX + 2];
        /* The root's key is "//METHOD": its path "/", then "/METHOD". */
        snprintf(canonical_key, sizeof canonical_key, "%s/%s", path, method);
        if (json_object_get(out, canonical_key) != NULL) {
            apimodel_fail(err, "invalid_field",
                 "methodThrottles key \"%.*s\" names the same path and method as another "
                 "(\"%s\" once canonical)",
                 (int)apitext_utf8_prefix(key, 80), key, canonical_key);
            goto fail;
        }
        json_t *stored = stored_throttle(member);
        if (stored == NULL || json_object_set_new(out, canonical_key, stored) != 0) {
            apimodel_fail(err, "internal", "out of memory");
            goto fail;
        }
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

bool apimodel_method_throttles_valid(const json_t *value, apimodel_error *err)
{
    json_t *canonical = apimodel_method_throttles_canonical(value, err);
    json_decref(canonical);
    return canonical != NULL;
}

/* ---- alert thresholds and quota percentages ---------------------------- */

/* One threshold after `previous` (0 for the first): 1..APIMODEL_PERCENT_MAX
 * and above it. */
static bool threshold_fits(long long value, int32_t previous)
{
    return value >= 1 && value <= APIMODEL_PERCENT_MAX && value > previous;
}

static bool apply_thresholds(const json_t *value, const char *field, apimodel_thresholds *out,
                             apimodel_error *err)
{
    if (!json_is_array(value))
        return apimodel_fail(err, "invalid_field", "%s must be an array of percentages", field);
    if (json_array_size(value) > APIMODEL_THRESHOLDS_MAX)
        return apimodel_fail(err, "invalid_field", "%s has more than %d thresholds", field,
                    APIMODEL_THRESHOLDS_MAX);
    apimodel_thresholds t = {0};
    size_t i;
    json_t *member;
    json_array_foreach(value, i, member) {
        int32_t previous = t.count > 0 ? t.percent[t.count - 1] : 0;
        if (!json_is_integer(member) || !threshold_fits(json_integer_value(member), previous))
            return apimodel_fail(err, "invalid_field",
                        "%s must hold whole percentages from 1 to %d in ascending order, each "
                        "once",
                        field, APIMODEL_PERCENT_MAX);
        t.percent[t.count++] = (int32_t)json_integer_value(member);
    }
    *out = t;
    return true;
}

bool apimodel_thresholds_parse_text(const char *text, apimodel_thresholds *out)
{
    apimodel_thresholds t = {0};
    if (text == NULL || *text++ != '{')
        return false;
    while (*text != '}') {
        if (t.count > 0 && *text++ != ',')
            return false;
        if (*text < '0' || *text > '9' || t.count == APIMODEL_THRESHOLDS_MAX)
            return false;
        char *end;
        errno = 0;
        long long value = strtoll(text, &end, 10);
        if (errno != 0 || !threshold_fits(value, t.count > 0 ? t.percent[t.count - 1] : 0))
            return false;
        t.percent[t.count++] = (int32_t)value;
        text = end;
    }
    if (text[1] != '\0')
        return false;
    *out = t;
    return true;
}

void apimodel_thresholds_text(const apimodel_thresholds *t, char *out, size_t size)
{
    size_t len = 0;
    len += (size_t)snprintf(out + len, size - len, "{");
    for (int i = 0; i < t->count && len < size; i++)
        len += (size_t)snprintf(out + len, size - len, "%s%d", i > 0 ? "," : "",
                                (int)t->percent[i]);
    if (len < size)
        snprintf(out + len, size - len, "}");
}

json_t *apimodel_thresholds_json(const apimodel_thresholds *t)
{
    json_t *array = json_array();
    for (int i = 0; array != NULL && i < t->count; i++) {
        if (json_array_append_new(array, json_integer(t->percent[i])) != 0) {
            json_decref(array);
            return NULL;
        }
    }
    return array;
}

int64_t apimodel_percent_units(int64_t limit, int64_t percent)
{
    if (limit <= 0 || percent <= 0)
        return 0;
    /* limit * percent can leave int64 (10^15 * 10^5): split it so that
     * neither part overflows before the check. */
    int64_t whole = limit / 100, part = limit % 100;
    if (whole > (INT64_MAX - 100 * percent) / percent)
        return INT64_MAX;
    int64_t scaled = part * percent; /* < 100 * 10^5 at most for sane input */
    return whole * percent + scaled / 100 + (scaled % 100 != 0);
}

bool apimodel_plan_init(apimodel_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    plan->thresholds = (apimodel_thresholds){3, {80, 100, 120}};
    plan->quota_period = PERIOD_MONTH;
    plan->method_throttles = json_object();
    return plan->method_throttles != NULL;
}

void apimodel_plan_free(apimodel_plan *plan)
{
    json_decref(plan->method_throttles);
    plan->method_throttles = NULL;
}

/* A nullable single-line string of 1..max bytes: null unsets it. */
static bool apply_nullable(const json_t *value, const char *field, size_t max, bool *has,
                           char *out, apimodel_error *err)
{
    if (json_is_null(value)) {
        *has = false;
        out[0] = '\0';
        return true;
    }
    if (!apimodel_take_string(value, field, 1, max, false, out, err))
        return false;
    *has = true;
    return true;
}

bool apimodel_apply_description(const json_t *value, char *out, apimodel_error *err)
{
    if (json_is_null(value)) {
        out[0] = '\0';
        return true;
    }
    return apimodel_take_string(value, "description", 0, APIMODEL_DESCRIPTION_MAX, true, out, err);
}

/* The refusal of a member `name` that a body of `kinds` ("plans", "keys")
 * may not set: one of the fields the server sets on every row, or one it
 * does not have. Always false. */
static bool refuse_member(const char *name, const char *kinds, apimodel_error *err)
{
    if (strcmp(name, "id") == 0 || strcmp(name, "createdAt") == 0 ||
        strcmp(name, "updatedAt") == 0)
        return apimodel_fail(err, "read_only_field", "%s is set by the server", name);
    return apimodel_fail(err, "unknown_field", "%s have no member \"%.*s\"", kinds,
                (int)apitext_utf8_prefix(name, 60), name);
}

static bool apply_quota(apimodel_plan *plan, const json_t *value, apimodel_error *err)
{
    if (!json_is_object(value))
        return apimodel_fail(err, "invalid_field",
                             "quota must be an object {limit, period, offset}");
    bool existed = plan->has_quota;
    bool seen_limit = false, seen_period = false, seen_offset = false, seen_ceiling = false;
    const char *name;
    json_t *member;
    json_object_foreach((json_t *)value, name, member) {
        if (strcmp(name, "limit") == 0) {
            if (!take_integer(member, "quota.limit", 0, APIMODEL_QUOTA_MAX, &plan->quota_limit,
                              err))
                return false;
            seen_limit = true;
        } else if (strcmp(name, "offset") == 0) {
            if (!take_integer(member, "quota.offset", 0, APIMODEL_QUOTA_MAX, &plan->quota_offset,
                              err))
                return false;
            seen_offset = true;
        } else if (strcmp(name, "period") == 0) {
            if (!json_is_string(member) ||
                !period_parse(json_string_value(member), &plan->quota_period))
                return apimodel_fail(err, "invalid_field",
                                     "quota.period must be DAY, WEEK or MONTH");
            seen_period = true;
        } else if (strcmp(name, "enforcement") == 0) {
            const char *mode = json_string_value(member);
            if (mode == NULL || (strcmp(mode, "hard") != 0 && strcmp(mode, "soft") != 0))
                return apimodel_fail(err, "invalid_field",
                                     "quota.enforcement must be \"hard\" or \"soft\"");
            plan->quota_soft = strcmp(mode, "soft") == 0;
        } else if (strcmp(name, "ceilingPercent") == 0) {
            plan->has_ceiling = !json_is_null(member);
            seen_ceiling = true;
            if (plan->has_ceiling &&
                !take_integer(member, "quota.ceilingPercent", 100, APIMODEL_PERCENT_MAX,
                              &plan->ceiling_percent, err))
                return false;
        } else {
            return apimodel_fail(err, "unknown_field", "quota has no member \"%.*s\"",
                        (int)apitext_utf8_prefix(name, 60), name);
        }
    }
    if (!existed) {
        if (!seen_limit || !seen_period)
            return apimodel_fail(err, "missing_field", "quota needs limit and period");
        if (!seen_offset)
            plan->quota_offset = 0;
    }
    if (plan->has_ceiling && !plan->quota_soft && !seen_ceiling)
        plan->has_ceiling = false; /* made hard: the stored ceiling goes with "soft" */
    if (plan->has_ceiling && !plan->quota_soft)
        return apimodel_fail(err, "invalid_field",
                    "quota.ceilingPercent needs quota.enforcement \"soft\" (a hard quota "
                    "refuses at 100 %%)");
    plan->has_quota = true;
    return true;
}

bool apimodel_plan_apply(apimodel_plan *plan, const json_t *body, bool creating,
                         apimodel_error *err)
{
    if (!json_is_object(body))
        return apimodel_fail(err, "invalid_body", "the body must be a JSON object");
    bool seen_name = false;
    const char *name;
    json_t *value;
    json_object_foreach((json_t *)body, name, value) {
        bool is_null = json_is_null(value);
        if (strcmp(name, "name") == 0) {
            if (!apimodel_take_string(value, "name", 1, APIMODEL_NAME_MAX, false, plan->name, err))
                return false;
            seen_name = true;
        } else if (strcmp(name, "description") == 0) {
            if (!apimodel_apply_description(value, plan->description, err))
                return false;
        } else if (strcmp(name, "quota") == 0) {
            if (is_null) {
                plan->has_quota = false;
                plan->quota_soft = false;
                plan->has_ceiling = false;
            } else if (!apply_quota(plan, value, err))
                return false;
        } else if (strcmp(name, "throttle") == 0) {
            if (is_null) {
                plan->has_throttle = false;
            } else {
                if (!apply_throttle(&plan->throttle, plan->has_throttle, value, "throttle", err))
                    return false;
                plan->has_throttle = true;
            }
        } else if (strcmp(name, "methodThrottles") == 0) {
            json_t *replacement =
                is_null ? json_object() : apimodel_method_throttles_canonical(value, err);
            if (replacement == NULL)
                return is_null ? apimodel_fail(err, "internal", "out of memory") : false;
            json_decref(plan->method_throttles);
            plan->method_throttles = replacement;
        } else if (strcmp(name, "stripeMeterEventName") == 0) {
            if (is_null)
                plan->has_meter = false;
            else if (!apimodel_take_string(value, "stripeMeterEventName", 1, APIMODEL_METER_MAX,
                                           false, plan->meter, err))
                return false;
            else
                plan->has_meter = true;
        } else if (strcmp(name, "stripeSubscriptionItemId") == 0) {
            if (!apply_nullable(value, "stripeSubscriptionItemId", APIMODEL_SUBSCRIPTION_ITEM_MAX,
                                &plan->has_subscription_item, plan->subscription_item, err))
                return false;
        } else if (strcmp(name, "alertThresholds") == 0) {
            if (!apply_thresholds(value, "alertThresholds", &plan->thresholds, err))
                return false;
        } else {
            return refuse_member(name, "plans", err);
        }
    }
    if (creating && !seen_name)
        return apimodel_fail(err, "missing_field", "name is required");
    return true;
}

void apimodel_key_init(apimodel_key *key)
{
    memset(key, 0, sizeof *key);
    key->enabled = true;
}

bool apimodel_key_apply(apimodel_key *key, const json_t *body, bool creating, apimodel_error *err)
{
    if (!json_is_object(body))
        return apimodel_fail(err, "invalid_body", "the body must be a JSON object");
    const char *name;
    json_t *value;
    json_object_foreach((json_t *)body, name, value) {
        if (strcmp(name, "name") == 0) {
            if (!apimodel_take_string(value, "name", 0, APIMODEL_NAME_MAX, false, key->name, err))
                return false;
        } else if (strcmp(name, "description") == 0) {
            if (!apimodel_apply_description(value, key->description, err))
                return false;
        } else if (strcmp(name, "customerId") == 0) {
            if (!apply_nullable(value, "customerId", APIMODEL_CUSTOMER_ID_MAX,
                                &key->has_customer_id, key->customer_id, err))
                return false;
        } else if (strcmp(name, "stripeCustomerId") == 0) {
            if (!apply_nullable(value, "stripeCustomerId", APIMODEL_CUSTOMER_ID_MAX,
                                &key->has_stripe_customer_id, key->stripe_customer_id, err))
                return false;
        } else if (strcmp(name, "stripeSubscriptionItemId") == 0) {
            if (!apply_nullable(value, "stripeSubscriptionItemId", APIMODEL_SUBSCRIPTION_ITEM_MAX,
                                &key->has_subscription_item, key->subscription_item, err))
                return false;
        } else if (strcmp(name, "enabled") == 0) {
            if (!json_is_boolean(value))
                return apimodel_fail(err, "invalid_field", "enabled must be true or false");
            key->enabled = json_is_true(value);
        } else if (creating && strcmp(name, "value") == 0) {
            if (!apimodel_take_string(value, "value", APIMODEL_VALUE_MIN, APIMODEL_VALUE_MAX,
                                      false, key->value, err))
                return false;
            for (const char *c = key->value; *c; c++) {
                if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
                    return apimodel_fail(err, "invalid_field",
                                "value must be printable ASCII without spaces");
            }
            key->has_value = true;
        } else if (creating && strcmp(name, "planId") == 0) {
            if (json_is_null(value)) {
                key->has_plan_id = false;
                continue;
            }
            if (!apimodel_take_string(value, "planId", 1, APIMODEL_ID_MAX, false, key->plan_id,
                                      err))
                return false;
            if (!apimodel_valid_id(key->plan_id))
                return apimodel_fail(err, "invalid_field", "planId is not a valid id");
            key->has_plan_id = true;
        } else if (strcmp(name, "alertThresholds") == 0) {
            key->has_thresholds = !json_is_null(value);
            if (key->has_thresholds &&
                !apply_thresholds(value, "alertThresholds", &key->thresholds, err))
                return false;
        } else if (strcmp(name, "value") == 0) {
            return apimodel_fail(err, "read_only_field",
                                 "a key's value cannot be changed; create a new key");
        } else if (strcmp(name, "planId") == 0) {
            return apimodel_fail(err, "read_only_field",
                        "planId is changed with PUT or DELETE /v1/keys/{id}/plan");
        } else {
            return refuse_member(name, "keys", err);
        }
    }
    return true;
}

/* ---- usage queries ------------------------------------------------------ */

const char *apimodel_granularity_name(apimodel_granularity granularity)
{
    static const char *const names[] = {"hour", "day", "month"};
    return (unsigned)granularity < 3 ? names[granularity] : "?";
}

int64_t apimodel_bucket_start(apimodel_granularity granularity, int64_t t)
{
    switch (granularity) {
    case GRANULARITY_HOUR:
        return time_truncate(t, USEC_PER_HOUR);
    case GRANULARITY_DAY:
        return period_start(PERIOD_DAY, t);
    case GRANULARITY_MONTH:
        return period_start(PERIOD_MONTH, t);
    }
    return t;
}

int64_t apimodel_bucket_next(apimodel_granularity granularity, int64_t start)
{
    switch (granularity) {
    case GRANULARITY_HOUR:
        return time_truncate(start, USEC_PER_HOUR) + USEC_PER_HOUR;
    case GRANULARITY_DAY:
        return period_end(PERIOD_DAY, start);
    case GRANULARITY_MONTH:
        return period_end(PERIOD_MONTH, start);
    }
    return start + USEC_PER_HOUR;
}

/* RFC 3339 or YYYY-MM-DD; *is_date tells which. */
static bool parse_instant(const char *text, int64_t *out, bool *is_date)
{
    size_t len = strlen(text);
    if (len == 10 && time_parse_date(text, len, out)) {
        *is_date = true;
        return true;
    }
    *is_date = false;
    return len <= 64 && time_parse_rfc3339(text, len, out);
}

/* Years 0001..9998 keep every bucket computation inside the calendar. */
#define EARLIEST_USEC (INT64_C(-62135596800) * USEC_PER_SEC)
#define LATEST_USEC (INT64_C(253370764800) * USEC_PER_SEC)

bool apimodel_usage_query_parse(const char *from, const char *to, const char *granularity,
                                const char *group_by, int64_t now, apimodel_usage_query *out,
                                apimodel_error *err)
{
    apimodel_usage_query q = {0};
    q.granularity = GRANULARITY_DAY;
    if (granularity != NULL) {
        if (strcmp(granularity, "hour") == 0)
            q.granularity = GRANULARITY_HOUR;
        else if (strcmp(granularity, "day") == 0)
            q.granularity = GRANULARITY_DAY;
        else if (strcmp(granularity, "month") == 0)
            q.granularity = GRANULARITY_MONTH;
        else
            return apimodel_fail(err, "invalid_parameter",
                                 "granularity must be hour, day or month");
    }
    if (group_by != NULL) {
        if (strcmp(group_by, "endpoint") != 0)
            return apimodel_fail(err, "invalid_parameter", "groupBy must be endpoint");
        q.group_by_endpoint = true;
    }
    bool is_date = false, to_is_date = false;
    int64_t to_at = now;
    if (to != NULL) {
        if (!parse_instant(to, &to_at, &to_is_date))
            return apimodel_fail(err, "invalid_parameter",
                        "to must be an RFC 3339 date-time or a YYYY-MM-DD date");
        if (to_is_date)
            to_at += USEC_PER_DAY; /* a date includes its whole day */
    }
    if (to_at < EARLIEST_USEC || to_at > LATEST_USEC)
        return apimodel_fail(err, "invalid_parameter", "to is out of range");
    int64_t from_at;
    if (from != NULL) {
        if (!parse_instant(from, &from_at, &is_date))
            return apimodel_fail(err, "invalid_parameter",
                        "from must be an RFC 3339 date-time or a YYYY-MM-DD date");
        if (from_at < EARLIEST_USEC || from_at > LATEST_USEC)
            return apimodel_fail(err, "invalid_parameter", "from is out of range");
    } else if (q.granularity == GRANULARITY_HOUR) {
        from_at = to_at - 24 * USEC_PER_HOUR;
    } else if (q.granularity == GRANULARITY_DAY) {
        from_at = to_at - 30 * USEC_PER_DAY;
    } else {
        /* The month 11 months before to's month: 12 buckets with to's own. */
        civil_time ct;
        time_to_civil(period_start(PERIOD_MONTH, to_at - 1), &ct);
        int months = ct.year * 12 + (ct.month - 1) - 11;
        from_at = time_days_from_civil(months / 12, months % 12 + 1, 1) * USEC_PER_DAY;
    }
    /* A default from may fall before the earliest instant (a `to` early in
     * year 1): the range starts there instead. */
    if (from_at < EARLIEST_USEC)
        from_at = EARLIEST_USEC;
    /* The effective end: a date-time `to` is an instant from may reach; a
     * date `to` covers its day, up to (not including) the next midnight. */
    if (to_is_date ? from_at >= to_at : from_at > to_at)
        return apimodel_fail(err, "invalid_range", "from is after to");
    q.from = apimodel_bucket_start(q.granularity, from_at);
    q.to = apimodel_bucket_start(q.granularity, to_at);
    if (q.to < to_at)
        q.to = apimodel_bucket_next(q.granularity, q.to);
    if (q.to == q.from) /* an empty range still shows its bucket */
        q.to = apimodel_bucket_next(q.granularity, q.from);
    int64_t points = 0;
    switch (q.granularity) {
    case GRANULARITY_HOUR:
        points = (q.to - q.from) / USEC_PER_HOUR;
        break;
    case GRANULARITY_DAY:
        points = (q.to - q.from) / USEC_PER_DAY;
        break;
    case GRANULARITY_MONTH: {
        civil_time a, b;
        time_to_civil(q.from, &a);
        time_to_civil(q.to, &b);
        points = (int64_t)(b.year - a.year) * 12 + (b.month - a.month);
        break;
    }
    }
    if (points > APIMODEL_USAGE_POINTS_MAX)
        return apimodel_fail(err, "too_many_points",
                    "the range holds %lld %s buckets; at most %d are served: narrow from/to or "
                    "use a coarser granularity",
                    (long long)points, apimodel_granularity_name(q.granularity),
                    APIMODEL_USAGE_POINTS_MAX);
    q.points = points;
    *out = q;
    return true;
}

/* ---- paging ------------------------------------------------------------- */

bool apimodel_parse_limit(const char *text, int *out, apimodel_error *err)
{
    if (text == NULL) {
        *out = APIMODEL_LIST_LIMIT_DEFAULT;
        return true;
    }
    char *end = NULL;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || errno != 0 || *end != '\0' || n < 1 ||
        n > APIMODEL_LIST_LIMIT_MAX)
        return apimodel_fail(err, "invalid_parameter", "limit must be a whole number from 1 to %d",
                    APIMODEL_LIST_LIMIT_MAX);
    *out = (int)n;
    return true;
}

static const char base64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void apimodel_cursor_encode(const char *last_id, char *out, size_t out_size)
{
    const unsigned char *in = (const unsigned char *)last_id;
    size_t len = strlen(last_id), o = 0;
    for (size_t i = 0; i < len && o + 5 < out_size; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = base64url[(v >> 18) & 63];
        out[o++] = base64url[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = base64url[(v >> 6) & 63];
        if (i + 2 < len)
            out[o++] = base64url[v & 63];
    }
    out[o] = '\0';
}

bool apimodel_cursor_decode(const char *text, char *id_out, size_t id_size, apimodel_error *err)
{
    size_t len = strlen(text), o = 0;
    if (len == 0 || len > APIMODEL_CURSOR_MAX || len % 4 == 1)
        goto bad;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        const char *p = strchr(base64url, text[i]);
        if (p == NULL || text[i] == '\0')
            goto bad;
        acc = (acc << 6) | (uint32_t)(p - base64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= id_size)
                goto bad;
            id_out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    id_out[o] = '\0';
    if (!apimodel_valid_id(id_out))
        goto bad;
    return true;
bad:
    return apimodel_fail(err, "invalid_parameter", "position is not one this server handed out");
}

void apimodel_quota_local_reload(apimodel_quota_local *q, int64_t next_mark,
                                 int64_t loaded_period, bool plan_changed)
{
    if (plan_changed) {
        q->in_period_mark = next_mark;
        q->in_period_start = loaded_period;
    } else if (q->period > loaded_period) {
        return; /* rolled over past what the reload read: keep the new period's count */
    }
    q->mark = next_mark;
    q->period = loaded_period;
}

int64_t apimodel_quota_local_count(apimodel_quota_local *q, int64_t total, int64_t period_now)
{
    if (period_now > q->period) {
        q->mark = total;
        q->period = period_now;
    }
    return total - q->mark;
}

int64_t apimodel_quota_used(apimodel_quota_local *q, int64_t counter, int64_t counter_period,
                            int64_t total, int64_t period_now)
{
    int64_t since_reload = apimodel_quota_local_count(q, total, period_now);
    if (period_now > q->in_period_start) {
        q->in_period_mark = total;
        q->in_period_start = period_now;
    }
    int64_t in_period = total - q->in_period_mark;
    int64_t counted = counter_period == period_now ? counter : 0;
    int64_t used = counted + since_reload;
    return used > in_period ? used : in_period;
}
