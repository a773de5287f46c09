/* track.h -- the agent's recorder: interned frames and stacks, the block table and its sampled bitmap,
 * the calling thread's stack, the deltas collected into AllocReports. Its front-ends feed it: hooks.c
 * (the PyMem wrappers) and native.c (the GOT hooks, which pass their unwound native frames in). */
#ifndef MEMPROF_TRACK_H
#define MEMPROF_TRACK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "gen/memprof.pb-c.h"

/* Declared hidden, so that the front-ends' fast paths reach them as directly as this file's own. */
#define TRACK_HIDDEN __attribute__((visibility("hidden")))

#define TRACK_BITMAP_BITS (1u << 16) /* 8 KiB */
#define TRACK_MAX_NATIVE 32          /* native frames per sample */

/* The calling thread's state. guard: inside the recorder or a front-end's slow path (reentrancy);
 * countdown: bytes until the PyMem wrappers' next sample; init and rng: the Poisson sampler's. */
struct track_tls {
    int guard;
    int init;
    int64_t countdown;
    uint64_t rng;
};
extern __thread struct track_tls track_T TRACK_HIDDEN;

/* Recording: 1 between track_start and the front-end's uninstall (or a fork's child). */
extern int track_on TRACK_HIDDEN;
/* Set while recording is paused for good (removed, frozen at exit, a fork's child): the front-ends pass
 * straight through. */
extern atomic_int track_passthrough TRACK_HIDDEN;

/* The sampled-block bitmap (TRACK_BITMAP_BITS bits): a clear bit means "not sampled". Static storage:
 * safe to test even after the tables are gone. */
extern uint8_t track_bitmap[] TRACK_HIDDEN;
/* A block's bit in the sampled bitmap: the top 16 bits of its address's hash (ptr_hash in track.c). */
static inline uint32_t track_bit_of(const void *p)
{
    return (uint32_t)(((uint64_t)((uintptr_t)p >> 4) * 0x9E3779B97F4A7C15ull) >> 48);
}
static inline int track_maybe_sampled(const void *p)
{
    uint32_t b = track_bit_of(p);
    return track_bitmap[b >> 3] >> (b & 7) & 1;
}

/* A tracked block's record in the block table: its size and its stack, packed (track_take). */
typedef uint64_t track_meta;
#define TRACK_META_STACK_BITS 24
static inline size_t track_meta_size(track_meta m) { return (size_t)(m >> TRACK_META_STACK_BITS); }
static inline uint32_t track_meta_stack(track_meta m) { return (uint32_t)(m & ((1u << TRACK_META_STACK_BITS) - 1)); }

/* Map the tables and take the settings (rate: mean bytes between samples; frames: max frames per
 * sample; exact: every block). Resets the calling thread's sampler. 0, or -1 with err. */
int track_start(uint64_t rate, uint32_t frames, int exact, char *err);
/* Free the tables (nobody records any more: the front-ends have quiesced). */
void track_stop(void);
/* Wait until *inflight (threads in a front-end's slow path) is 0, then a grace period for the few
 * instructions of a fast path (they tail-call the saved allocator); twice. 0, or -1 when it stayed
 * above 0 for 2 s (the caller keeps the library loaded). */
int track_quiesce(atomic_int *inflight);

/* The calling thread's next gap in bytes (Poisson sampler, mean rate). */
int64_t track_next_gap(void);

/* ---- recording; the caller holds the guard (track_T.guard) */

/* A sampled allocation of size at p (not NULL), with the calling thread's Python stack (GIL held). */
void track_sample(void *p, size_t size);
/* Exact mode: every allocation, by its top frame (and a comprehension's enclosing frames). */
void track_exact(void *p, size_t size);
/* Who calls the four below: TRACK_GIL, a caller holding the GIL (the MEM and OBJ domains, by the API's
 * rule); TRACK_ANY, one that may not (RAW), which exact mode asks. */
enum { TRACK_ANY, TRACK_GIL };
/* A free of p whose bit is set (sampling) or any free (exact). */
void track_free(const void *p, int who);
/* Remove p from the block table (and its bit, sampling): its meta, 0 when it was not tracked. */
track_meta track_take(const void *p, int who);
/* Put back what track_take removed (a realloc that failed: the old block lives on). */
void track_untake(const void *p, track_meta m, int who);
/* Count as freed what track_take removed (a realloc that succeeded). */
void track_freed(track_meta m, int who);

/* ---- native allocations (native.c) */

/* Enter the recorder from a hook that may run on any thread: 0 (and nothing to do) when already inside
 * it or recording is off or paused; else 1 with the guard set, until track_leave. */
static inline int track_enter(void)
{
    if (track_T.guard || !track_on || atomic_load_explicit(&track_passthrough, memory_order_relaxed)) return 0;
    track_T.guard = 1;
    return 1;
}
static inline void track_leave(void) { track_T.guard = 0; }
/* 0 when native tracking may start (sampling started), else -1 and err. */
int track_native_ready(char *err);
/* A sampled native allocation of size at p with its native return addresses (innermost first; npcs
 * <= TRACK_MAX_NATIVE): recorded against the calling thread's Python stack (with or without the GIL),
 * flagged native. Between track_enter and track_leave. */
void track_native_alloc(void *p, size_t size, const uint64_t *pcs, int npcs);
/* A free of p (whose bit is set). Any thread; does nothing inside the recorder or when it is off. */
void track_native_free(const void *p);

/* ---- the agent thread */

/* Fill r with what changed since the last call (new frames and stacks, deltas, counters); arrays are
 * malloc'd, release with track_report_free. */
int track_collect(Memprof__AllocReport *r);
void track_report_free(Memprof__AllocReport *r);

/* ---- fork */

/* In a forked child (only this thread survives; the lock may have been held by another): recording off,
 * the front-ends pass through. */
void track_atfork_child(void);
/* A forked child that is a session of its own (memprof run --follow-fork): keep recording, with empty
 * deltas and block tables; every frame and stack is sent again. */
void track_atfork_follow(void);

#endif
