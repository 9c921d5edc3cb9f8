/* tally-migrate: applies pending migrations (NNN_name.sql files of a
 * directory) to PostgreSQL, in name order, each once, each in its own
 * transaction together with its row in schema_migrations. A session-wide
 * advisory lock makes two migrators run one after the other: the second
 * finds the work done and applies nothing. The container image's migration
 * job, and what tools/migrate.sh runs; it replaces psql (and the perl it
 * pulls into the image).
 *
 * Exit status: 0 when every migration is applied (none pending), 1 when one
 * failed (it is rolled back; those before it stay applied), 2 for a bad
 * setting. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libpq-fe.h>

#include "config.h"
#include "db.h"
#include "log.h"

/* The lock key tools/migrate.sh took with psql (hashtext of this text), so
 * an old and a new migrator never run at the same time on one database. */
#define MIGRATE_LOCK_SQL "SELECT pg_advisory_lock(hashtext('tally_migrations'))"
#define MIGRATE_UNLOCK_SQL "SELECT pg_advisory_unlock(hashtext('tally_migrations'))"

/* Bounds on what a directory can make us hold: far above any real schema
 * history, small enough that a wrong --dir cannot exhaust memory. */
#define MIGRATE_MAX_FILES 10000
#define MIGRATE_MAX_NAME 200
#define MIGRATE_MAX_FILE_BYTES (16L * 1024 * 1024)

typedef struct {
    char **names; /* owned; sorted file names, e.g. "001_init.sql" */
    size_t count;
} migrate_list;

/* True for "NNN_<something>.sql": three digits, an underscore, at least one
 * character, the .sql suffix (the names tools/migrate.sh globbed). */
static bool migrate_is_migration_name(const char *name)
{
    size_t len = strlen(name);
    if (len < 9 || len > MIGRATE_MAX_NAME)
        return false;
    for (int i = 0; i < 3; i++) {
        if (name[i] < '0' || name[i] > '9')
            return false;
    }
    return name[3] == '_' && strcmp(name + len - 4, ".sql") == 0;
}

static int migrate_compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void migrate_list_free(migrate_list *list)
{
    for (size_t i = 0; i < list->count; i++)
        free(list->names[i]);
    free(list->names);
    list->names = NULL;
    list->count = 0;
}

/* Fills `list` (new, the caller frees it with migrate_list_free) with the
 * migration files of `dir` in the order they apply; false with err filled. */
static bool migrate_list_dir(const char *dir, migrate_list *list, char *err, size_t err_size)
{
    DIR *handle = opendir(dir);
    if (handle == NULL) {
        snprintf(err, err_size, "reading the migrations directory %.512s: %s", dir, strerror(errno));
        return false;
    }
    list->names = calloc(MIGRATE_MAX_FILES, sizeof list->names[0]);
    list->count = 0;
    bool ok = list->names != NULL;
    if (!ok)
        snprintf(err, err_size, "listing %.512s: out of memory", dir);
    struct dirent *entry;
    while (ok && (entry = readdir(handle)) != NULL) {
        if (!migrate_is_migration_name(entry->d_name))
            continue;
        if (list->count == MIGRATE_MAX_FILES) {
            snprintf(err, err_size, "%.512s holds more than %d migrations", dir, MIGRATE_MAX_FILES);
            ok = false;
        } else if ((list->names[list->count] = strdup(entry->d_name)) == NULL) {
            snprintf(err, err_size, "listing %.512s: out of memory", dir);
            ok = false;
        } else {
            list->count++;
        }
    }
    closedir(handle);
    if (!ok) {
        migrate_list_free(list);
        return false;
    }
    qsort(list->names, list->count, sizeof list->names[0], migrate_compare_names);
    return true;
}

/* Reads the whole file at `path` into a new NUL-terminated string (the
 * caller frees it); NULL with err filled when it cannot, is too large or
 * holds a NUL byte (PQexec would silently stop there). */
static char *migrate_read_file(const char *path, char *err, size_t err_size)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        snprintf(err, err_size, "opening %.512s: %s", path, strerror(errno));
        return NULL;
    }
    char *text = malloc(MIGRATE_MAX_FILE_BYTES + 1);
    size_t length = text ? fread(text, 1, MIGRATE_MAX_FILE_BYTES + 1, file) : 0;
    bool failed = text == NULL || ferror(file);
    fclose(file);
    if (failed) {
        snprintf(err, err_size, "reading %.512s: %s", path, text ? "read error" : "out of memory");
    } else if (length > MIGRATE_MAX_FILE_BYTES) {
        snprintf(err, err_size, "%.512s is larger than %ld bytes", path, MIGRATE_MAX_FILE_BYTES);
        failed = true;
    } else if (memchr(text, '\0', length) != NULL) {
        snprintf(err, err_size, "%.512s holds a NUL byte", path);
        failed = true;
    }
    if (failed) {
        free(text);
        return NULL;
    }
    text[length] = '\0';
    return text;
}

/* Sets *pending to whether `version` has no row in schema_migrations. */
static bool migrate_is_pending(PGconn *conn, const char *version, bool *pending, char *err,
                               size_t err_size)
{
    const char *params[] = {version};
    PGresult *res = PQexecParams(conn, "SELECT 1 FROM schema_migrations WHERE version = $1", 1,
                                 NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (ok)
        *pending = PQntuples(res) == 0;
    else
        db_error(conn, res, "reading schema_migrations", err, err_size);
    PQclear(res);
    return ok;
}

/* Runs `sql` (one or more statements, the file's text) then records
 * `version`, both inside one transaction; on failure rolls back. */
static bool migrate_apply_one(PGconn *conn, const char *version, const char *sql, char *err,
                              size_t err_size)
{
    char what[MIGRATE_MAX_NAME + 32];
    snprintf(what, sizeof what, "applying %s", version);
    if (!db_exec(conn, "BEGIN", what, err, err_size))
        return false;
    /* A file of comments only is an empty query: nothing to run, as in psql. */
    PGresult *run = PQexec(conn, sql);
    ExecStatusType status = PQresultStatus(run);
    bool ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK ||
              status == PGRES_EMPTY_QUERY;
    if (!ok)
        db_error(conn, run, what, err, err_size);
    PQclear(run);
    if (ok) {
        const char *params[] = {version};
        PGresult *res = PQexecParams(conn, "INSERT INTO schema_migrations (version) VALUES ($1)",
                                     1, NULL, params, NULL, NULL, 0);
        ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            db_error(conn, res, "recording the migration in schema_migrations", err, err_size);
        PQclear(res);
    }
    if (ok)
        return db_exec(conn, "COMMIT", what, err, err_size);
    /* The first error is the one to report; a failed rollback (connection
     * gone) ends the session, which rolls back as well. */
    PQclear(PQexec(conn, "ROLLBACK"));
    return false;
}

/* Applies the pending files of `list` (from `dir`), stopping at the first
 * that fails. Expects the advisory lock held. */
static bool migrate_apply_pending(PGconn *conn, const char *dir, const migrate_list *list,
                                  char *err, size_t err_size)
{
    for (size_t i = 0; i < list->count; i++) {
        const char *name = list->names[i];
        char version[MIGRATE_MAX_NAME + 1];
        snprintf(version, sizeof version, "%.*s", (int)(strlen(name) - 4), name);
        bool pending = false;
        if (!migrate_is_pending(conn, version, &pending, err, err_size))
            return false;
        if (!pending)
            continue;
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
            snprintf(err, err_size, "the path of %s is too long", name);
            return false;
        }
        char *sql = migrate_read_file(path, err, err_size);
        if (sql == NULL)
            return false;
        /* stdout, as psql's \echo did: what a run changed, one line each. */
        printf("applying %s\n", version);
        fflush(stdout);
        bool ok = migrate_apply_one(conn, version, sql, err, err_size);
        free(sql);
        if (!ok)
            return false;
    }
    return true;
}

/* Connects, takes the lock, creates schema_migrations when missing, applies
 * what is pending, releases the lock. */
static bool migrate_run(const char *url, const char *dir, char *err, size_t err_size)
{
    migrate_list list = {0};
    if (!migrate_list_dir(dir, &list, err, err_size))
        return false;
    PGconn *conn = db_connect(url, "tally-migrate", err, err_size);
    bool ok = conn != NULL;
    /* The migrations' own NOTICEs (IF NOT EXISTS skips) are noise here. */
    ok = ok && db_exec(conn, "SET client_min_messages = warning", "setting client_min_messages",
                       err, err_size);
    ok = ok && db_exec(conn, MIGRATE_LOCK_SQL, "taking the migrations lock", err, err_size);
    ok = ok && db_exec(conn,
                       "CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, "
                       "applied_at timestamptz NOT NULL DEFAULT now())",
                       "creating schema_migrations", err, err_size);
    ok = ok && migrate_apply_pending(conn, dir, &list, err, err_size);
    if (ok)
        ok = db_exec(conn, MIGRATE_UNLOCK_SQL, "releasing the migrations lock", err, err_size);
    /* On failure the lock goes with the session. */
    if (conn != NULL)
        PQfinish(conn);
    migrate_list_free(&list);
    return ok;
}

static const char migrate_usage[] = "tally-migrate [options]";

static const char migrate_summary[] =
    "Applies the pending migrations (files NNN_name.sql of --dir) to PostgreSQL, in name\n"
    "order, each once and each in its own transaction with its row in schema_migrations.\n"
    "Concurrent runs wait for each other on an advisory lock; a second run applies\n"
    "nothing. Prints one line per migration applied. Exits 0 when none is left\n"
    "pending, 1 when one failed (rolled back; the earlier ones stay applied).";

int main(int argc, char **argv)
{
    const char *database_url = NULL;
    const char *dir = NULL;
    const char *log_level_text = NULL;

    const cfg_setting settings[] = {
        {.env = "TALLY_DATABASE_URL", .flag = "database-url", .type = CFG_STRING,
         .target = &database_url, .required = true, .secret = true,
         .help = "libpq connection string or URI"},
        /* Relative, so the image's WORKDIR (/opt/tally) needs no flag. */
        {.flag = "dir", .type = CFG_STRING, .target = &dir, .default_value = "migrations",
         .help = "directory of the NNN_name.sql files"},
        {.env = "TALLY_LOG_LEVEL", .flag = "log-level", .type = CFG_STRING,
         .target = &log_level_text, .default_value = "info",
         .help = "debug, info, warn or error"},
    };
    const size_t setting_count = sizeof settings / sizeof settings[0];

    log_level min_level;
    int status = cfg_start("tally-migrate", migrate_usage, migrate_summary, settings,
                           setting_count, argc, argv, &log_level_text, &min_level);
    if (status >= 0)
        return status;
    log_init("migrate", min_level);

    char err[1024];
    if (!migrate_run(database_url, dir, err, sizeof err)) {
        log_error("%s", err);
        return 1;
    }
    return 0;
}
