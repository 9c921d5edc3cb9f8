#include "reporterdb.h"

#include "db.h"

PGresult *reporterdb_run(PGconn *db, const char *sql, int nparams, const char *const *params,
                         ExecStatusType want, const char *what, char *err, size_t err_size)
{
    PGresult *res = PQexecParams(db, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != want) {
        db_error(db, res, what, err, err_size);
        PQclear(res);
        return NULL;
    }
    return res;
}
