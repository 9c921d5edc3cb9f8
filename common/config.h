/* Settings: each program declares a table of {environment name, flag, type,
 * target, default}; cfg_load() fills the targets from the environment, then
 * from the command line (a flag overrides its variable), and refuses
 * anything unknown or invalid with a message naming the setting. */
#ifndef TALLY_CONFIG_H
#define TALLY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "log.h"

typedef enum {
    CFG_STRING,   /* target: const char * (borrowed from environ/argv) */
    CFG_INT,      /* target: long long, within [min, max] */
    CFG_DOUBLE,   /* target: double, within [min, max] */
    CFG_BOOL,     /* target: bool; "true/false/1/0/yes/no"; a bare flag means true */
} cfg_type;

typedef struct {
    const char *env;           /* "TALLY_DATABASE_URL", or NULL for a flag-only setting */
    const char *flag;          /* "database-url" for --database-url */
    cfg_type type;
    void *target;
    const char *default_value; /* NULL: no default */
    bool required;
    bool secret;               /* never echoed in errors or help */
    double min, max;           /* bounds for CFG_INT / CFG_DOUBLE */
    const char *help;
} cfg_setting;

typedef enum { CFG_OK, CFG_HELP, CFG_ERROR } cfg_result;

/* Loads settings. Positional arguments (not starting with "--") are stored
 * into positional[0..max_positional) (borrowed from argv) and counted in
 * *positional_count; more than max_positional is an error. --help and -h
 * return CFG_HELP. On CFG_ERROR, err holds a message naming the setting. */
cfg_result cfg_load(const cfg_setting *table, size_t count, int argc, char **argv,
                    const char **positional, int max_positional, int *positional_count,
                    char *err, size_t err_size);

/* Prints usage: summary, then every setting with its variable, flag,
 * default and help. */
void cfg_print_help(FILE *out, const char *usage, const char *summary, const cfg_setting *table,
                    size_t count);

/* The start every Tally program's main shares: loads `table` (no positional
 * arguments), prints the usage and settings for --help, or the error
 * naming the setting, and parses `log_level_text` (the value the table
 * filled in). Returns -1 to go on, with *level set; otherwise the exit status
 * to return now: 0 after --help, 2 for a bad setting. */
int cfg_start(const char *program, const char *usage, const char *summary,
              const cfg_setting *table, size_t count, int argc, char **argv,
              const char *const *log_level_text, log_level *level);

#endif
