/* How the daemons stop: SIGTERM or SIGINT asks the loop to finish what it
 * holds and exit cleanly; a second one exits at once with status 130
 * (nothing unfinished was acknowledged anywhere, so it is done again after
 * the restart). SIGPIPE is ignored: a closed peer is an error return. */
#ifndef TALLY_STOPSIGNAL_H
#define TALLY_STOPSIGNAL_H

#include <stdbool.h>

/* Installs the handlers; call once at start. */
void stopsignal_install(void);
/* True once a stop was asked for (by a signal or stopsignal_request). */
bool stopsignal_requested(void);
/* Asks for a stop from the program itself (e.g. a fatal client error). */
void stopsignal_request(void);

#endif
