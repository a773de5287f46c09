/* alloc.h -- per-session allocation data in the daemon: the agent's reports
 * summed per stack (allocated, freed, live, peak, rates) and a bounded history. */
#ifndef MEMPROF_ALLOC_H
#define MEMPROF_ALLOC_H

#include "server.h"
#include "session.h"

/* Fold one agent report into the session's data (created on first use). */
void alloc_report(struct session *s, const Memprof__AllocReport *r);
/* Answer a client's AllocQuery with AllocData (or an error in it). */
void alloc_on_query(struct conn *c, const Envelope *env);
void alloc_free(struct alloc_data *a);

#endif
