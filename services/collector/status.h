/* The collector's row in collector_status (migration 008): what only the
 * collector knows (events counted and their rate, consumer lag, dead
 * letters by code, its last commit), for the api's GET /v1/status. The
 * row is upserted by one more statement in each batch's commit pipeline
 * (store_stage_status), so it costs no round trip of its own. The state
 * is the process's (one collector loop, one thread). */
#ifndef TALLY_COLLECTOR_STATUS_H
#define TALLY_COLLECTOR_STATUS_H

#include <stdint.h>

#include "collector.h"

/* The upsert's parameters: instance, group, started_at (usec), events
 * counted, events/s, lag (NULL: unknown), DLQ counts by code (JSON). */
#define STATUS_PARAMS 7
extern const char status_upsert_sql[];

/* Names this instance (host name and process id) and notes its start. */
void status_init(const char *kafka_group);
/* The row as it will be once the batch `b` commits with `counting` new
 * events (borrowed, valid until the next call). */
const char *const *status_values(collector *c, const batch *b, uint64_t counting);
/* The batch `b` committed `counted` new events: they are in the totals. */
void status_committed(const batch *b, uint64_t counted);

#endif
