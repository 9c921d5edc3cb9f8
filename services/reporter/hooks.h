/* Webhook delivery: a thread of tally-reporter that works the webhook
 * outbox (hookbox.h) on its own database connection and its own libcurl
 * multi handle, so that a slow or dead receiver never holds up Stripe
 * reporting, and at most `per_endpoint` attempts go to one endpoint at a
 * time, so that it holds up no other endpoint either. One active sender per
 * database (an advisory lock of its own); at least once on the wire, with
 * the alert's event id. What is sent and what answers mean is hookwire.h's;
 * which addresses may be dialled, hookaddr.h's. */
#ifndef TALLY_REPORTER_HOOKS_H
#define TALLY_REPORTER_HOOKS_H

#include <stdbool.h>
#include <stddef.h>

#include "hookaddr.h"
#include "hookwire.h"

typedef struct {
    const char *database_url;   /* borrowed for the sender's life */
    long timeout_ms;            /* one attempt, connecting included */
    int concurrency;            /* attempts in flight at most */
    int per_endpoint;           /* attempts in flight to one endpoint at most */
    int poll_ms;                /* how often due deliveries are looked for */
    hookwire_schedule schedule;
    hookaddr_allow allow;       /* address classes allowed beyond public ones */
} hooks_config;

typedef struct hooks hooks;

/* A new sender (not yet running) with its metrics registered: call before
 * the metrics endpoint starts. NULL with err filled. */
hooks *hooks_new(const hooks_config *config, char *err, size_t err_size);
/* Starts the delivery thread. */
bool hooks_start(hooks *h, char *err, size_t err_size);
/* Seconds since the delivery loop last went round (for /healthz); 0
 * before it started. */
double hooks_idle_seconds(const hooks *h);
/* Stops claiming, lets attempts in flight finish (each within its
 * timeout), records their outcomes and joins the thread; then frees `h`
 * (stolen). NULL is fine. */
void hooks_stop(hooks *h);

#endif
