/* metrics.h -- memprofd's Prometheus exposition (/metrics): per-session memory, top sites and census types,
 * and the daemon's own health; plus the counters and census results it keeps for that. */
#ifndef MEMPROF_METRICS_H
#define MEMPROF_METRICS_H

#include <stddef.h>

#include "server.h"

/* Dispatch-table handlers (dispatch.c): count or note, then hand on to attach.c's. */
void metrics_on_alloc_report(struct conn *c, const Envelope *env);
void metrics_on_agent_reply(struct conn *c, const Envelope *env);

/* The exposition text (malloc'd, *len bytes), at most top_n sites and types per session; NULL without memory. */
char *metrics_render(unsigned top_n, size_t *len);

#endif
