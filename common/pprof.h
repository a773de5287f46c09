/* pprof.h -- a session's allocation data as a gzip-compressed pprof heap profile (profile.proto), for
 * `memprof export --format pprof` and memprofd's /debug/pprof/heap alike. */
#ifndef MEMPROF_PPROF_H
#define MEMPROF_PPROF_H

#include <stddef.h>
#include <stdint.h>

#include "gen/memprof.pb-c.h"

/* Sample types alloc_objects/count, alloc_space/bytes, inuse_objects/count, inuse_space/bytes (the
 * default one inuse_space, or alloc_space when allocated is set); period_type space/bytes, period the
 * sample rate; one Function per Python function, one Location per frame (leaf first), one mapping (the
 * interpreter). 0 and *out (free it) of *len bytes, or -1 with err. */
int pprof_heap(const Memprof__AllocData *d, int allocated, uint8_t **out, size_t *len, char *err);

#endif
