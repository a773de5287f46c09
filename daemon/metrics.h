/* metrics.h -- memprofd's Prometheus exposition (/metrics): per-session memory, top sites and census types,
 * and the daemon's own health; plus the counters and census results it keeps for that. */
#ifndef MEMPROF_METRICS_H
#define MEMPROF_METRICS_H

#include <stddef.h>

#include "proto/wire.h"

struct session;

/* The sink attach.c feeds as agents' messages pass: an allocation report came in; a census reached a
 * session's client (its largest types are kept for the exposition). */
void metrics_alloc_report(void);
void metrics_census(const struct session *s, const Memprof__CensusReply *r);

/* The exposition text (malloc'd, *len bytes), at most top_n sites and types per session; NULL without memory. */
char *metrics_render(unsigned top_n, size_t *len);

#endif
