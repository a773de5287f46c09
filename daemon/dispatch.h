/* dispatch.h -- routing of every message the daemon receives to its handler, by message and connection kind. */
#ifndef MEMPROF_DISPATCH_H
#define MEMPROF_DISPATCH_H

#include "daemon/conn.h"

/* Runs env's handler for c's kind; a message without one gets a typed error (clients) or a log line
 * (agents). */
void dispatch(struct conn *c, const Envelope *env);

#endif
