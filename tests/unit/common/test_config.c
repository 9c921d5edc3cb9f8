/* Unit tests for common/config: environment, flags, validation and help.
 * Each test starts and ends with no TALLY_* variable in the environment
 * (a checked fixture), so the tests also pass under CK_FORK=no. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "suites.h"

extern char **environ;

/* Targets, reset to sentinels before each test. */
static const char *database_url;
static long long batch_max_events;
static bool verbose;
static double rate_limit;
static const char *admin_token;
static const char *state_dir;

static const cfg_setting settings[] = {
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &database_url, NULL, true, false, 0, 0,
     "PostgreSQL connection URL"},
    {"TALLY_BATCH_MAX_EVENTS", "batch-max-events", CFG_INT, &batch_max_events, "500", false,
     false, 1, 10000, "events per database transaction"},
    {NULL, "verbose", CFG_BOOL, &verbose, "false", false, false, 0, 0, "log every batch"},
    {"TALLY_REPORT_RATE_LIMIT", "rate-limit", CFG_DOUBLE, &rate_limit, "2.5", false, false, 0, 100,
     "Stripe requests per second"},
    {"TALLY_ADMIN_TOKEN", "admin-token", CFG_STRING, &admin_token, NULL, false, true, 0, 0,
     "bearer token of the admin API"},
    {"TALLY_STATE_DIR", "state-dir", CFG_STRING, &state_dir, "/var/lib/tally", false, false, 0, 0,
     "directory for local state"},
};
#define SETTING_COUNT (sizeof settings / sizeof settings[0])

static const char *positional[4];
static int positional_count;
static char err[512];

/* Removes every TALLY_* variable; unsetenv() changes environ, so rescan. */
static void clear_tally_environment(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; e && *e; e++) {
            if (strncmp(*e, "TALLY_", 6) == 0) {
                const char *eq = strchr(*e, '=');
                size_t len = eq ? (size_t)(eq - *e) : strlen(*e);
                if (len >= sizeof name)
                    len = sizeof name - 1;
                memcpy(name, *e, len);
                name[len] = '\0';
                break;
            }
        }
        if (name[0] == '\0')
            return;
        ck_assert_int_eq(unsetenv(name), 0);
    }
}

static void setup(void)
{
    clear_tally_environment();
    database_url = NULL;
    batch_max_events = -12345;
    verbose = false;
    rate_limit = -1.0;
    admin_token = NULL;
    state_dir = NULL;
    memset(positional, 0, sizeof positional);
    positional_count = -1;
    snprintf(err, sizeof err, "(no error)");
}

static void teardown(void)
{
    clear_tally_environment();
    unsetenv("TALLYX");
    unsetenv("MY_TALLY_THING");
}

static void set(const char *name, const char *value)
{
    ck_assert_int_eq(setenv(name, value, 1), 0);
}

/* Runs cfg_load() on the settings with argv = {"tally-test", args..., NULL}. */
static cfg_result load_table(const cfg_setting *table, size_t count, const char *const *args)
{
    const char *argv[32] = {"tally-test"};
    int argc = 1;
    for (; args != NULL && args[argc - 1] != NULL; argc++) {
        ck_assert_int_lt(argc, 31);
        argv[argc] = args[argc - 1];
    }
    argv[argc] = NULL;
    return cfg_load(table, count, argc, (char **)argv, positional, 4, &positional_count, err,
                    sizeof err);
}

#define LOAD(...) load_table(settings, SETTING_COUNT, (const char *const[]){__VA_ARGS__, NULL})
#define LOAD_NO_ARGS() load_table(settings, SETTING_COUNT, NULL)

static void assert_error_mentions(const char *needle)
{
    ck_assert_msg(strstr(err, needle) != NULL, "error \"%s\" does not mention \"%s\"", err,
                  needle);
}

/* ---- sources and precedence ---- */

START_TEST(defaults_apply)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_OK);
    ck_assert_str_eq(database_url, "postgres://env/tally");
    ck_assert_int_eq(batch_max_events, 500);
    ck_assert(!verbose);
    ck_assert_double_eq(rate_limit, 2.5);
    ck_assert_ptr_null(admin_token); /* no default, not set: untouched */
    ck_assert_str_eq(state_dir, "/var/lib/tally");
    ck_assert_int_eq(positional_count, 0);
}
END_TEST

START_TEST(environment_values)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    set("TALLY_BATCH_MAX_EVENTS", "42");
    set("TALLY_REPORT_RATE_LIMIT", "7.25");
    set("TALLY_ADMIN_TOKEN", "s3cret");
    set("TALLY_STATE_DIR", "/srv/tally");
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_OK);
    ck_assert_int_eq(batch_max_events, 42);
    ck_assert_double_eq(rate_limit, 7.25);
    ck_assert_str_eq(admin_token, "s3cret");
    ck_assert_str_eq(state_dir, "/srv/tally");
}
END_TEST

START_TEST(flag_with_equals_overrides_environment)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    set("TALLY_BATCH_MAX_EVENTS", "42");
    ck_assert_int_eq(LOAD("--batch-max-events=77", "--database-url=postgres://u:p@h/db?a=b"),
                     CFG_OK);
    ck_assert_int_eq(batch_max_events, 77);
    /* Only the first '=' separates name and value. */
    ck_assert_str_eq(database_url, "postgres://u:p@h/db?a=b");
}
END_TEST

START_TEST(flag_with_separate_value_overrides_environment)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    set("TALLY_BATCH_MAX_EVENTS", "42");
    set("TALLY_REPORT_RATE_LIMIT", "7.25");
    ck_assert_int_eq(LOAD("--batch-max-events", "88", "--rate-limit", "0.5", "--state-dir", "/x"),
                     CFG_OK);
    ck_assert_int_eq(batch_max_events, 88);
    ck_assert_double_eq(rate_limit, 0.5);
    ck_assert_str_eq(state_dir, "/x");
    ck_assert_int_eq(positional_count, 0); /* the values were not positionals */
}
END_TEST

START_TEST(last_flag_wins)
{
    ck_assert_int_eq(LOAD("--database-url=a", "--batch-max-events=1", "--batch-max-events", "2",
                          "--database-url=b"),
                     CFG_OK);
    ck_assert_int_eq(batch_max_events, 2);
    ck_assert_str_eq(database_url, "b");
}
END_TEST

START_TEST(empty_environment_value_means_unset)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    set("TALLY_BATCH_MAX_EVENTS", "");
    set("TALLY_STATE_DIR", "");
    set("TALLY_ADMIN_TOKEN", "");
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_OK);
    ck_assert_int_eq(batch_max_events, 500);
    ck_assert_str_eq(state_dir, "/var/lib/tally");
    ck_assert_ptr_null(admin_token);
    /* An empty required variable is missing. */
    set("TALLY_DATABASE_URL", "");
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_ERROR);
    assert_error_mentions("TALLY_DATABASE_URL");
    assert_error_mentions("required");
}
END_TEST

/* ---- booleans ---- */

START_TEST(bool_flags)
{
    ck_assert_int_eq(LOAD("--database-url=x", "--verbose"), CFG_OK);
    ck_assert(verbose);
    static const char *const truthy[] = {"--verbose=true", "--verbose=1", "--verbose=yes",
                                         "--verbose=on"};
    static const char *const falsy[] = {"--verbose=false", "--verbose=0", "--verbose=no",
                                        "--verbose=off"};
    for (size_t i = 0; i < 4; i++) {
        verbose = false;
        ck_assert_int_eq(LOAD("--database-url=x", truthy[i]), CFG_OK);
        ck_assert_msg(verbose, "%s", truthy[i]);
        verbose = true;
        ck_assert_int_eq(LOAD("--database-url=x", falsy[i]), CFG_OK);
        ck_assert_msg(!verbose, "%s", falsy[i]);
    }
    /* A bare boolean flag takes no value: the next word is positional. */
    verbose = false;
    ck_assert_int_eq(LOAD("--database-url=x", "--verbose", "report.csv"), CFG_OK);
    ck_assert(verbose);
    ck_assert_int_eq(positional_count, 1);
    ck_assert_str_eq(positional[0], "report.csv");
}
END_TEST

START_TEST(bool_rejects_other_words)
{
    static const char *const bad[] = {"--verbose=maybe", "--verbose=", "--verbose=2",
                                      "--verbose=truthy"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(LOAD("--database-url=x", bad[i]), CFG_ERROR);
        assert_error_mentions("--verbose");
    }
}
END_TEST

/* ---- numbers ---- */

START_TEST(int_bounds_inclusive)
{
    ck_assert_int_eq(LOAD("--database-url=x", "--batch-max-events=1"), CFG_OK);
    ck_assert_int_eq(batch_max_events, 1);
    ck_assert_int_eq(LOAD("--database-url=x", "--batch-max-events=10000"), CFG_OK);
    ck_assert_int_eq(batch_max_events, 10000);
}
END_TEST

START_TEST(int_rejects_out_of_range_and_garbage)
{
    static const char *const bad[] = {
        "--batch-max-events=0", "--batch-max-events=10001", "--batch-max-events=-5",
        "--batch-max-events=12abc", "--batch-max-events=", "--batch-max-events=1e3",
        "--batch-max-events=99999999999999999999", "--batch-max-events=0x10",
        "--batch-max-events=5.0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(LOAD("--database-url=x", bad[i]) == CFG_ERROR, "accepted %s", bad[i]);
        assert_error_mentions("TALLY_BATCH_MAX_EVENTS");
        assert_error_mentions("--batch-max-events");
        assert_error_mentions("1 to 10000");
    }
    /* From the environment too. */
    set("TALLY_BATCH_MAX_EVENTS", "10001");
    ck_assert_int_eq(LOAD("--database-url=x"), CFG_ERROR);
    assert_error_mentions("TALLY_BATCH_MAX_EVENTS");
    assert_error_mentions("10001");
}
END_TEST

START_TEST(double_bounds)
{
    ck_assert_int_eq(LOAD("--database-url=x", "--rate-limit=0"), CFG_OK);
    ck_assert_double_eq(rate_limit, 0.0);
    ck_assert_int_eq(LOAD("--database-url=x", "--rate-limit=100"), CFG_OK);
    ck_assert_double_eq(rate_limit, 100.0);
    ck_assert_int_eq(LOAD("--database-url=x", "--rate-limit=1e1"), CFG_OK);
    ck_assert_double_eq(rate_limit, 10.0);
    static const char *const bad[] = {"--rate-limit=100.5", "--rate-limit=-0.1",
                                      "--rate-limit=nan", "--rate-limit=inf",
                                      "--rate-limit=abc", "--rate-limit=", "--rate-limit=1.5x",
                                      "--rate-limit=1e999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(LOAD("--database-url=x", bad[i]) == CFG_ERROR, "accepted %s", bad[i]);
        assert_error_mentions("TALLY_REPORT_RATE_LIMIT");
    }
}
END_TEST

/* ---- errors ---- */

START_TEST(unknown_flag)
{
    ck_assert_int_eq(LOAD("--database-url=x", "--bogus=1"), CFG_ERROR);
    assert_error_mentions("--bogus");
    ck_assert_int_eq(LOAD("--database-url=x", "--bogus"), CFG_ERROR);
    assert_error_mentions("--bogus");
    /* A prefix of a real flag is not that flag. */
    ck_assert_int_eq(LOAD("--database-url=x", "--batch=5"), CFG_ERROR);
    assert_error_mentions("--batch");
    ck_assert_int_eq(LOAD("--database-url=x", "--"), CFG_ERROR);
}
END_TEST

START_TEST(flag_without_value)
{
    ck_assert_int_eq(LOAD("--database-url=x", "--batch-max-events"), CFG_ERROR);
    assert_error_mentions("--batch-max-events");
    ck_assert_int_eq(LOAD("--database-url"), CFG_ERROR);
    assert_error_mentions("--database-url");
}
END_TEST

START_TEST(unknown_tally_variable)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    set("TALLY_KAFKA_BROKER", "broker-value-xyz"); /* typo of TALLY_KAFKA_BROKERS */
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_ERROR);
    assert_error_mentions("TALLY_KAFKA_BROKER");
    ck_assert_ptr_null(strstr(err, "broker-value-xyz")); /* the value may be a secret */
    ck_assert_int_eq(unsetenv("TALLY_KAFKA_BROKER"), 0);
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_OK);
}
END_TEST

START_TEST(other_variables_are_ignored)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    /* Known to Tally but not to this program: fine (one env file for all). */
    set("TALLY_STRIPE_API_KEY", "sk_test_x");
    set("TALLY_KAFKA_BROKERS", "localhost:9092");
    /* Not TALLY_-prefixed. */
    set("TALLYX", "1");
    set("MY_TALLY_THING", "1");
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_OK);
}
END_TEST

START_TEST(required_setting_missing)
{
    ck_assert_int_eq(LOAD_NO_ARGS(), CFG_ERROR);
    assert_error_mentions("TALLY_DATABASE_URL");
    assert_error_mentions("--database-url");
    assert_error_mentions("required");
    /* The flag alone satisfies it. */
    ck_assert_int_eq(LOAD("--database-url", "postgres://flag/tally"), CFG_OK);
    ck_assert_str_eq(database_url, "postgres://flag/tally");
}
END_TEST

START_TEST(too_many_settings)
{
    static long long targets[65];
    cfg_setting many[65];
    for (size_t i = 0; i < 65; i++)
        many[i] = (cfg_setting){NULL, "n", CFG_INT, &targets[i], "1", false, false, 0, 9, "n"};
    ck_assert_int_eq(load_table(many, 65, NULL), CFG_ERROR);
    ck_assert_int_eq(load_table(many, 64, NULL), CFG_OK);
}
END_TEST

/* ---- positionals and help ---- */

START_TEST(positional_arguments)
{
    ck_assert_int_eq(LOAD("first", "--database-url=x", "second", "-v"), CFG_OK);
    ck_assert_int_eq(positional_count, 3);
    ck_assert_str_eq(positional[0], "first");
    ck_assert_str_eq(positional[1], "second");
    ck_assert_str_eq(positional[2], "-v"); /* single dash: not a flag */
    ck_assert_int_eq(LOAD("--database-url=x", "a", "b", "c", "d"), CFG_OK);
    ck_assert_int_eq(positional_count, 4);
    ck_assert_int_eq(LOAD("--database-url=x", "a", "b", "c", "d", "e"), CFG_ERROR);
    assert_error_mentions("\"e\"");
    /* A program that takes none. */
    const char *argv[] = {"tally-test", "--database-url=x", "stray", NULL};
    int count = 99;
    ck_assert_int_eq(cfg_load(settings, SETTING_COUNT, 3, (char **)argv, NULL, 0, &count, err,
                              sizeof err),
                     CFG_ERROR);
    assert_error_mentions("stray");
    ck_assert_int_eq(cfg_load(settings, SETTING_COUNT, 2, (char **)argv, NULL, 0, &count, err,
                              sizeof err),
                     CFG_OK);
    ck_assert_int_eq(count, 0);
}
END_TEST

START_TEST(help_flag)
{
    ck_assert_int_eq(LOAD("--help"), CFG_HELP); /* even with the required setting missing */
    ck_assert_int_eq(LOAD("-h"), CFG_HELP);
    ck_assert_int_eq(LOAD("--database-url=x", "pos", "--help"), CFG_HELP);
}
END_TEST

/* Captures cfg_print_help() output; the caller frees. */
static char *help_text(const cfg_setting *table, size_t count)
{
    FILE *out = tmpfile();
    ck_assert_ptr_nonnull(out);
    cfg_print_help(out, "tally-test [options]", "Counts things.", table, count);
    long size = ftell(out);
    ck_assert_int_gt(size, 0);
    rewind(out);
    char *text = calloc((size_t)size + 1, 1);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(fread(text, 1, (size_t)size, out), (size_t)size);
    fclose(out);
    return text;
}

START_TEST(help_lists_every_setting)
{
    char *text = help_text(settings, SETTING_COUNT);
    ck_assert_ptr_nonnull(strstr(text, "usage: tally-test [options]"));
    ck_assert_ptr_nonnull(strstr(text, "Counts things."));
    for (size_t i = 0; i < SETTING_COUNT; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", settings[i].flag);
        ck_assert_msg(strstr(text, flag) != NULL, "help lacks %s", flag);
        ck_assert_ptr_nonnull(strstr(text, settings[i].help));
        if (settings[i].env)
            ck_assert_ptr_nonnull(strstr(text, settings[i].env));
    }
    ck_assert_ptr_nonnull(strstr(text, "PostgreSQL connection URL (required)"));
    ck_assert_ptr_nonnull(strstr(text, "[default: 500]"));
    ck_assert_ptr_nonnull(strstr(text, "[default: /var/lib/tally]"));
    free(text);
}
END_TEST

/* ---- secrets: "never echoed in errors or help" (config.h) ---- */

static long long secret_number;
static double secret_ratio;
static bool secret_switch;
static const char *secret_key;

static const cfg_setting secret_settings[] = {
    {"TALLY_KEY_REFRESH_MS", "secret-number", CFG_INT, &secret_number, NULL, false, true, 0, 10,
     "a secret integer"},
    {NULL, "secret-ratio", CFG_DOUBLE, &secret_ratio, NULL, false, true, 0, 1, "a secret ratio"},
    {NULL, "secret-switch", CFG_BOOL, &secret_switch, NULL, false, true, 0, 0, "a secret bool"},
    {"TALLY_STRIPE_API_KEY", "stripe-api-key", CFG_STRING, &secret_key, "sk_default_hunter2",
     false, true, 0, 0, "Stripe secret key"},
};
#define SECRET_COUNT (sizeof secret_settings / sizeof secret_settings[0])

START_TEST(secret_int_value_not_echoed)
{
    const char *const args[] = {"--secret-number=hunter2", NULL};
    ck_assert_int_eq(load_table(secret_settings, SECRET_COUNT, args), CFG_ERROR);
    assert_error_mentions("--secret-number");
    ck_assert_msg(strstr(err, "hunter2") == NULL, "secret echoed: %s", err);
    set("TALLY_KEY_REFRESH_MS", "4242424242");
    ck_assert_int_eq(load_table(secret_settings, SECRET_COUNT, NULL), CFG_ERROR);
    ck_assert_msg(strstr(err, "4242424242") == NULL, "secret echoed: %s", err);
}
END_TEST

START_TEST(secret_double_value_not_echoed)
{
    const char *const args[] = {"--secret-ratio=hunter2", NULL};
    ck_assert_int_eq(load_table(secret_settings, SECRET_COUNT, args), CFG_ERROR);
    assert_error_mentions("--secret-ratio");
    ck_assert_msg(strstr(err, "hunter2") == NULL, "secret echoed: %s", err);
}
END_TEST

START_TEST(secret_bool_value_not_echoed)
{
    const char *const args[] = {"--secret-switch=hunter2", NULL};
    ck_assert_int_eq(load_table(secret_settings, SECRET_COUNT, args), CFG_ERROR);
    assert_error_mentions("--secret-switch");
    ck_assert_msg(strstr(err, "hunter2") == NULL, "secret echoed: %s", err);
}
END_TEST

START_TEST(secret_default_not_in_help)
{
    char *text = help_text(secret_settings, SECRET_COUNT);
    bool listed = strstr(text, "--stripe-api-key") != NULL;
    bool echoed = strstr(text, "hunter2") != NULL;
    free(text); /* before asserting: a failure must not leak under CK_FORK=no */
    ck_assert(listed);
    ck_assert_msg(!echoed, "the secret default \"sk_default_hunter2\" is printed by help");
}
END_TEST

/* ---- secrets from files: NAME_FILE and --flag-file ---- */

static const char *file_database_url, *file_admin_token, *file_state_dir, *own_key, *own_key_file;
static long long file_pin;

static const cfg_setting file_settings[] = {
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &file_database_url, NULL, true, true, 0, 0,
     "libpq connection string"},
    {"TALLY_ADMIN_TOKEN", "admin-token", CFG_STRING, &file_admin_token, NULL, false, true, 0, 0,
     "bearer token of the admin API"},
    {"TALLY_KEY_REFRESH_MS", "pin", CFG_INT, &file_pin, NULL, false, true, 0, 9999,
     "a secret number"},
    {"TALLY_STATE_DIR", "state-dir", CFG_STRING, &file_state_dir, NULL, false, false, 0, 0,
     "directory for local state"},
};
#define FILE_SETTING_COUNT (sizeof file_settings / sizeof file_settings[0])

/* A table that reads its own NAME_FILE (as the reporter once did): the
 * generic mechanism leaves both settings to it. */
static const cfg_setting own_file_settings[] = {
    {"TALLY_STRIPE_API_KEY", "stripe-api-key", CFG_STRING, &own_key, NULL, false, true, 0, 0,
     "key"},
    {"TALLY_STRIPE_API_KEY_FILE", "stripe-api-key-file", CFG_STRING, &own_key_file, NULL, false,
     false, 0, 0, "key file"},
};

static char secret_paths[4][64];
static int secret_path_count;

/* Writes len bytes into a new temporary file; returns its path (removed by
 * the teardown). */
static const char *secret_file(const char *content, size_t len)
{
    ck_assert_int_lt(secret_path_count, 4);
    char *path = secret_paths[secret_path_count++];
    snprintf(path, sizeof secret_paths[0], "/tmp/tally-test-secret-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, content, len), (ssize_t)len);
    ck_assert_int_eq(close(fd), 0);
    return path;
}
#define SECRET_FILE(text) secret_file(text, sizeof text - 1)

static void file_setup(void)
{
    setup();
    file_database_url = file_admin_token = file_state_dir = own_key = own_key_file = NULL;
    file_pin = -1;
    secret_path_count = 0;
}

static void file_teardown(void)
{
    for (int i = 0; i < secret_path_count; i++)
        unlink(secret_paths[i]);
    teardown();
}

static cfg_result load_files(const char *const *args)
{
    return load_table(file_settings, FILE_SETTING_COUNT, args);
}

static void assert_not_echoed(const char *secret)
{
    ck_assert_msg(strstr(err, secret) == NULL, "secret echoed: %s", err);
}

START_TEST(file_variable_gives_the_value_without_its_line_break)
{
    set("TALLY_DATABASE_URL_FILE", SECRET_FILE("postgres://db/tally?sslmode=verify-full\n"));
    set("TALLY_ADMIN_TOKEN_FILE", SECRET_FILE("s3cret-token\r\n"));
    ck_assert_int_eq(load_files(NULL), CFG_OK);
    ck_assert_str_eq(file_database_url, "postgres://db/tally?sslmode=verify-full");
    ck_assert_str_eq(file_admin_token, "s3cret-token");
}
END_TEST

START_TEST(file_keeps_inner_and_leading_whitespace)
{
    set("TALLY_DATABASE_URL_FILE", SECRET_FILE(" host=db\npassword=x y \n\n"));
    ck_assert_int_eq(load_files(NULL), CFG_OK);
    ck_assert_str_eq(file_database_url, " host=db\npassword=x y ");
}
END_TEST

START_TEST(file_satisfies_a_required_setting_and_required_names_it)
{
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_DATABASE_URL (--database-url) or TALLY_DATABASE_URL_FILE "
                          "is required");
}
END_TEST

START_TEST(variable_and_file_both_set_is_an_error)
{
    set("TALLY_DATABASE_URL", "postgres://db/tally");
    set("TALLY_ADMIN_TOKEN", "hunter2-in-env");
    set("TALLY_ADMIN_TOKEN_FILE", SECRET_FILE("hunter2-in-file"));
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_ADMIN_TOKEN and TALLY_ADMIN_TOKEN_FILE are both set");
    assert_not_echoed("hunter2");
}
END_TEST

START_TEST(empty_file_variable_means_unset)
{
    set("TALLY_DATABASE_URL", "postgres://db/tally");
    set("TALLY_DATABASE_URL_FILE", "");
    ck_assert_int_eq(load_files(NULL), CFG_OK);
    ck_assert_str_eq(file_database_url, "postgres://db/tally");
}
END_TEST

START_TEST(missing_file_names_setting_and_path)
{
    set("TALLY_DATABASE_URL_FILE", "/nonexistent/tally/db-url");
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_DATABASE_URL_FILE");
    assert_error_mentions("/nonexistent/tally/db-url");
    assert_error_mentions("No such file");
}
END_TEST

START_TEST(directory_is_not_a_secret_file)
{
    set("TALLY_DATABASE_URL_FILE", "/tmp");
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_DATABASE_URL_FILE");
}
END_TEST

START_TEST(empty_file_is_an_error)
{
    set("TALLY_DATABASE_URL_FILE", SECRET_FILE("\n"));
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_DATABASE_URL_FILE");
    assert_error_mentions("empty");
}
END_TEST

START_TEST(nul_byte_is_an_error_without_the_content)
{
    set("TALLY_DATABASE_URL_FILE", secret_file("hunter2\0rest", 12));
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("NUL");
    assert_not_echoed("hunter2");
}
END_TEST

START_TEST(oversized_file_is_an_error)
{
    static char big[16385];
    memset(big, 'a', sizeof big);
    set("TALLY_DATABASE_URL_FILE", secret_file(big, sizeof big));
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("longer than 16384 bytes");
    set("TALLY_DATABASE_URL_FILE", secret_file(big, sizeof big - 1)); /* exactly the limit */
    ck_assert_int_eq(load_files(NULL), CFG_OK);
    ck_assert_uint_eq(strlen(file_database_url), 16384);
}
END_TEST

START_TEST(invalid_file_value_is_not_echoed)
{
    set("TALLY_DATABASE_URL", "postgres://db/tally");
    set("TALLY_KEY_REFRESH_MS_FILE", SECRET_FILE("hunter2\n"));
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_KEY_REFRESH_MS");
    assert_not_echoed("hunter2");
}
END_TEST

START_TEST(file_of_a_non_secret_is_refused)
{
    set("TALLY_DATABASE_URL", "postgres://db/tally");
    set("TALLY_STATE_DIR_FILE", SECRET_FILE("/srv/tally"));
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("TALLY_STATE_DIR_FILE: only secret settings");
    const char *const args[] = {"--state-dir-file", "/dev/null", NULL};
    unsetenv("TALLY_STATE_DIR_FILE");
    ck_assert_int_eq(load_files(args), CFG_ERROR);
    assert_error_mentions("unknown option --state-dir-file");
}
END_TEST

START_TEST(file_variable_of_an_unknown_name_is_unknown)
{
    set("TALLY_DATABASE_URL", "postgres://db/tally");
    set("TALLY_DATABASE_URI_FILE", "/dev/null");
    ck_assert_int_eq(load_files(NULL), CFG_ERROR);
    assert_error_mentions("unknown setting TALLY_DATABASE_URI_FILE");
}
END_TEST

START_TEST(file_variable_of_another_programs_secret_is_ignored)
{
    /* one environment file for every service: the collector has no admin token */
    set("TALLY_DATABASE_URL", "postgres://db/tally");
    set("TALLY_STRIPE_API_KEY_FILE", "/nonexistent/stripe");
    ck_assert_int_eq(load_files(NULL), CFG_OK);
}
END_TEST

START_TEST(flag_file_overrides_the_environment)
{
    set("TALLY_DATABASE_URL", "postgres://env/tally");
    const char *path = SECRET_FILE("postgres://file/tally\n");
    const char *const args[] = {"--database-url-file", path, NULL};
    ck_assert_int_eq(load_files(args), CFG_OK);
    ck_assert_str_eq(file_database_url, "postgres://file/tally");
    char arg[128];
    snprintf(arg, sizeof arg, "--admin-token-file=%s", SECRET_FILE("tok"));
    const char *const with_equals[] = {arg, NULL};
    ck_assert_int_eq(load_files(with_equals), CFG_OK);
    ck_assert_str_eq(file_admin_token, "tok");
}
END_TEST

START_TEST(flag_and_flag_file_both_given_is_an_error)
{
    const char *path = SECRET_FILE("postgres://file/tally");
    const char *const args[] = {"--database-url=postgres://flag/tally", "--database-url-file",
                                path, NULL};
    ck_assert_int_eq(load_files(args), CFG_ERROR);
    assert_error_mentions("--database-url and --database-url-file are both given");
    const char *const missing[] = {"--admin-token-file", NULL};
    ck_assert_int_eq(load_files(missing), CFG_ERROR);
    assert_error_mentions("--admin-token-file needs a value");
}
END_TEST

START_TEST(table_declaring_its_own_file_setting_keeps_it)
{
    set("TALLY_STRIPE_API_KEY", "sk_env");
    set("TALLY_STRIPE_API_KEY_FILE", "/run/secrets/stripe");
    ck_assert_int_eq(load_table(own_file_settings, 2, NULL), CFG_OK);
    ck_assert_str_eq(own_key, "sk_env");
    ck_assert_str_eq(own_key_file, "/run/secrets/stripe");
}
END_TEST

START_TEST(help_tells_secrets_come_from_files)
{
    char *text = help_text(file_settings, FILE_SETTING_COUNT);
    bool database = strstr(text, "TALLY_DATABASE_URL_FILE, --database-url-file") != NULL;
    bool state_dir_file = strstr(text, "TALLY_STATE_DIR_FILE") != NULL;
    free(text);
    ck_assert(database);
    ck_assert(!state_dir_file);
}
END_TEST

Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *load = tcase_create("load");
    tcase_add_checked_fixture(load, setup, teardown);
    tcase_add_test(load, defaults_apply);
    tcase_add_test(load, environment_values);
    tcase_add_test(load, flag_with_equals_overrides_environment);
    tcase_add_test(load, flag_with_separate_value_overrides_environment);
    tcase_add_test(load, last_flag_wins);
    tcase_add_test(load, empty_environment_value_means_unset);
    tcase_add_test(load, bool_flags);
    tcase_add_test(load, bool_rejects_other_words);
    tcase_add_test(load, int_bounds_inclusive);
    tcase_add_test(load, int_rejects_out_of_range_and_garbage);
    tcase_add_test(load, double_bounds);
    tcase_add_test(load, unknown_flag);
    tcase_add_test(load, flag_without_value);
    tcase_add_test(load, unknown_tally_variable);
    tcase_add_test(load, other_variables_are_ignored);
    tcase_add_test(load, required_setting_missing);
    tcase_add_test(load, too_many_settings);
    tcase_add_test(load, positional_arguments);
    tcase_add_test(load, help_flag);
    tcase_add_test(load, help_lists_every_setting);
    suite_add_tcase(s, load);

    TCase *secrets = tcase_create("secrets");
    tcase_add_checked_fixture(secrets, setup, teardown);
    tcase_add_test(secrets, secret_int_value_not_echoed);
    tcase_add_test(secrets, secret_double_value_not_echoed);
    tcase_add_test(secrets, secret_bool_value_not_echoed);
    tcase_add_test(secrets, secret_default_not_in_help);
    suite_add_tcase(s, secrets);

    TCase *files = tcase_create("secret_files");
    tcase_add_checked_fixture(files, file_setup, file_teardown);
    tcase_add_test(files, file_variable_gives_the_value_without_its_line_break);
    tcase_add_test(files, file_keeps_inner_and_leading_whitespace);
    tcase_add_test(files, file_satisfies_a_required_setting_and_required_names_it);
    tcase_add_test(files, variable_and_file_both_set_is_an_error);
    tcase_add_test(files, empty_file_variable_means_unset);
    tcase_add_test(files, missing_file_names_setting_and_path);
    tcase_add_test(files, directory_is_not_a_secret_file);
    tcase_add_test(files, empty_file_is_an_error);
    tcase_add_test(files, nul_byte_is_an_error_without_the_content);
    tcase_add_test(files, oversized_file_is_an_error);
    tcase_add_test(files, invalid_file_value_is_not_echoed);
    tcase_add_test(files, file_of_a_non_secret_is_refused);
    tcase_add_test(files, file_variable_of_an_unknown_name_is_unknown);
    tcase_add_test(files, file_variable_of_another_programs_secret_is_ignored);
    tcase_add_test(files, flag_file_overrides_the_environment);
    tcase_add_test(files, flag_and_flag_file_both_given_is_an_error);
    tcase_add_test(files, table_declaring_its_own_file_setting_keeps_it);
    tcase_add_test(files, help_tells_secrets_come_from_files);
    suite_add_tcase(s, files);
    return s;
}
