/* The dashboard's files (services/api/dashboard/), embedded in tally-api
 * at build time by tools/embed-assets.py (the Makefile generates
 * dashassets.c from the folder), so that the binary serves the pages that
 * match its own routes, with no directory to install or configure. */
#ifndef TALLY_API_DASHASSETS_H
#define TALLY_API_DASHASSETS_H

#include <stddef.h>

typedef struct {
    const char *name;         /* path under services/api/dashboard: "assets/app.js" */
    const char *content_type; /* from the extension */
    const unsigned char *data;
    size_t len;
} dashassets_file;

extern const dashassets_file dashassets_files[];
extern const size_t dashassets_count;

#endif
