#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

/* Every TALLY_* variable any Tally program reads. A variable outside this list
 * is a typo (TALLY_KAFKA_BROKER) and stops every program at start; one on it
 * that a given program does not use is ignored, so one environment file can
 * serve all services. */
static const char *const known_variables[] = {
    "TALLY_DATABASE_URL", "TALLY_KAFKA_BROKERS", "TALLY_KAFKA_TOPIC", "TALLY_KAFKA_DLQ_TOPIC",
    "TALLY_KAFKA_GROUP", "TALLY_HTTP_ADDR", "TALLY_ADMIN_TOKEN", "TALLY_STRIPE_API_BASE",
    "TALLY_STRIPE_API_KEY", "TALLY_STRIPE_API_KEY_FILE", "TALLY_STRIPE_MODE",
    "TALLY_STRIPE_VERSION", "TALLY_METRICS_ADDR", "TALLY_LOG_LEVEL", "TALLY_BATCH_MAX_EVENTS",
    "TALLY_BATCH_MAX_WAIT_MS", "TALLY_LATENESS_DAYS", "TALLY_MAX_EVENT_BYTES",
    "TALLY_KEY_REFRESH_MS", "TALLY_REPORT_INTERVAL_S", "TALLY_REPORT_RATE_LIMIT",
    "TALLY_REPORT_CONCURRENCY", "TALLY_REPORT_SETTLE_S", "TALLY_REPORT_LOOKBACK_DAYS",
    "TALLY_STRIPE_TIMEOUT_MS", "TALLY_REPORT_NAMESPACE", "TALLY_STATE_DIR", "TALLY_BIN_DIR", "TALLY_DEVBROKER_PARTITIONS",
};

static bool is_known_variable(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof known_variables / sizeof known_variables[0]; i++) {
        if (strlen(known_variables[i]) == len && strncmp(known_variables[i], name, len) == 0)
            return true;
    }
    return false;
}

static bool parse_bool(const char *text, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(text, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcmp(text, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

static const char *setting_name(const cfg_setting *s, char *buf, size_t size)
{
    if (s->env)
        snprintf(buf, size, "%s (--%s)", s->env, s->flag);
    else
        snprintf(buf, size, "--%s", s->flag);
    return buf;
}

static bool apply_value(const cfg_setting *s, const char *value, char *err, size_t err_size)
{
    char name[128];
    char *end = NULL;
    switch (s->type) {
    case CFG_STRING:
        *(const char **)s->target = value;
        return true;
    case CFG_INT: {
        errno = 0;
        long long n = strtoll(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' || (double)n < s->min || (double)n > s->max) {
            snprintf(err, err_size, "%s must be a whole number from %.0f to %.0f, got \"%.40s\"",
                     setting_name(s, name, sizeof name), s->min, s->max,
                     s->secret ? "(hidden)" : value);
            return false;
        }
        *(long long *)s->target = n;
        return true;
    }
    case CFG_DOUBLE: {
        errno = 0;
        double d = strtod(value, &end);
        if (errno != 0 || end == value || *end != '\0' || !isfinite(d) || d < s->min ||
            d > s->max) {
            snprintf(err, err_size, "%s must be a number from %g to %g, got \"%.40s\"",
                     setting_name(s, name, sizeof name), s->min, s->max,
                     s->secret ? "(hidden)" : value);
            return false;
        }
        *(double *)s->target = d;
        return true;
    }
    case CFG_BOOL:
        if (!parse_bool(value, (bool *)s->target)) {
            snprintf(err, err_size, "%s must be true or false, got \"%.40s\"",
                     setting_name(s, name, sizeof name), s->secret ? "(hidden)" : value);
            return false;
        }
        return true;
    }
    return false;
}

cfg_result cfg_load(const cfg_setting *table, size_t count, int argc, char **argv,
                    const char **positional, int max_positional, int *positional_count,
                    char *err, size_t err_size)
{
    bool seen[64] = {false};
    if (count > sizeof seen / sizeof seen[0]) {
        snprintf(err, err_size, "internal: too many settings");
        return CFG_ERROR;
    }
    if (positional_count)
        *positional_count = 0;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0)
            return CFG_HELP;
    }

    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "TALLY_", 6) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        size_t len = eq ? (size_t)(eq - *e) : strlen(*e);
        if (!is_known_variable(*e, len)) {
            snprintf(err, err_size, "unknown setting %.*s in the environment (see --help)",
                     (int)(len > 64 ? 64 : len), *e);
            return CFG_ERROR;
        }
    }
    for (size_t i = 0; i < count; i++) {
        const cfg_setting *s = &table[i];
        const char *value = s->env ? getenv(s->env) : NULL;
        if (value != NULL && value[0] == '\0')
            value = NULL; /* an empty variable means "not set" */
        if (value == NULL)
            value = s->default_value;
        if (value == NULL)
            continue;
        if (!apply_value(s, value, err, err_size))
            return CFG_ERROR;
        seen[i] = true;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return CFG_HELP;
        if (strncmp(arg, "--", 2) != 0) {
            if (positional == NULL || *positional_count >= max_positional) {
                snprintf(err, err_size, "unexpected argument \"%.60s\" (see --help)", arg);
                return CFG_ERROR;
            }
            positional[(*positional_count)++] = arg;
            continue;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        size_t i;
        for (i = 0; i < count; i++) {
            if (strlen(table[i].flag) == name_len && strncmp(table[i].flag, name, name_len) == 0)
                break;
        }
        if (i == count) {
            snprintf(err, err_size, "unknown option --%.*s (see --help)", (int)(name_len > 60 ? 60 : name_len), name);
            return CFG_ERROR;
        }
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (table[i].type == CFG_BOOL) {
            value = "true";
        } else if (a + 1 < argc) {
            value = argv[++a];
        } else {
            snprintf(err, err_size, "option --%s needs a value", table[i].flag);
            return CFG_ERROR;
        }
        if (!apply_value(&table[i], value, err, err_size))
            return CFG_ERROR;
        seen[i] = true;
    }
    for (size_t i = 0; i < count; i++) {
        char name[128];
        if (table[i].required && !seen[i]) {
            snprintf(err, err_size, "%s is required: %s", setting_name(&table[i], name, sizeof name),
                     table[i].help);
            return CFG_ERROR;
        }
    }
    return CFG_OK;
}

void cfg_print_help(FILE *out, const char *usage, const char *summary, const cfg_setting *table,
                    size_t count)
{
    fprintf(out, "usage: %s\n\n%s\n\nSettings (environment variable, or the flag, which wins):\n",
            usage, summary);
    for (size_t i = 0; i < count; i++) {
        const cfg_setting *s = &table[i];
        char left[96];
        if (s->env)
            snprintf(left, sizeof left, "%s, --%s", s->env, s->flag);
        else
            snprintf(left, sizeof left, "--%s", s->flag);
        fprintf(out, "  %s\n      %s", left, s->help);
        if (s->required)
            fprintf(out, " (required)");
        else if (s->default_value && !s->secret)
            fprintf(out, " [default: %s]", s->default_value);
        fprintf(out, "\n");
    }
}

int cfg_start(const char *program, const char *usage, const char *summary,
              const cfg_setting *table, size_t count, int argc, char **argv,
              const char *const *log_level_text, log_level *level)
{
    char err[600];
    switch (cfg_load(table, count, argc, argv, NULL, 0, NULL, err, sizeof err)) {
    case CFG_HELP:
        cfg_print_help(stdout, usage, summary, table, count);
        return 0;
    case CFG_ERROR:
        fprintf(stderr, "%s: %s\n", program, err);
        return 2;
    case CFG_OK:
        break;
    }
    if (!log_parse_level(*log_level_text, level)) {
        fprintf(stderr, "%s: TALLY_LOG_LEVEL (--log-level) must be debug, info, warn or error, "
                        "got \"%.40s\"\n", program, *log_level_text);
        return 2;
    }
    return -1;
}
