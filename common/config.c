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
    "TALLY_BATCH_MAX_WAIT_MS", "TALLY_FETCH_WAIT_MS", "TALLY_LATENESS_DAYS", "TALLY_MAX_EVENT_BYTES",
    "TALLY_KEY_REFRESH_MS", "TALLY_API_REPLICAS_SHARED", "TALLY_API_QUOTA_LEASE_MAX",
    "TALLY_API_REPLICA_HEARTBEAT_MS", "TALLY_API_REPLICA_TTL_MS", "TALLY_REPORT_INTERVAL_S", "TALLY_REPORT_RATE_LIMIT",
    "TALLY_REPORT_CONCURRENCY", "TALLY_REPORT_SETTLE_S", "TALLY_REPORT_LOOKBACK_DAYS",
    "TALLY_STRIPE_TIMEOUT_MS", "TALLY_REPORT_NAMESPACE", "TALLY_STATE_DIR", "TALLY_BIN_DIR",
    "TALLY_DEVBROKER_PARTITIONS", "TALLY_KEY_HMAC_SECRET", "TALLY_KAFKA_SECURITY_PROTOCOL",
    "TALLY_KAFKA_SASL_MECHANISM", "TALLY_KAFKA_SASL_USERNAME", "TALLY_KAFKA_SASL_PASSWORD",
    "TALLY_KAFKA_SSL_CA_LOCATION", "TALLY_PUBLIC_METRICS", "TALLY_TLS_CERT_FILE",
    "TALLY_TLS_KEY_FILE", "TALLY_HTTP_PER_IP_LIMIT", "TALLY_HTTP_REQUEST_TIMEOUT_S",
    "TALLY_HTTP_IDLE_TIMEOUT_S", "TALLY_CORS_ORIGINS", "TALLY_PUBLIC_URL",
    /* tally-ingest */
    "TALLY_INGEST_ADDR", "TALLY_INGEST_TOKEN", "TALLY_INGEST_MAX_BATCH_EVENTS",
    "TALLY_INGEST_MAX_BODY_BYTES", "TALLY_INGEST_PRODUCE_TIMEOUT_MS",
    /* tally-api's AWS usage-plan listener */
    "TALLY_AWS_ADDR", "TALLY_AWS_CREDENTIALS", "TALLY_AWS_CREDENTIALS_FILE", "TALLY_AWS_REGION",
    /* tally-reporter's webhook delivery (issue #12) */
    "TALLY_WEBHOOKS", "TALLY_WEBHOOK_TIMEOUT_MS", "TALLY_WEBHOOK_CONCURRENCY",
    "TALLY_WEBHOOK_ENDPOINT_CONCURRENCY", "TALLY_WEBHOOK_POLL_MS", "TALLY_WEBHOOK_RETRY_BASE_MS",
    "TALLY_WEBHOOK_RETRY_MAX_DELAY_MS", "TALLY_WEBHOOK_RETRY_WINDOW_S",
    "TALLY_WEBHOOK_ALLOW_NETWORKS",
};

/* A secret setting NAME may instead be given as NAME_FILE (environment) or
 * --flag-file (command line): the path of a file holding it, e.g. a Docker
 * or Kubernetes secret, so the value never sits in the environment or in ps. */
#define FILE_SUFFIX "_FILE"
#define FLAG_FILE_SUFFIX "-file"
/* Larger than any key, token or connection string; bounds what a wrong path
 * (a log file, /dev/zero) can make us read. */
#define SECRET_FILE_MAX 16384
#define SECRET_FILE_MAX_TEXT "16384"

/* The text of every secret file read. Targets borrow it, as they borrow
 * values from environ and argv, so it lives as long as the process; the list
 * keeps it reachable (leak checkers stay quiet). */
typedef struct file_value {
    struct file_value *next;
    char text[];
} file_value;
static file_value *file_values;

static bool has_suffix(const char *name, size_t len, const char *suffix)
{
    size_t suffix_len = strlen(suffix);
    return len > suffix_len && memcmp(name + len - suffix_len, suffix, suffix_len) == 0;
}

static bool is_listed_variable(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof known_variables / sizeof known_variables[0]; i++) {
        if (strlen(known_variables[i]) == len && strncmp(known_variables[i], name, len) == 0)
            return true;
    }
    return false;
}

/* Listed, or NAME_FILE of a listed NAME (whether NAME is a secret is for the
 * program's own table to say: see load_environment). */
static bool is_known_variable(const char *name, size_t len)
{
    if (is_listed_variable(name, len))
        return true;
    return has_suffix(name, len, FILE_SUFFIX) &&
           is_listed_variable(name, len - strlen(FILE_SUFFIX));
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

static const char *nonempty_getenv(const char *name)
{
    const char *value = getenv(name);
    return value != NULL && value[0] != '\0' ? value : NULL; /* empty means "not set" */
}

/* The index of the setting whose flag is name[0..len), or count. */
static size_t find_flag(const cfg_setting *table, size_t count, const char *name, size_t len)
{
    for (size_t i = 0; i < count; i++) {
        if (strlen(table[i].flag) == len && strncmp(table[i].flag, name, len) == 0)
            return i;
    }
    return count;
}

static bool table_has_variable(const cfg_setting *table, size_t count, const char *env)
{
    for (size_t i = 0; i < count; i++) {
        if (table[i].env && strcmp(table[i].env, env) == 0)
            return true;
    }
    return false;
}

/* Reads the file at `path` and applies its text, less trailing line breaks,
 * to s. `source` ("TALLY_X_FILE" or "--x-file") and the path name the
 * setting in errors; the file's content never appears in them. */
static bool apply_file(const cfg_setting *s, const char *source, const char *path, char *err,
                       size_t err_size)
{
    char text[SECRET_FILE_MAX + 1];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, err_size, "%s: cannot read the file \"%.200s\": %s", source, path,
                 strerror(errno));
        return false;
    }
    size_t len = fread(text, 1, sizeof text, f);
    int read_error = ferror(f) ? errno : 0;
    fclose(f);
    const char *problem = NULL;
    if (read_error != 0)
        problem = strerror(read_error);
    else if (len > SECRET_FILE_MAX)
        problem = "longer than " SECRET_FILE_MAX_TEXT " bytes";
    while (problem == NULL && len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    if (problem == NULL && len == 0)
        problem = "empty";
    else if (problem == NULL && memchr(text, '\0', len) != NULL)
        problem = "holds a NUL byte";
    file_value *value = problem == NULL ? malloc(sizeof *value + len + 1) : NULL;
    if (problem == NULL && value == NULL)
        problem = "out of memory";
    if (value != NULL) {
        memcpy(value->text, text, len);
        value->text[len] = '\0';
        value->next = file_values;
        file_values = value;
    }
    explicit_bzero(text, sizeof text); /* no copy of the secret left on the stack */
    if (problem != NULL) {
        snprintf(err, err_size, "%s: the file \"%.200s\" is not usable: %s", source, path,
                 problem);
        return false;
    }
    return apply_value(s, value->text, err, err_size);
}

/* Writes NAME_FILE for s's variable NAME into buf. False when s has no
 * variable, or the table declares NAME_FILE as a setting of its own. */
static bool file_variable_name(const cfg_setting *table, size_t count, const cfg_setting *s,
                               char *buf, size_t size)
{
    if (s->env == NULL)
        return false;
    int len = snprintf(buf, size, "%s" FILE_SUFFIX, s->env);
    return len > 0 && (size_t)len < size && !table_has_variable(table, count, buf);
}

/* Applies s from the environment: its variable, or for a secret NAME the
 * file NAME_FILE names, or its default. *seen tells whether any of them gave
 * a value. */
static bool load_from_environment(const cfg_setting *table, size_t count, const cfg_setting *s,
                                  bool *seen, char *err, size_t err_size)
{
    const char *value = s->env ? nonempty_getenv(s->env) : NULL;
    char file_variable[128];
    const char *path = NULL;
    if (file_variable_name(table, count, s, file_variable, sizeof file_variable))
        path = nonempty_getenv(file_variable);
    if (path != NULL && !s->secret) {
        snprintf(err, err_size, "%s: only secret settings are read from files; set %s itself",
                 file_variable, s->env);
        return false;
    }
    if (path != NULL && value != NULL) {
        snprintf(err, err_size, "%s and %s are both set: set one, not both", s->env,
                 file_variable);
        return false;
    }
    if (path != NULL) {
        *seen = apply_file(s, file_variable, path, err, err_size);
        return *seen;
    }
    if (value == NULL)
        value = s->default_value;
    if (value == NULL)
        return true;
    *seen = apply_value(s, value, err, err_size);
    return *seen;
}

/* How a flag gave a setting its value: --x or --x-file (both is an error). */
enum { FLAG_NONE, FLAG_VALUE, FLAG_FILE };

/* Applies one --name[=value] (value from argv[*a + 1] otherwise) and sets
 * *applied to its setting's index. --x-file of a secret --x reads the value
 * from that file. */
static bool apply_flag(const cfg_setting *table, size_t count, int argc, char **argv, int *a,
                       unsigned char *flag_kind, size_t *applied, char *err, size_t err_size)
{
    const char *name = argv[*a] + 2;
    const char *eq = strchr(name, '=');
    size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
    size_t i = find_flag(table, count, name, name_len);
    unsigned char kind = FLAG_VALUE;
    if (i == count && has_suffix(name, name_len, FLAG_FILE_SUFFIX)) {
        i = find_flag(table, count, name, name_len - strlen(FLAG_FILE_SUFFIX));
        if (i < count && !table[i].secret)
            i = count;
        kind = FLAG_FILE;
    }
    if (i == count) {
        snprintf(err, err_size, "unknown option --%.*s (see --help)",
                 (int)(name_len > 60 ? 60 : name_len), name);
        return false;
    }
    const char *value;
    if (eq) {
        value = eq + 1;
    } else if (table[i].type == CFG_BOOL && kind == FLAG_VALUE) {
        value = "true";
    } else if (*a + 1 < argc) {
        value = argv[++*a];
    } else {
        snprintf(err, err_size, "option --%.*s needs a value", (int)(name_len > 60 ? 60 : name_len),
                 name);
        return false;
    }
    if (flag_kind[i] != FLAG_NONE && flag_kind[i] != kind) {
        snprintf(err, err_size, "--%s and --%s" FLAG_FILE_SUFFIX " are both given: give one, "
                 "not both", table[i].flag, table[i].flag);
        return false;
    }
    flag_kind[i] = kind;
    *applied = i;
    if (kind == FLAG_FILE) {
        char source[96];
        snprintf(source, sizeof source, "--%s" FLAG_FILE_SUFFIX, table[i].flag);
        return apply_file(&table[i], source, value, err, err_size);
    }
    return apply_value(&table[i], value, err, err_size);
}

cfg_result cfg_load(const cfg_setting *table, size_t count, int argc, char **argv,
                    const char **positional, int max_positional, int *positional_count,
                    char *err, size_t err_size)
{
    bool seen[64] = {false};
    unsigned char flag_kind[64] = {FLAG_NONE};
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
        if (!load_from_environment(table, count, &table[i], &seen[i], err, err_size))
            return CFG_ERROR;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0) {
            if (positional == NULL || *positional_count >= max_positional) {
                snprintf(err, err_size, "unexpected argument \"%.60s\" (see --help)", arg);
                return CFG_ERROR;
            }
            positional[(*positional_count)++] = arg;
            continue;
        }
        size_t applied;
        if (!apply_flag(table, count, argc, argv, &a, flag_kind, &applied, err, err_size))
            return CFG_ERROR;
        seen[applied] = true;
    }
    for (size_t i = 0; i < count; i++) {
        char name[128], file_variable[128];
        if (table[i].required && !seen[i]) {
            bool from_file = table[i].secret && file_variable_name(table, count, &table[i],
                                                                   file_variable,
                                                                   sizeof file_variable);
            snprintf(err, err_size, "%s%s%s is required: %s",
                     setting_name(&table[i], name, sizeof name), from_file ? " or " : "",
                     from_file ? file_variable : "", table[i].help);
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
        char file_variable[128];
        if (s->secret && file_variable_name(table, count, s, file_variable, sizeof file_variable))
            fprintf(out, "      or from a file (e.g. a Docker secret): %s, --%s" FLAG_FILE_SUFFIX
                         "\n", file_variable, s->flag);
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
