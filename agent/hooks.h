/* hooks.h -- allocation tracking in the target: the PyMem allocator wrappers,
 * sampling or exact accounting, and the deltas the agent thread reports. */
#ifndef MEMPROF_HOOKS_H
#define MEMPROF_HOOKS_H

#include <stdatomic.h>
#include <stdint.h>
#include "memprof.pb-c.h"

struct hooks_conf {
    uint64_t rate;   /* mean bytes between samples */
    uint32_t frames; /* max frames per sample */
    int exact;
};

/* Wrap the RAW, MEM and OBJ allocators. With the GIL held. */
int hooks_install(const struct hooks_conf *c, char *err);
/* Put the saved allocators back (GIL held) when nobody wrapped ours since;
 * else make ours pass straight through and keep the library loaded. Idempotent. */
void hooks_uninstall(void);
/* After hooks_uninstall, without the GIL: wait until no thread runs wrapper
 * code, then free the tables (or keep the library loaded if that never happens). */
void hooks_release(void);
/* Wait until *inflight (threads in a wrapper's slow path: the PyMem wrappers' count, or native.c's) is 0,
 * then a grace period for the few instructions of a fast path (they tail-call the saved allocator); twice.
 * 0, or -1 when it stayed above 0 for 2 s (the caller keeps the library loaded). */
int hooks_quiesce(atomic_int *inflight);
/* When the GIL cannot be taken (finalizing): pass through, keep the library. */
void hooks_abandon(void);
/* In a forked child: wrappers pass straight through from now on. */
void hooks_atfork_child(void);
/* A forked child that is a session of its own (memprof run --follow-fork):
 * keep tracking, with empty deltas and block tables. */
void hooks_atfork_follow(void);
/* At the process's exit: stop counting (the final figures are what was live
 * when shutdown began, not what finalization frees); the wrappers pass
 * through, the tables stay for the last report. Any thread. */
void hooks_freeze(void);
int hooks_frozen(void);
int hooks_installed(void);

/* Fill r with what changed since the last call (new frames and stacks, deltas,
 * counters); arrays are malloc'd, release with hooks_report_free. Agent thread. */
int hooks_collect(Memprof__AllocReport *r);
void hooks_report_free(Memprof__AllocReport *r);

/* ---- for native.c: its sampled allocations go into the same tables */

/* The sampled-block bitmap (BITMAP_BITS bits): a clear bit means "not sampled". */
extern uint8_t hooks_bitmap[];
static inline int hooks_maybe_sampled(const void *p)
{
    uint32_t b = (uint32_t)(((uint64_t)((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) >> 48);
    return hooks_bitmap[b >> 3] >> (b & 7) & 1;
}
/* 0 when native tracking may start (sampling hooks installed), else -1 and err. */
int hooks_native_ready(char *err);
/* The calling thread's next gap in bytes (same Poisson sampler as Python's). */
int64_t hooks_next_gap(void);
/* A sampled native allocation of size at p: recorded against the calling
 * thread's Python stack (with or without the GIL), flagged native. Any thread;
 * does nothing inside the hooks (reentrancy guard) or when tracking is off. */
void hooks_native_alloc(void *p, size_t size);
/* A free of p (whose bit is set). Any thread. */
void hooks_native_free(const void *p);

#endif
