/* The reporter's one way to run a parameterized statement (its outbox for
 * Stripe and for webhooks). */
#ifndef TALLY_REPORTERDB_H
#define TALLY_REPORTERDB_H

#include <libpq-fe.h>
#include <stddef.h>

/* Runs `sql` with `params` (text, nparams of them) on db. The result when
 * its status is `want`; else NULL with err filled ("<what>: <the
 * database's message>"), the result freed. */
PGresult *reporterdb_run(PGconn *db, const char *sql, int nparams, const char *const *params,
                         ExecStatusType want, const char *what, char *err, size_t err_size);

#endif
