/* discovery.h -- what a scraper reads to find memprofd's profiles: the sessions as JSON, and as a Prometheus
 * HTTP service discovery target list (one target per attached process, its pid a URL parameter). */
#ifndef MEMPROF_DISCOVERY_H
#define MEMPROF_DISCOVERY_H

#include <stddef.h>

/* The sessions /debug/pprof/ lists, as a JSON array: pid, session, state, python, command, container, pod,
 * namespace, pod_uid, and the heap and allocs paths. NULL when out of memory; free it. */
char *discovery_sessions_json(size_t *len);
/* Prometheus HTTP SD: [{"targets": [host], "labels": {"__param_pid": "N", "pid": "N", "container": ..., ...}}]
 * for every attached process; host is HOST:PORT as the scraper reached us. NULL when out of memory. */
char *discovery_targets(const char *host, size_t *len);

#endif
