/* track.c -- the agent's recorder: the frames and stacks allocations are charged to (interned), the
 * block table and its sampled bitmap, the calling thread's Python stack (with or without the GIL), the
 * deltas and counters collected into AllocReports. hooks.c (PyMem wrappers) and native.c (GOT hooks)
 * feed it; it calls neither.
 *
 * Locking: the frame and stack tables, the block hash table, the sampled bitmap and the side deltas are
 * guarded by one spinlock, because RAW wrappers run on any thread without the GIL and the agent thread
 * collects without it. The per-stack accounting (accts) and the heap totals have one writer at a time:
 * when sampling, the lock holder; in exact mode, the thread holding the GIL, which records every
 * allocation and free it makes without the lock (its atomic exchange, once per allocation and once per
 * free, cost 0.15x of alloc_churn's unprofiled time). Exact-mode events of a thread without the GIL go
 * to the side deltas under the lock, which the next GIL holder folds in (side_drain). The accounting
 * only grows (totals since tracking began), so the collector reads it without stopping the writer and
 * reports the difference from what it sent last; a figure read half-updated is completed in the next
 * report. The block map's records are per address, so no two threads write one at once (an address is
 * allocated again only after its free). The code-object cache is only touched by threads holding the
 * GIL; in exact mode its entries also keep their site's stack id, so that a repeat allocation site costs
 * one probe (track_exact). No Python API is called while the spinlock is held. */
#include "agent/track.h"

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/pyapi.h"
#include "common/defaults.h"
#include "common/util.h"

/* Exact mode interns every line that allocates, and a one-frame stack for each:
 * importing IPython alone reaches ~23,000 (a table that fills sends every later
 * allocation to "<other>", the user's @profile'd lines included). The tables
 * are mapped lazily, so only what is used costs memory. The daemon takes frame
 * ids below 65536 (daemon/alloc.c NATIVE_BASE). */
#define MAX_FRAMES_TAB 65536      /* distinct (file, function, line) */
#define MAX_STACKS 65536          /* distinct stacks */
#define STACK_ARENA (1u << 20)    /* frame ids of all stacks */
#define STR_ARENA (4u << 20)      /* file and function names, each stored once (str_cache) */
#define STR_CACHE 1024            /* recent names -> their offset, direct mapped */
#define CODE_CACHE 16384          /* (code, offset) -> frame, direct mapped */
#define MAX_BLOCKS_SAMPLED (1u << 20)
#define MAX_BLOCKS_EXACT (8u << 20)
#define BITMAP_BITS TRACK_BITMAP_BITS
#define EXACT_EVENT_NS 30.0       /* overhead estimate per tracked call, exact mode */

/* FRAME_NATIVE never appears in a stack sent: native.c's samples are interned
 * with it after their outermost Python id, which track_collect turns into the
 * stack's native flag (same Python frames, separate stack). With native frames
 * the return addresses follow it, each as two ids (low, high 32 bits), and
 * become the stack's native_pcs. */
enum { FRAME_OTHER, FRAME_NOGIL, FRAME_NOPY, FRAME_NATIVE, FRAME_FIRST };



struct frame {
    uint32_t file, func; /* offsets into strs */
    uint32_t line, firstline, hash;
    int comp; /* a comprehension's or generator expression's own frame (see track_exact) */
};

struct code_ent {
    void *code, *file, *name;
    int firstline, lasti;
    uint32_t frame;
    uint32_t stack; /* exact: the one-frame stack of frame + 1, once known (0: not yet, or a comprehension's) */
};

struct blk {
    uintptr_t ptr;  /* 0: empty */
    track_meta meta; /* size and stack (track_meta_size, track_meta_stack) */
};

struct delta {
    double ab, ac, fb, fc;
};

/* A stack's accounting since tracking began, in one cache line: bytes and blocks allocated and freed,
 * and the most bytes live at once (one writer at a time: see Locking). */
struct acct {
    struct delta t;
    double peak;
    double pad[3];
};

/* ------------------------------------------------------------ state */

__thread struct track_tls track_T;
#define T track_T
int track_on;
atomic_int track_passthrough;
/* static storage: safe to test even after the tables are gone; the front-ends test it too */
uint8_t track_bitmap[BITMAP_BITS / 8];
#define bitmap track_bitmap

static int exact_mode, walk_ok;
static double rate = MP_DEFAULT_SAMPLE_RATE;
static uint32_t max_frames = MP_DEFAULT_MAX_FRAMES;

static atomic_flag lock = ATOMIC_FLAG_INIT;

/* tables (lock) */
static struct frame *frames;
static uint32_t nframes, frames_sent;
static uint32_t *frame_index;   /* 2*MAX_FRAMES_TAB slots of id+1 */
static char *strs;
static uint32_t strs_len;
static uint32_t str_cache[STR_CACHE]; /* offsets into strs; 0 (the "?") is empty */
static uint32_t *stack_off, *stack_hash, *stack_index;
static uint16_t *stack_len;
static uint32_t nstacks, stacks_sent;
static uint32_t *stack_frames;
static uint32_t stack_frames_len;
static uint32_t *frame_stack;   /* exact: one-frame stack of a frame + 1, or 0 */
static struct acct *accts;      /* per stack (one writer at a time) */
static double heap_live, heap_peak, heap_alloc_bytes, heap_alloc_count; /* all stacks (memprof_heap_stats) */
static struct delta *sent;      /* per stack: the totals reported so far (the collector's) */
static struct delta *side;      /* per stack: exact-mode events of threads without the GIL, not yet folded in */
static uint32_t *side_list, nside; /* the stacks with side deltas */
static atomic_int side_pending;    /* nside > 0 */
static atomic_uint drain_seq;      /* odd while side_drain moves side deltas into the accounting */
static uint64_t x_events, x_samples, x_dropped; /* exact mode's GIL holders' counts (the others: lock) */
static struct blk *blocks;
static size_t bcap, bcount;
static uint32_t *bitcount; /* blocks per bit of track_bitmap */
static uint64_t dropped, samples, events;
static double sample_ns;
static struct code_ent *code_cache; /* GIL */

/* ------------------------------------------------------------ small helpers */

static inline void lock_take(void)
{
    unsigned spins = 0;
    while (atomic_flag_test_and_set_explicit(&lock, memory_order_acquire)) {
        if (++spins > 64) sched_yield();
#if defined(__x86_64__) || defined(__i386__)
        else __builtin_ia32_pause();
#endif
    }
}
static inline void lock_give(void) { atomic_flag_clear_explicit(&lock, memory_order_release); }

static void *map_zero(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
static void unmap(void *p, size_t bytes)
{
    if (p) munmap(p, bytes);
}

static inline uint64_t ptr_hash(uintptr_t p) { return (uint64_t)(p >> 4) * 0x9E3779B97F4A7C15ull; }
static inline uint32_t bit_of(const void *p) { return track_bit_of(p); }

static uint32_t hash_bytes(uint32_t h, const void *data, size_t n)
{
    const unsigned char *s = data;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 16777619u;
    return h;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* xorshift64*, seeded per thread */
static inline uint64_t rng_next(void)
{
    uint64_t x = T.rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    T.rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static int64_t next_gap(void)
{
    double u;
    if (!T.init) {
        T.init = 1;
        T.rng = (uint64_t)now_ns() ^ (uint64_t)syscall(SYS_gettid) << 32 ^ (uintptr_t)&T;
        if (!T.rng) T.rng = 88172645463325252ull;
    }
    u = ((rng_next() >> 11) + 1) * (1.0 / 9007199254740993.0); /* (0, 1] */
    return (int64_t)(-log(u) * rate) + 1;
}

static inline double weight(size_t size)
{
    double s = size ? (double)size : 1.0;
    if (exact_mode) return 1.0;
    return 1.0 / (1.0 - exp(-s / rate));
}

/* ------------------------------------------------------------ interning (lock) */

static uint32_t str_add(const char *s)
{
    size_t n = strlen(s) + 1;
    uint32_t off;
    if (strs_len + n > STR_ARENA) return 0; /* offset 0 holds "?" */
    off = strs_len;
    memcpy(strs + off, s, n);
    strs_len += (uint32_t)n;
    return off;
}

/* s stored once for the frames that name it (a file's lines share its name). */
static uint32_t str_intern(const char *s, uint32_t h)
{
    uint32_t *slot = &str_cache[h & (STR_CACHE - 1)], off;
    if (*slot && !strcmp(strs + *slot, s)) return *slot;
    off = str_add(s);
    if (off) *slot = off;
    return off;
}

/* "<listcomp>", "f.<locals>.<genexpr>"...: code that runs in a frame of its own
 * although the user wrote it inside a line of the enclosing function (3.12+
 * inlines list, dict and set comprehensions; generator expressions stay apart). */
static int is_comprehension(const char *func)
{
    static const char *const names[] = {"<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>"};
    const char *last = strrchr(func, '.');
    last = last ? last + 1 : func;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(last, names[i])) return 1;
    return 0;
}

static uint32_t frame_intern(const char *file, const char *func, int line, int firstline)
{
    uint32_t hfile = hash_bytes(2166136261u, file, strlen(file)), h = hash_bytes(hfile, func, strlen(func));
    uint32_t mask = 2 * MAX_FRAMES_TAB - 1, i;
    h = hash_bytes(h, &line, sizeof line);
    for (i = h & mask;; i = (i + 1) & mask) {
        uint32_t id = frame_index[i];
        struct frame *f;
        if (!id) break;
        f = &frames[id - 1];
        if (f->hash == h && f->line == (uint32_t)line && !strcmp(strs + f->file, file) &&
            !strcmp(strs + f->func, func))
            return id - 1;
    }
    if (nframes >= MAX_FRAMES_TAB) return FRAME_OTHER;
    frames[nframes] = (struct frame){str_intern(file, hfile), str_intern(func, hash_bytes(2166136261u, func, strlen(func))),
                                     (uint32_t)line, (uint32_t)firstline, h, is_comprehension(func)};
    frame_index[i] = ++nframes;
    return nframes - 1;
}

static uint32_t stack_intern(const uint32_t *ids, int n)
{
    uint32_t h = hash_bytes(2166136261u, ids, (size_t)n * sizeof *ids), mask = 2 * MAX_STACKS - 1, i;
    for (i = h & mask;; i = (i + 1) & mask) {
        uint32_t id = stack_index[i];
        if (!id) break;
        id--;
        if (stack_hash[id] == h && stack_len[id] == n &&
            !memcmp(stack_frames + stack_off[id], ids, (size_t)n * sizeof *ids))
            return id;
    }
    if (nstacks >= MAX_STACKS || stack_frames_len + (uint32_t)n > STACK_ARENA) return FRAME_OTHER; /* stack 0 */
    stack_off[nstacks] = stack_frames_len;
    stack_len[nstacks] = (uint16_t)n;
    stack_hash[nstacks] = h;
    memcpy(stack_frames + stack_frames_len, ids, (size_t)n * sizeof *ids);
    stack_frames_len += (uint32_t)n;
    stack_index[i] = ++nstacks;
    return nstacks - 1;
}

/* Count an allocation or free of stack (the accounting's writer: see Locking). Every load before the
 * first store: the agent is built -fno-strict-aliasing, and a store through a double * would make the
 * compiler load the globals again. */
static inline void delta_add(uint32_t stack, double bytes, double count, int is_free)
{
    struct acct *a = &accts[stack];
    double hlive = heap_live;
    if (is_free) {
        double fb = a->t.fb + bytes, fc = a->t.fc + count;
        a->t.fb = fb;
        a->t.fc = fc;
        heap_live = hlive - bytes;
    } else {
        double ab = a->t.ab + bytes, ac = a->t.ac + count, live = ab - a->t.fb, peak = a->peak, hpeak = heap_peak;
        double hab = heap_alloc_bytes + bytes, hac = heap_alloc_count + count;
        hlive += bytes;
        a->t.ab = ab;
        a->t.ac = ac;
        if (live > peak) a->peak = live;
        heap_alloc_bytes = hab;
        heap_alloc_count = hac;
        heap_live = hlive;
        if (hlive > hpeak) heap_peak = hlive;
    }
}

/* Exact mode, a thread without the GIL (lock held): its event waits in the side deltas. */
static void side_add(uint32_t stack, double bytes, int is_free)
{
    struct delta *d = &side[stack];
    if (!d->ac && !d->fc) side_list[nside++] = stack;
    if (is_free) d->fb += bytes, d->fc += 1;
    else d->ab += bytes, d->ac += 1;
    events++;
    atomic_store_explicit(&side_pending, 1, memory_order_release);
}

/* Exact mode, a thread holding the GIL: fold the side deltas into the accounting. */
static __attribute__((noinline)) void side_drain(void)
{
    lock_take();
    atomic_store_explicit(&drain_seq, atomic_load_explicit(&drain_seq, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    for (uint32_t i = 0; i < nside; i++) {
        uint32_t st = side_list[i];
        struct delta d = side[st];
        if (d.ac) delta_add(st, d.ab, d.ac, 0);
        if (d.fc) delta_add(st, d.fb, d.fc, 1);
        side[st] = (struct delta){0, 0, 0, 0};
    }
    nside = 0;
    atomic_store_explicit(&drain_seq, atomic_load_explicit(&drain_seq, memory_order_relaxed) + 1,
                          memory_order_release);
    atomic_store_explicit(&side_pending, 0, memory_order_relaxed);
    lock_give();
}

/* Exact mode: the caller may write the accounting without the lock (it holds the GIL), side deltas
 * folded in first. who: TRACK_GIL, or TRACK_ANY to find out. */
static inline int exact_writer(int who)
{
    if (who != TRACK_GIL && !pyapi_tstate_if_gil()) return 0;
    if (__builtin_expect(atomic_load_explicit(&side_pending, memory_order_acquire), 0)) side_drain();
    return 1;
}

/* ------------------------------------------------------------ block table (lock) */

static int blocks_grow(void)
{
    size_t max = exact_mode ? MAX_BLOCKS_EXACT : MAX_BLOCKS_SAMPLED;
    size_t ncap = bcap ? bcap * 2 : 1u << 16, mask = ncap - 1;
    struct blk *nb;
    if (ncap / 2 > max) return -1;
    nb = map_zero(ncap * sizeof *nb);
    if (!nb) return -1;
    for (size_t i = 0; i < bcap; i++) {
        size_t j;
        if (!blocks[i].ptr) continue;
        for (j = ptr_hash(blocks[i].ptr) & mask; nb[j].ptr; j = (j + 1) & mask) {}
        nb[j] = blocks[i];
    }
    unmap(blocks, bcap * sizeof *blocks);
    blocks = nb;
    bcap = ncap;
    return 0;
}

/* ------------------------------------------------------------ block map (exact mode; no lock) */

/* Exact mode records every block, so its records are dense in the address space: a block's record sits
 * at a place computed from its address (a two-level table of 2 MiB regions, each a lazily mapped array of
 * one record per 16 bytes), found with two loads and no hashing or probing. Every supported CPython's
 * pymalloc and glibc's malloc return 16-byte aligned blocks, so no two live blocks share a record, and
 * one thread at a time writes a record (an address is allocated again only after its free). Regions are
 * mapped by whoever needs them first (compare-and-swap). A block the map cannot hold (misaligned, beyond
 * 47 bits, or once BMAP_MAX_LEAVES regions are mapped: 1 MiB of records each, mapped as touched) goes
 * to the hash table. */
#define BMAP_TOP (1u << 17)   /* 1 GiB regions of the 47-bit address space */
#define BMAP_MID 512u         /* 2 MiB regions of one */
#define BMAP_LEAF (1u << 17)  /* 16-byte slots of one */
#define BMAP_MAX_LEAVES 256u  /* 512 MiB of address space, up to 256 MiB of records (the hash table's most) */

static track_meta ***bmap; /* BMAP_TOP slots, each NULL or BMAP_MID leaves (each NULL or BMAP_LEAF records) */
static atomic_uint bmap_leaves;

/* *at, mapping bytes of zeros there first when it is NULL and make is set; NULL when it cannot. */
static __attribute__((noinline)) void *bmap_make(void **at, size_t bytes, int make, int leaf)
{
    void *want, *seen = NULL;
    if (!make || (leaf && atomic_load(&bmap_leaves) >= BMAP_MAX_LEAVES) || !(want = map_zero(bytes))) return NULL;
    if (!__atomic_compare_exchange_n(at, &seen, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        unmap(want, bytes); /* another thread mapped it first */
        return seen;
    }
    if (leaf) atomic_fetch_add(&bmap_leaves, 1);
    return want;
}

/* The record slot of p; with make, mapping what is missing. NULL when p is not the map's. */
static inline __attribute__((always_inline)) track_meta *bmap_slot(const void *p, int make)
{
    uintptr_t a = (uintptr_t)p;
    track_meta **mid, *leaf, ***top = bmap;
    if ((a & (~(((uintptr_t)1 << 47) - 1) | 15)) || !top) return NULL; /* misaligned, beyond 47 bits; gone */
    mid = __atomic_load_n(&top[a >> 30], __ATOMIC_ACQUIRE);
    if (__builtin_expect(!mid, 0) && !(mid = bmap_make((void **)&top[a >> 30], BMAP_MID * sizeof *mid, make, 0)))
        return NULL;
    leaf = __atomic_load_n(&mid[(a >> 21) & (BMAP_MID - 1)], __ATOMIC_ACQUIRE);
    if (__builtin_expect(!leaf, 0) &&
        !(leaf = bmap_make((void **)&mid[(a >> 21) & (BMAP_MID - 1)], BMAP_LEAF * sizeof *leaf, make, 1)))
        return NULL;
    return &leaf[(a >> 4) & (BMAP_LEAF - 1)];
}

/* Unmap every region; with keep_top, the top level stays (empty). Nobody records. */
static void bmap_clear(int keep_top)
{
    if (!bmap) return;
    for (uint32_t i = 0; i < BMAP_TOP; i++) {
        if (!bmap[i]) continue;
        for (uint32_t j = 0; j < BMAP_MID; j++) unmap(bmap[i][j], BMAP_LEAF * sizeof **bmap[i]);
        unmap(bmap[i], BMAP_MID * sizeof *bmap[i]);
        bmap[i] = NULL;
    }
    atomic_store(&bmap_leaves, 0);
    if (!keep_top) {
        unmap(bmap, BMAP_TOP * sizeof *bmap);
        bmap = NULL;
    }
}

/* ------------------------------------------------------------ blocks: the map, else the hash table */

static int hash_put(const void *p, track_meta meta) /* lock */
{
    size_t mask, i, count = bcount;
    struct blk *b;
    if ((count + 1) * 2 > bcap && blocks_grow() < 0) return -1;
    b = blocks, mask = bcap - 1;
    for (i = ptr_hash((uintptr_t)p) & mask; b[i].ptr; i = (i + 1) & mask)
        if (b[i].ptr == (uintptr_t)p) break; /* stale entry (freed unseen): replace */
    if (!b[i].ptr) bcount = count + 1;
    b[i].ptr = (uintptr_t)p;
    b[i].meta = meta;
    return 0;
}

/* Remove p; returns its meta or 0 when absent. Backward-shift deletion. */
static track_meta hash_take(const void *p) /* lock */
{
    size_t mask, i, j, cap = bcap;
    struct blk *b = blocks;
    track_meta meta;
    if (!bcount) return 0;
    mask = cap - 1;
    for (i = ptr_hash((uintptr_t)p) & mask;; i = (i + 1) & mask) {
        if (!b[i].ptr) return 0;
        if (b[i].ptr == (uintptr_t)p) break;
    }
    meta = b[i].meta;
    bcount--;
    for (j = i;;) {
        size_t k;
        uintptr_t q;
        b[i].ptr = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (!(q = b[j].ptr)) return meta;
            k = ptr_hash(q) & mask;
            /* move j to i unless its home k lies cyclically in (i, j] */
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
            break;
        }
        b[i] = b[j];
        i = j;
    }
}

/* Record p's block; locked: the caller holds the lock (else the hash table takes it). 0, or -1 (full). */
static inline __attribute__((always_inline)) int block_put(const void *p, size_t size, uint32_t stack, int locked)
{
    track_meta meta = (track_meta)size << TRACK_META_STACK_BITS | stack, *slot = exact_mode ? bmap_slot(p, 1) : NULL;
    int r;
    if (slot) {
        *slot = meta;
        return 0;
    }
    if (locked) return hash_put(p, meta);
    lock_take();
    r = hash_put(p, meta);
    lock_give();
    return r;
}

/* Remove p's record: its meta, or 0 when it had none. locked: as block_put. */
static inline __attribute__((always_inline)) track_meta block_take(const void *p, int locked)
{
    track_meta meta, *slot = exact_mode ? bmap_slot(p, 0) : NULL;
    if (slot && (meta = *slot)) {
        *slot = 0;
        return meta;
    }
    if (locked) return hash_take(p);
    if (!__atomic_load_n(&bcount, __ATOMIC_RELAXED)) return 0;
    lock_take();
    meta = hash_take(p);
    lock_give();
    return meta;
}

static void bit_set(const void *p)
{
    uint32_t b = bit_of(p);
    if (bitcount[b]++ == 0) bitmap[b >> 3] |= (uint8_t)(1u << (b & 7));
}
static void bit_clear(const void *p)
{
    uint32_t b = bit_of(p);
    if (bitcount[b] && --bitcount[b] == 0) bitmap[b >> 3] &= (uint8_t)~(1u << (b & 7));
}

/* ------------------------------------------------------------ stacks (GIL) */

/* The code cache's entry for one raw frame whose code's key (pyapi_code_key) is file, name, first,
 * filled on a miss. */
static __attribute__((noinline)) void code_fill(struct code_ent *e, const struct pyframe *f, void *file, void *name,
                                                int first)
{
    int line;
    const char *sfile, *sfunc;
    uint32_t id;
    pyapi_code_where(f, &sfile, &sfunc, &first, &line);
    lock_take();
    id = frame_intern(sfile, sfunc, line < 0 ? 0 : line, first);
    lock_give();
    *e = (struct code_ent){f->code, file, name, first, f->lasti, id, 0};
}

static inline uint32_t code_slot(const struct pyframe *f)
{
    return (uint32_t)(((uintptr_t)f->code >> 4) * 2654435761u ^ (uint32_t)f->lasti * 40503u) & (CODE_CACHE - 1);
}

static inline struct code_ent *code_entry(const struct pyframe *f, void *file, void *name, int first)
{
    struct code_ent *e = &code_cache[code_slot(f)];
    if (!(e->code == f->code && e->lasti == f->lasti && e->file == file && e->name == name && e->firstline == first))
        code_fill(e, f, file, name, first);
    return e;
}

/* Frame id of one raw frame whose code's key is file, name, first: through the code cache. */
static inline uint32_t frame_cached(const struct pyframe *f, void *file, void *name, int first)
{
    return code_entry(f, file, name, first)->frame;
}

/* Frame id of one raw frame, through the code cache. */
static uint32_t frame_resolve(const struct pyframe *f)
{
    void *file, *name;
    int first;
    pyapi_code_key(f->code, &file, &name, &first);
    return frame_cached(f, file, name, first);
}

/* capture(ids, 1) in one call into pyapi.c and no frame array: every allocation in exact mode. */
static inline int capture_top(uint32_t *ids)
{
    struct pyframe f;
    void *file, *name;
    int first, r = walk_ok ? pyapi_site_fast(&f, &file, &name, &first) : -1;
    ids[0] = r > 0 ? frame_cached(&f, file, name, first) : r == 0 ? FRAME_NOPY : FRAME_NOGIL;
    return 1;
}

/* The frame ids of the calling thread's stack, innermost first. */
static int capture(uint32_t *ids, int max)
{
    if (max == 1) return capture_top(ids);
    struct pyframe raw[max];
    void *ts = walk_ok ? pyapi_tstate_if_gil() : NULL;
    int n;
    if (!ts) {
        ids[0] = FRAME_NOGIL;
        return 1;
    }
    n = pyapi_walk(ts, raw, max);
    if (!n) {
        ids[0] = FRAME_NOPY;
        return 1;
    }
    for (int i = 0; i < n; i++) ids[i] = frame_resolve(&raw[i]);
    return n;
}

/* ------------------------------------------------------------ accounting */

void track_sample(void *p, size_t size)
{
    uint32_t ids[MAX_FRAMES_TAB < MP_MAX_FRAMES ? MAX_FRAMES_TAB : MP_MAX_FRAMES];
    double t0 = now_ns(), w = weight(size);
    int n = capture(ids, (int)max_frames);
    uint32_t st;
    lock_take();
    st = stack_intern(ids, n);
    samples++;
    if (block_put(p, size, st, 1) == 0) bit_set(p);
    else dropped++;
    delta_add(st, w * (double)size, w, 0);
    sample_ns += now_ns() - t0;
    lock_give();
}

/* Count the free of a block whose record was meta (the accounting's writer: see Locking). */
static inline void count_free(track_meta meta)
{
    size_t size = track_meta_size(meta);
    double w = weight(size);
    delta_add(track_meta_stack(meta), w * (double)size, w, 1);
}

void track_free(const void *p, int who)
{
    track_meta meta;
    if (exact_mode && exact_writer(who)) {
        x_events++;
        if ((meta = block_take(p, 0))) count_free(meta);
        return;
    }
    lock_take();
    meta = block_take(p, 1);
    if (exact_mode) {
        if (meta) side_add(track_meta_stack(meta), (double)track_meta_size(meta), 1);
        else events++;
    } else {
        events++;
        if (meta) {
            bit_clear(p);
            count_free(meta);
        }
    }
    lock_give();
}

/* Exact: one allocation of stack st; gil: by the GIL holder (else the lock is held). */
static inline __attribute__((always_inline)) void exact_record(void *p, size_t size, uint32_t st, int gil)
{
    if (gil) {
        x_events++;
        x_samples++;
        if (block_put(p, size, st, 0) < 0) x_dropped++;
        delta_add(st, (double)size, 1, 0);
    } else {
        samples++;
        if (block_put(p, size, st, 1) < 0) dropped++;
        side_add(st, (double)size, 0);
    }
}

#define COMP_DEPTH 8 /* nested comprehensions followed to their enclosing function */

/* Exact: every allocation, by its top frame -- and when that is a comprehension
 * or generator expression, with the frames it runs in up to the first other
 * one, so that the line that wrote it counts it (as sampling's whole stacks
 * do, and as 3.12+'s inlined comprehensions are counted anyway). r: pyapi_site_fast's. */
static __attribute__((noinline)) void exact_slow(void *p, size_t size, int r, const struct pyframe *f, void *file,
                                                 void *name, int first)
{
    uint32_t ids[COMP_DEPTH + 1];
    struct code_ent *e = NULL;
    int n = 1, gil = r >= 0 && exact_writer(TRACK_GIL);
    uint32_t st;
    int comp;
    if (r > 0) {
        e = code_entry(f, file, name, first);
        ids[0] = e->frame;
    } else {
        ids[0] = r == 0 ? FRAME_NOPY : FRAME_NOGIL;
    }
    if ((comp = frames[ids[0]].comp)) { /* entries below nframes are immutable: no lock needed */
        n = capture(ids, COMP_DEPTH + 1);
        for (int i = 0; i < n; i++)
            if (!frames[ids[i]].comp) {
                n = i + 1;
                break;
            }
    }
    lock_take();
    if (n > 1) {
        st = stack_intern(ids, n);
    } else if (frame_stack[ids[0]]) {
        st = frame_stack[ids[0]] - 1;
    } else {
        st = stack_intern(ids, 1);
        frame_stack[ids[0]] = st + 1;
    }
    if (!gil) exact_record(p, size, st, 0);
    lock_give();
    if (gil) exact_record(p, size, st, 1);
    /* The entry is this thread's while it holds the GIL (code_fill may have run since the probe, nothing
     * else); a comprehension's frame keeps taking the way above (its stack is the enclosing frames'). */
    if (e && !comp) e->stack = st + 1;
}

void track_exact(void *p, size_t size)
{
    struct pyframe f = {NULL, 0};
    void *file = NULL, *name = NULL;
    int first = 0, r = walk_ok ? pyapi_site_fast(&f, &file, &name, &first) : -1;
    if (r > 0) {
        /* A site seen before (same code object, same instruction, same key): its stack, no other lookup. */
        uint32_t slot = code_slot(&f);
        struct code_ent *e = &code_cache[slot];
        uint32_t st = e->stack;
        if (st && e->code == f.code && e->lasti == f.lasti && e->file == file && e->name == name && e->firstline == first) {
            exact_writer(TRACK_GIL); /* this thread holds the GIL (r > 0) */
            exact_record(p, size, st - 1, 1);
            return;
        }
    }
    exact_slow(p, size, r, &f, file, name, first);
}

track_meta track_take(const void *p, int who)
{
    track_meta meta;
    if (exact_mode && exact_writer(who)) return block_take(p, 0);
    lock_take();
    meta = block_take(p, 1);
    if (meta && !exact_mode) bit_clear(p);
    lock_give();
    return meta;
}

void track_untake(const void *p, track_meta m, int who)
{
    if (exact_mode && exact_writer(who)) {
        block_put(p, track_meta_size(m), track_meta_stack(m), 0);
        return;
    }
    lock_take();
    if (block_put(p, track_meta_size(m), track_meta_stack(m), 1) == 0 && !exact_mode) bit_set(p);
    lock_give();
}

void track_freed(track_meta m, int who)
{
    if (exact_mode && exact_writer(who)) {
        count_free(m);
        return;
    }
    lock_take();
    if (exact_mode) side_add(track_meta_stack(m), (double)track_meta_size(m), 1);
    else count_free(m);
    lock_give();
}


/* ------------------------------------------------------------ native allocations (native.c) */

static void *(*this_tstate)(void); /* PyGILState_GetThisThreadState: safe without the GIL */
static int (*addr2line_nogil)(void *, int);

/* A compact ASCII str's characters, read in place (no GIL: no call into Python), else "?". */
static const char *ascii_or_what(void *str, const struct pyabi *abi)
{
    const char *s = str ? pyabi_str_ascii_chars(abi, str) : NULL;
    return s ? s : "?";
}

/* The frame ids of the calling thread's stack while it does not hold the GIL:
 * its frames change only when it runs Python, so they are stable here, and
 * their code objects alive. Names are read in place, lines computed from the
 * (immutable) line table; the code cache is not used (GIL only). */
static int capture_nogil(uint32_t *ids, int max)
{
    struct pyframe raw[max];
    const struct pyabi *abi = pyapi_abi();
    int can = walk_ok && this_tstate && addr2line_nogil && abi;
    void *ts = can ? this_tstate() : NULL; /* NULL: a thread Python never ran on (a BLAS worker...) */
    int n = ts ? pyapi_walk(ts, raw, max) : 0;
    if (!n) {
        ids[0] = can ? FRAME_NOPY : FRAME_NOGIL;
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char *code = raw[i].code;
        const char *file = ascii_or_what(*(void **)(code + abi->code.filename), abi);
        const char *func = ascii_or_what(*(void **)(code + pyabi_code_name(abi)), abi);
        int first = *(int *)(code + abi->code.firstlineno), line = addr2line_nogil(code, raw[i].lasti);
        lock_take();
        ids[i] = frame_intern(file, func, line < 0 ? 0 : line, first);
        lock_give();
    }
    return n;
}

int64_t track_next_gap(void) { return next_gap(); }

int track_native_ready(char *err)
{
    if (!track_on) {
        mp_err(err, "allocation tracking is off");
        return -1;
    }
    if (exact_mode) {
        mp_err(err, "native tracking samples: not with --exact");
        return -1;
    }
    this_tstate = (void *(*)(void))pyapi_sym("PyGILState_GetThisThreadState");
    addr2line_nogil = (int (*)(void *, int))pyapi_sym("PyCode_Addr2Line");
    return 0;
}

void track_native_alloc(void *p, size_t size, const uint64_t *pcs, int npcs)
{
    uint32_t ids[MP_MAX_FRAMES + 1 + 2 * TRACK_MAX_NATIVE]; /* Python frames, FRAME_NATIVE, the pcs */
    double w = weight(size);
    int n;
    uint32_t st;
    if (npcs > TRACK_MAX_NATIVE) npcs = TRACK_MAX_NATIVE;
    n = walk_ok && pyapi_tstate_if_gil() ? capture(ids, (int)max_frames) : capture_nogil(ids, (int)max_frames);
    ids[n++] = FRAME_NATIVE;
    for (int i = 0; i < npcs; i++) {
        ids[n++] = (uint32_t)pcs[i];
        ids[n++] = (uint32_t)(pcs[i] >> 32);
    }
    lock_take();
    if (frames) {
        st = stack_intern(ids, n);
        samples++;
        if (block_put(p, size, st, 1) == 0) bit_set(p);
        else dropped++;
        delta_add(st, w * (double)size, w, 0);
    }
    lock_give();
}

void track_native_free(const void *p)
{
    /* paused for good (frozen at exit: the final report is out) — a free now would be counted after it, and a
     * later report would show the process's teardown instead of its last figures */
    if (T.guard || !track_on || atomic_load_explicit(&track_passthrough, memory_order_relaxed)) return;
    T.guard = 1;
    if (frames) track_free(p, TRACK_ANY);
    T.guard = 0;
}

/* ------------------------------------------------------------ start / stop */

static void tables_free(void)
{
    unmap(frames, MAX_FRAMES_TAB * sizeof *frames);
    unmap(frame_index, 2 * MAX_FRAMES_TAB * sizeof *frame_index);
    unmap(strs, STR_ARENA);
    unmap(stack_off, MAX_STACKS * sizeof *stack_off);
    unmap(stack_hash, MAX_STACKS * sizeof *stack_hash);
    unmap(stack_index, 2 * MAX_STACKS * sizeof *stack_index);
    unmap(stack_len, MAX_STACKS * sizeof *stack_len);
    unmap(stack_frames, STACK_ARENA * sizeof *stack_frames);
    unmap(frame_stack, MAX_FRAMES_TAB * sizeof *frame_stack);
    unmap(accts, MAX_STACKS * sizeof *accts);
    unmap(sent, MAX_STACKS * sizeof *sent);
    unmap(side, MAX_STACKS * sizeof *side);
    unmap(side_list, MAX_STACKS * sizeof *side_list);
    unmap(blocks, bcap * sizeof *blocks);
    bmap_clear(0);
    unmap(bitcount, BITMAP_BITS * sizeof *bitcount);
    unmap(code_cache, CODE_CACHE * sizeof *code_cache);
    frames = NULL, frame_index = NULL, strs = NULL, stack_off = stack_hash = stack_index = NULL;
    stack_len = NULL, stack_frames = frame_stack = side_list = NULL, accts = NULL, sent = side = NULL;
    blocks = NULL, bitcount = NULL, code_cache = NULL;
    bcap = bcount = 0;
}

static int tables_alloc(void)
{
    static const char *const names[FRAME_FIRST] = {"<other>", "<unknown (no GIL)>", "<no Python frame>", "<native>"};
    frames = map_zero(MAX_FRAMES_TAB * sizeof *frames);
    frame_index = map_zero(2 * MAX_FRAMES_TAB * sizeof *frame_index);
    strs = map_zero(STR_ARENA);
    stack_off = map_zero(MAX_STACKS * sizeof *stack_off);
    stack_hash = map_zero(MAX_STACKS * sizeof *stack_hash);
    stack_index = map_zero(2 * MAX_STACKS * sizeof *stack_index);
    stack_len = map_zero(MAX_STACKS * sizeof *stack_len);
    stack_frames = map_zero(STACK_ARENA * sizeof *stack_frames);
    frame_stack = map_zero(MAX_FRAMES_TAB * sizeof *frame_stack);
    accts = map_zero(MAX_STACKS * sizeof *accts);
    sent = map_zero(MAX_STACKS * sizeof *sent);
    side = map_zero(MAX_STACKS * sizeof *side);
    side_list = map_zero(MAX_STACKS * sizeof *side_list);
    memset(bitmap, 0, sizeof bitmap);
    bitcount = map_zero(BITMAP_BITS * sizeof *bitcount);
    code_cache = map_zero(CODE_CACHE * sizeof *code_cache);
    if (!frames || !frame_index || !strs || !stack_off || !stack_hash || !stack_index || !stack_len ||
        !stack_frames || !frame_stack || !accts || !sent || !side || !side_list || !bitcount || !code_cache ||
        blocks_grow() < 0 || (exact_mode && !(bmap = map_zero(BMAP_TOP * sizeof *bmap)))) {
        tables_free();
        return -1;
    }
    memset(str_cache, 0, sizeof str_cache);
    strs[0] = '?';
    strs_len = 2;
    nframes = frames_sent = nstacks = stacks_sent = stack_frames_len = nside = 0;
    atomic_store(&side_pending, 0);
    dropped = samples = events = x_dropped = x_samples = x_events = 0;
    sample_ns = 0;
    for (uint32_t i = 0; i < FRAME_FIRST; i++) {
        frame_intern(names[i], names[i], 0, 0);
        frame_stack[i] = stack_intern(&i, 1) + 1;
    }
    return 0;
}

int track_start(uint64_t r, uint32_t frames_max, int exact, char *err)
{
    char werr[MP_ERRLEN];
    walk_ok = pyapi_walk_init(werr) == 0; /* without it: sites are "<unknown>" */
    rate = (double)(r ? r : MP_DEFAULT_SAMPLE_RATE);
    max_frames = frames_max ? (frames_max > MP_MAX_FRAMES ? MP_MAX_FRAMES : frames_max) : MP_DEFAULT_MAX_FRAMES;
    exact_mode = exact;
    if (tables_alloc() < 0) {
        mp_err(err, "cannot allocate the allocation tables");
        return -1;
    }
    heap_live = heap_peak = heap_alloc_bytes = heap_alloc_count = 0;
    T.countdown = 0;
    T.init = 0;
    return 0;
}

void track_stop(void)
{
    lock_take();
    tables_free();
    lock_give();
}

void track_atfork_child(void)
{
    atomic_store(&track_passthrough, 1);
    atomic_flag_clear(&lock);
    track_on = 0;
    T.guard = 0;
}

void track_atfork_follow(void)
{
    atomic_flag_clear(&lock);
    T.guard = 0;
    if (!track_on || !frames) return;
    /* The child is a session of its own: it starts with no deltas and no
     * blocks (what it inherited was the parent's), and sends every frame and
     * stack again to its new daemon connection. */
    memset(accts, 0, nstacks * sizeof *accts); /* those above were never touched */
    memset(sent, 0, nstacks * sizeof *sent);
    memset(side, 0, nstacks * sizeof *side);
    nside = 0;
    atomic_store(&side_pending, 0);
    heap_live = heap_peak = heap_alloc_bytes = heap_alloc_count = 0;
    if (bcap) memset(blocks, 0, bcap * sizeof *blocks);
    bcount = 0;
    bmap_clear(1);
    memset(bitmap, 0, sizeof bitmap);
    memset(bitcount, 0, BITMAP_BITS * sizeof *bitcount);
    frames_sent = stacks_sent = 0;
    dropped = samples = events = x_dropped = x_samples = x_events = 0;
    sample_ns = 0;
}

int track_quiesce(atomic_int *count)
{
    struct timespec ts = {0, 1000000};
    for (int round = 0; round < 2; round++) {
        double deadline = mp_now() + 2.0;
        while (atomic_load(count) > 0) {
            if (mp_now() > deadline) return -1;
            nanosleep(&ts, NULL);
        }
        ts.tv_nsec = 20000000;
        nanosleep(&ts, NULL);
    }
    return 0;
}
/* ------------------------------------------------------------ reports */

static uint64_t rss_bytes(void)
{
    char buf[128];
    unsigned long long size, res;
    if (mp_read_file("/proc/self/statm", buf, sizeof buf) <= 0 || sscanf(buf, "%llu %llu", &size, &res) != 2) return 0;
    return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A double another thread may be writing: read once, whole (8-byte aligned loads do not tear). */
static inline double read_once(const double *p) { return *(const volatile double *)p; }

/* The stacks below n whose totals (accounting plus side deltas) differ from what was sent: their ids in
 * ds, totals in tv, peaks in pk; returns how many. Without the lock: the accounting only grows, and a
 * side_drain meanwhile (which moves side deltas into it) makes the caller read again. */
static uint32_t changed_stacks(uint32_t n, uint32_t *ds, struct delta *tv, double *pk)
{
    uint32_t nd, seq;
    for (;;) {
        while ((seq = atomic_load_explicit(&drain_seq, memory_order_acquire)) & 1) sched_yield();
        nd = 0;
        for (uint32_t st = 0; st < n; st++) {
            const struct acct *a = &accts[st];
            const struct delta *was = &sent[st], *sd = &side[st];
            struct delta t = {read_once(&a->t.ab) + read_once(&sd->ab), read_once(&a->t.ac) + read_once(&sd->ac),
                              read_once(&a->t.fb) + read_once(&sd->fb), read_once(&a->t.fc) + read_once(&sd->fc)};
            if (t.ac == was->ac && t.fc == was->fc && t.ab == was->ab && t.fb == was->fb) continue;
            ds[nd] = st;
            tv[nd] = t;
            pk[nd++] = read_once(&a->peak);
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&drain_seq, memory_order_relaxed) == seq) return nd;
    }
}

int track_collect(Memprof__AllocReport *r)
{
    static uint64_t seq;
    uint32_t f0, f1, s0, s1, nd;
    struct delta *tv;
    uint32_t *ds;
    double *pk;
    double cost_ns;
    memprof__alloc_report__init(r);
    if (!frames) return -1;
    lock_take();
    f0 = frames_sent, f1 = frames_sent = nframes;
    s0 = stacks_sent, s1 = stacks_sent = nstacks;
    r->dropped = dropped + x_dropped;
    r->samples = samples + x_samples;
    cost_ns = sample_ns + (exact_mode ? (events + x_events) * EXACT_EVENT_NS : 0);
    lock_give();
    tv = malloc((s1 + 1) * sizeof *tv);
    ds = malloc((s1 + 1) * sizeof *ds);
    pk = malloc((s1 + 1) * sizeof *pk);
    if (!tv || !ds || !pk) goto unsent;
    nd = changed_stacks(s1, ds, tv, pk);

    /* entries below the counts are immutable: read them without the lock */
    r->seq = ++seq;
    r->exact = exact_mode;
    r->sample_rate = (uint64_t)rate;
    r->rss_bytes = rss_bytes();
    r->timestamp = mp_wallclock();
    r->agent_cpu_s = thread_cpu_s() + cost_ns / 1e9;
    r->frames = calloc(f1 - f0 + 1, sizeof *r->frames);
    r->stacks = calloc(s1 - s0 + 1, sizeof *r->stacks);
    r->deltas = calloc(nd + 1, sizeof *r->deltas);
    Memprof__AllocFrame *fa = calloc(f1 - f0 + 1, sizeof *fa);
    Memprof__AllocStack *sa = calloc(s1 - s0 + 1, sizeof *sa);
    Memprof__AllocDelta *da = calloc(nd + 1, sizeof *da);
    if (!r->frames || !r->stacks || !r->deltas || !fa || !sa || !da) {
        r->n_frames = r->n_stacks = r->n_deltas = 0;
        free(fa), free(sa), free(da);
        track_report_free(r);
        goto unsent;
    }
    /* element blocks hang off index 0; empty ones are not needed */
    if (f1 == f0) free(fa), fa = NULL;
    if (s1 == s0) free(sa), sa = NULL;
    if (nd == 0) free(da), da = NULL;
    for (uint32_t i = f0; i < f1; i++) {
        Memprof__AllocFrame *f = &fa[i - f0];
        memprof__alloc_frame__init(f);
        f->id = i;
        f->file = strs + frames[i].file;
        f->function = strs + frames[i].func;
        f->line = frames[i].line;
        f->first_line = frames[i].firstline;
        r->frames[r->n_frames++] = f;
    }
    for (uint32_t i = s0; i < s1; i++) {
        Memprof__AllocStack *s = &sa[i - s0];
        memprof__alloc_stack__init(s);
        s->id = i;
        s->n_frames = stack_len[i];
        s->frames = stack_frames + stack_off[i];
        for (size_t k = 1; k < s->n_frames; k++) {
            size_t npcs;
            if (s->frames[k] != FRAME_NATIVE) continue; /* never a Python frame's id: the first is the mark */
            npcs = (s->n_frames - k - 1) / 2;
            s->native = 1;
            if (npcs && (s->native_pcs = malloc(npcs * sizeof *s->native_pcs))) {
                for (size_t j = 0; j < npcs; j++)
                    s->native_pcs[j] = s->frames[k + 1 + 2 * j] | (uint64_t)s->frames[k + 2 + 2 * j] << 32;
                s->n_native_pcs = npcs;
            }
            s->n_frames = k;
            break;
        }
        r->stacks[r->n_stacks++] = s;
    }
    for (uint32_t i = 0; i < nd; i++) {
        Memprof__AllocDelta *d = &da[i];
        struct delta *was = &sent[ds[i]];
        memprof__alloc_delta__init(d);
        d->stack = ds[i];
        d->alloc_bytes = tv[i].ab - was->ab;
        d->alloc_count = tv[i].ac - was->ac;
        d->free_bytes = tv[i].fb - was->fb;
        d->free_count = tv[i].fc - was->fc;
        d->peak_live = pk[i];
        *was = tv[i];
        r->deltas[r->n_deltas++] = d;
    }
    free(tv);
    free(ds);
    free(pk);
    return 0;
unsent: /* the frames and stacks go in the next report; the deltas too (sent is unchanged) */
    free(tv);
    free(ds);
    free(pk);
    lock_take();
    frames_sent = f0, stacks_sent = s0;
    lock_give();
    return -1;
}

void track_report_free(Memprof__AllocReport *r)
{
    /* the element arrays were allocated as one block each, at index 0 */
    if (r->frames) free(r->n_frames ? r->frames[0] : NULL);
    for (size_t i = 0; r->stacks && i < r->n_stacks; i++) free(r->stacks[i]->native_pcs);
    if (r->stacks) free(r->n_stacks ? r->stacks[0] : NULL);
    if (r->deltas) free(r->n_deltas ? r->deltas[0] : NULL);
    free(r->frames);
    free(r->stacks);
    free(r->deltas);
    r->frames = NULL, r->stacks = NULL, r->deltas = NULL;
    r->n_frames = r->n_stacks = r->n_deltas = 0;
}

/* ------------------------------------------------------------ in-process readers (the IPython extension) */

/* The tracked heap since tracking began, for a caller in the same process
 * (ctypes): out[0] live bytes, out[1] their peak (since the last reset),
 * out[2] bytes allocated, out[3] allocations. Estimates when sampling.
 * Returns 1 with tracking on, 0 (zeros) without. Any thread. */
AGENT_API int memprof_heap_stats(double *out)
{
    int on;
    lock_take();
    on = track_on;
    out[0] = heap_live, out[1] = heap_peak, out[2] = heap_alloc_bytes, out[3] = heap_alloc_count;
    lock_give();
    return on;
}

/* Start a new peak from the live bytes now (%memit, before each run). */
AGENT_API void memprof_heap_peak_reset(void)
{
    lock_take();
    heap_peak = heap_live;
    lock_give();
}