#include "stopsignal.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t requested; /* by a signal or by the program */
static volatile sig_atomic_t signals;   /* stop signals received */

static void on_signal(int sig)
{
    (void)sig;
    /* Only a second signal exits at once: a stop the program asked for
     * itself still gets its graceful first SIGTERM. */
    if (signals++ > 0) {
        static const char msg[] = "second signal: exiting at once\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(130);
    }
    requested = 1;
}

void stopsignal_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

bool stopsignal_requested(void)
{
    return requested != 0;
}

void stopsignal_request(void)
{
    requested = 1;
}
