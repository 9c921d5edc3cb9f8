/* The database workers: a few threads that run the handlers which may wait
 * on PostgreSQL (admin routes, usage series, a quota the key cache cannot
 * answer, /readyz). libmicrohttpd's own threads then only ever run
 * in-memory work, so a gateway's authorize request is never queued behind
 * a slow query on the same thread (a statement may take up to the pool's
 * statement_timeout). The jobs are first in, first out; the queue holds one
 * job per open connection at most (a suspended connection sends nothing
 * more), so it is sized to the connection limit and never refuses a job
 * while the workers run. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "api.h"

typedef struct {
    workers_fn fn;
    void *arg; /* borrowed: the job's owner keeps it alive until fn has run */
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queued = PTHREAD_COND_INITIALIZER;
static job *ring;       /* capacity slots, a circular queue */
static size_t capacity, head, count;
static bool accepting;  /* false before start and from the start of a stop */
static bool stopping;   /* the threads leave once the queue is empty */
static pthread_t threads[WORKERS_MAX];
static int thread_count;

static void *worker_main(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (count == 0 && !stopping)
            pthread_cond_wait(&queued, &lock);
        if (count == 0)
            break; /* stopping, and nothing left to run */
        job next = ring[head];
        head = (head + 1) % capacity;
        count--;
        pthread_mutex_unlock(&lock);
        next.fn(next.arg);
        pthread_mutex_lock(&lock);
    }
    pthread_mutex_unlock(&lock);
    return NULL;
}

bool workers_start(int threads_wanted, size_t queue_max, char *err, size_t err_size)
{
    if (threads_wanted < 1 || threads_wanted > WORKERS_MAX || queue_max < 1) {
        snprintf(err, err_size, "database workers must be 1..%d", WORKERS_MAX);
        return false;
    }
    ring = calloc(queue_max, sizeof *ring);
    if (ring == NULL) {
        snprintf(err, err_size, "out of memory for the database workers' queue");
        return false;
    }
    capacity = queue_max;
    head = count = 0;
    stopping = false;
    for (thread_count = 0; thread_count < threads_wanted; thread_count++) {
        if (pthread_create(&threads[thread_count], NULL, worker_main, NULL) != 0) {
            snprintf(err, err_size, "cannot start a database worker thread");
            workers_stop();
            return false;
        }
    }
    pthread_mutex_lock(&lock);
    accepting = true;
    pthread_mutex_unlock(&lock);
    return true;
}

bool workers_submit(workers_fn fn, void *arg)
{
    pthread_mutex_lock(&lock);
    bool taken = accepting && count < capacity;
    if (taken) {
        ring[(head + count) % capacity] = (job){fn, arg};
        count++;
        pthread_cond_signal(&queued);
    }
    pthread_mutex_unlock(&lock);
    return taken;
}

void workers_stop(void)
{
    pthread_mutex_lock(&lock);
    accepting = false;
    stopping = true;
    pthread_cond_broadcast(&queued);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < thread_count; i++)
        pthread_join(threads[i], NULL);
    thread_count = 0;
    free(ring);
    ring = NULL;
    capacity = head = count = 0;
}
