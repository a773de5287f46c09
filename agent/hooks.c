/* hooks.c -- allocation tracking inside the target: wrappers around the RAW,
 * MEM and OBJ allocators, Poisson sampling by bytes (or exact per-block
 * accounting), interned frames and stacks, and the deltas agent_tick sends.
 *
 * Locking: the frame/stack/block tables and deltas are guarded by one spinlock,
 * because RAW wrappers run on any thread without the GIL and the agent thread
 * collects without it. The code-object cache is only touched by threads holding
 * the GIL. No Python API is called while the spinlock is held. */
#include "hooks.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "defaults.h"
#include "native.h"
#include "pyapi.h"
#include "util.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

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
#define BITMAP_BITS (1u << 16)    /* 8 KiB */
#define EXACT_EVENT_NS 30.0       /* overhead estimate per tracked call, exact mode */

/* FRAME_NATIVE never appears in a stack sent: native.c's samples are interned
 * with it after their outermost Python id, which hooks_collect turns into the
 * stack's native flag (same Python frames, separate stack). With native frames
 * the return addresses follow it, each as two ids (low, high 32 bits), and
 * become the stack's native_pcs. */
enum { FRAME_OTHER, FRAME_NOGIL, FRAME_NOPY, FRAME_NATIVE, FRAME_FIRST };

typedef struct {
    void *ctx;
    void *(*malloc)(void *ctx, size_t size);
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize);
    void *(*realloc)(void *ctx, void *ptr, size_t new_size);
    void (*free)(void *ctx, void *ptr);
} memalloc_t;

struct domain {
    int id;
    int free_unwatched; /* sampling over pymalloc: frees go straight to it (see hooks_install) */
    memalloc_t saved;
};

struct frame {
    uint32_t file, func; /* offsets into strs */
    uint32_t line, firstline, hash;
    int comp; /* a comprehension's or generator expression's own frame (see exact_alloc) */
};

struct code_ent {
    void *code, *file, *name;
    int firstline, lasti;
    uint32_t frame;
};

struct blk {
    uintptr_t ptr;  /* 0: empty */
    uint64_t meta;  /* size << 24 | stack */
};

struct delta {
    double ab, ac, fb, fc;
};

struct tls {
    int guard;
    int init;
    int64_t countdown;
    uint64_t rng;
};

static __thread struct tls T;

static struct domain doms[3];
static void (*get_alloc)(int, memalloc_t *);
static void (*set_alloc)(int, memalloc_t *);

static atomic_int passthrough;
static atomic_int inflight;
static int installed, ever_hooked, exact_mode, walk_ok;
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
static struct delta *deltas;
static double *stack_live, *stack_peak; /* since tracking began: the peak live bytes per stack */
static double heap_live, heap_peak, heap_alloc_bytes, heap_alloc_count; /* all stacks (memprof_heap_stats) */
static uint32_t *dirty;
static uint8_t *is_dirty;
static uint32_t ndirty;
static struct blk *blocks;
static size_t bcap, bcount;
/* static storage: safe to test even after the tables are gone; native.c tests it too */
uint8_t hooks_bitmap[BITMAP_BITS / 8] __attribute__((visibility("hidden")));
#define bitmap hooks_bitmap
static uint32_t *bitcount;
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
static inline uint32_t bit_of(const void *p) { return (uint32_t)(ptr_hash((uintptr_t)p) >> 48); }
static inline int bit_test(const void *p)
{
    uint32_t b = bit_of(p);
    return bitmap[b >> 3] >> (b & 7) & 1;
}

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
    return exact_mode ? 1.0 : 1.0 / (1.0 - exp(-s / rate));
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

static inline void delta_add(uint32_t stack, double bytes, double count, int is_free)
{
    struct delta *d = &deltas[stack];
    if (is_free) {
        d->fb += bytes;
        d->fc += count;
        stack_live[stack] -= bytes;
        heap_live -= bytes;
    } else {
        d->ab += bytes;
        d->ac += count;
        if ((stack_live[stack] += bytes) > stack_peak[stack]) stack_peak[stack] = stack_live[stack];
        heap_alloc_bytes += bytes;
        heap_alloc_count += count;
        if ((heap_live += bytes) > heap_peak) heap_peak = heap_live;
    }
    if (!is_dirty[stack]) {
        is_dirty[stack] = 1;
        dirty[ndirty++] = stack;
    }
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

static int block_put(void *p, size_t size, uint32_t stack)
{
    size_t mask, i;
    if ((bcount + 1) * 2 > bcap && blocks_grow() < 0) return -1;
    mask = bcap - 1;
    for (i = ptr_hash((uintptr_t)p) & mask; blocks[i].ptr; i = (i + 1) & mask)
        if (blocks[i].ptr == (uintptr_t)p) break; /* stale entry (freed unseen): replace */
    if (!blocks[i].ptr) bcount++;
    blocks[i].ptr = (uintptr_t)p;
    blocks[i].meta = (uint64_t)size << 24 | stack;
    return 0;
}

/* Remove p; returns its meta or 0 when absent. Backward-shift deletion. */
static uint64_t block_take(const void *p)
{
    size_t mask, i, j;
    uint64_t meta;
    if (!bcap) return 0;
    mask = bcap - 1;
    for (i = ptr_hash((uintptr_t)p) & mask;; i = (i + 1) & mask) {
        if (!blocks[i].ptr) return 0;
        if (blocks[i].ptr == (uintptr_t)p) break;
    }
    meta = blocks[i].meta;
    bcount--;
    for (j = i;;) {
        size_t k;
        blocks[i].ptr = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (!blocks[j].ptr) return meta;
            k = ptr_hash(blocks[j].ptr) & mask;
            /* move j to i unless its home k lies cyclically in (i, j] */
            if (i <= j ? (i < k && k <= j) : (i < k || k <= j)) continue;
            break;
        }
        blocks[i] = blocks[j];
        i = j;
    }
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

/* Frame id of one raw frame, through the code cache. */
static uint32_t frame_resolve(const struct pyframe *f)
{
    void *file, *name;
    int first, line;
    const char *sfile, *sfunc;
    uint32_t slot = (uint32_t)(((uintptr_t)f->code >> 4) * 2654435761u ^ (uint32_t)f->lasti * 40503u) & (CODE_CACHE - 1);
    struct code_ent *e = &code_cache[slot];
    uint32_t id;
    pyapi_code_key(f->code, &file, &name, &first);
    if (e->code == f->code && e->lasti == f->lasti && e->file == file && e->name == name && e->firstline == first)
        return e->frame;
    pyapi_code_where(f, &sfile, &sfunc, &first, &line);
    lock_take();
    id = frame_intern(sfile, sfunc, line < 0 ? 0 : line, first);
    lock_give();
    *e = (struct code_ent){f->code, file, name, first, f->lasti, id};
    return id;
}

/* The frame ids of the calling thread's stack, innermost first. */
static int capture(uint32_t *ids, int max)
{
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

/* A sampled allocation of size at p (not NULL). Guard set. */
static void sample_alloc(void *p, size_t size)
{
    uint32_t ids[MAX_FRAMES_TAB < 512 ? MAX_FRAMES_TAB : 512];
    double t0 = now_ns(), w = weight(size);
    int n = capture(ids, (int)max_frames);
    uint32_t st;
    lock_take();
    st = stack_intern(ids, n);
    samples++;
    if (block_put(p, size, st) == 0) bit_set(p);
    else dropped++;
    delta_add(st, w * (double)size, w, 0);
    sample_ns += now_ns() - t0;
    lock_give();
}

/* A free of p whose bit is set (sampling) or any free (exact). Guard set. */
static void account_free(const void *p)
{
    uint64_t meta;
    lock_take();
    events++;
    meta = block_take(p);
    if (meta) {
        size_t size = (size_t)(meta >> 24);
        uint32_t st = (uint32_t)(meta & 0xffffff);
        double w = weight(size);
        if (!exact_mode) bit_clear(p);
        delta_add(st, w * (double)size, w, 1);
    }
    lock_give();
}

#define COMP_DEPTH 8 /* nested comprehensions followed to their enclosing function */

/* Exact: every allocation, by its top frame -- and when that is a comprehension
 * or generator expression, with the frames it runs in up to the first other
 * one, so that the line that wrote it counts it (as sampling's whole stacks
 * do, and as 3.12+'s inlined comprehensions are counted anyway). Guard set. */
static void exact_alloc(void *p, size_t size)
{
    uint32_t ids[COMP_DEPTH + 1];
    int n = capture(ids, 1);
    uint32_t st;
    if (frames[ids[0]].comp) { /* entries below nframes are immutable: no lock needed */
        n = capture(ids, COMP_DEPTH + 1);
        for (int i = 0; i < n; i++)
            if (!frames[ids[i]].comp) {
                n = i + 1;
                break;
            }
    }
    lock_take();
    events++;
    samples++;
    if (n > 1) {
        st = stack_intern(ids, n);
    } else if (frame_stack[ids[0]]) {
        st = frame_stack[ids[0]] - 1;
    } else {
        st = stack_intern(ids, 1);
        frame_stack[ids[0]] = st + 1;
    }
    if (block_put(p, size, st) < 0) dropped++;
    delta_add(st, (double)size, 1, 0);
    lock_give();
}


/* ------------------------------------------------------------ native allocations (native.c) */

static void *(*this_tstate)(void); /* PyGILState_GetThisThreadState: safe without the GIL */
static int (*addr2line_nogil)(void *, int);

/* A str's text when it is compact ASCII (read in place, as pyapi's str_utf8),
 * else "?": without the GIL no Python API may run. */
/* A compact ASCII str's characters, read in place (no GIL: no call into Python), else "?". */
static const char *ascii_or_what(void *str, const struct pyabi *abi)
{
    unsigned state;
    if (!str) return "?";
    state = *(unsigned *)((char *)str + abi->str.state);
    return (state >> 5 & 1) && (state >> 6 & 1) ? (const char *)str + abi->str.ascii_size : "?";
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

int64_t hooks_next_gap(void) { return next_gap(); }

int hooks_native_ready(char *err)
{
    if (!installed) {
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

#define MAX_NATIVE 32 /* native frames per sample */

void hooks_native_alloc(void *p, size_t size)
{
    uint32_t ids[513 + 2 * MAX_NATIVE];
    uint64_t pcs[MAX_NATIVE];
    double w;
    int n, npcs;
    uint32_t st;
    if (T.guard || !installed || atomic_load_explicit(&passthrough, memory_order_relaxed)) return;
    T.guard = 1;
    w = weight(size);
    npcs = native_unwind(pcs, MAX_NATIVE); /* first: the hook's frames are the innermost */
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
        if (block_put(p, size, st) == 0) bit_set(p);
        else dropped++;
        delta_add(st, w * (double)size, w, 0);
    }
    lock_give();
    T.guard = 0;
}

void hooks_native_free(const void *p)
{
    if (T.guard || !installed) return;
    T.guard = 1;
    if (frames) account_free(p);
    T.guard = 0;
}

/* ------------------------------------------------------------ sampling wrappers */

/* Who may still be running wrapper code when the hooks are removed: MEM and
 * OBJ wrappers run with the GIL held and never release it, so once the saved
 * allocators are back (under the GIL) none is inside one. RAW wrappers run on
 * any thread without the GIL: their slow paths are counted. */
#define INFLIGHT_INC(d) \
    if ((d)->id == 0) atomic_fetch_add_explicit(&inflight, 1, memory_order_acquire)
#define INFLIGHT_DEC(d) \
    if ((d)->id == 0) atomic_fetch_sub_explicit(&inflight, 1, memory_order_release)

/* The fast paths only count down and tail-call the saved allocator. Which
 * requests count where depends on what lies below a wrapper (enum wrap_kind):
 *  - RAW: nothing below calls back into a wrapper; every request counts.
 *  - pymalloc (MEM/OBJ, frees unwatched): pymalloc hands requests above 512
 *    bytes on to PyMem_RawMalloc/Realloc, so those pass straight through and
 *    the RAW wrapper counts (and samples) them, stack and all.
 *  - other MEM/OBJ allocators (debug hooks, tracemalloc, PYTHONMALLOC=malloc):
 *    requests above pymalloc_small_max (which pymalloc, under debug hooks or
 *    tracemalloc, hands on to RAW) take the slow way even when not sampled, and
 *    the guard keeps a nested RAW call from counting the same bytes twice (the
 *    slow paths also undo what nested calls counted). */
enum wrap_kind { WRAP_RAW, WRAP_PYMALLOC, WRAP_OTHER };

/* Bytes left until the next sample. Per thread, except over pymalloc: its
 * callers hold the GIL, which serializes them, so one countdown (a plain
 * global, cheaper to reach than a thread-local in a shared library) serves.
 * Where that does not hold (an extension breaking the rule; subinterpreters
 * with their own GIL, 3.12+) a racing update only shifts when the next sample
 * falls: the slow path's state is the thread's own. */
static int64_t gil_countdown;
#define COUNTDOWN(kind) (*((kind) == WRAP_PYMALLOC ? &gil_countdown : &T.countdown))

/* pymalloc serves requests up to SMALL_REQUEST_THRESHOLD bytes (the running
 * version's pyabi alloc.small_max, 512 in every supported one) from its arenas
 * and hands larger ones to PyMem_RawMalloc. Set before the wrappers go in. */
static size_t pymalloc_small_max = 512;

/* In a domain whose frees are unwatched, a sampled block must live outside
 * pymalloc's arenas: asked for as a large block, pymalloc takes it from the
 * RAW domain (and counts it), and its free comes back through PyMem_RawFree,
 * where the RAW wrapper sees it. A sample costs at most 513 bytes of memory. */
static inline size_t sampled_size(const struct domain *d, size_t size)
{
    return d->free_unwatched && size <= pymalloc_small_max ? pymalloc_small_max + 1 : size;
}

/* The slow paths: cd is the countdown the fast path counted size down on. */
static __attribute__((noinline)) void *s_malloc_slow(struct domain *d, size_t size, int64_t *cd)
{
    int64_t c = *cd;
    void *p;
    int64_t keep;
    int first;
    if (T.guard || atomic_load_explicit(&passthrough, memory_order_relaxed)) return d->saved.malloc(d->saved.ctx, size);
    INFLIGHT_INC(d);
    T.guard = 1;
    keep = T.countdown;
    first = cd == &T.countdown && !T.init; /* a thread's first call only starts its countdown */
    p = d->saved.malloc(d->saved.ctx, c <= 0 && !first ? sampled_size(d, size) : size);
    T.countdown = keep; /* what a nested RAW call counted */
    if (c <= 0) {
        *cd = next_gap();
        if (p && !first) sample_alloc(p, size);
    }
    T.guard = 0;
    INFLIGHT_DEC(d);
    return p;
}

/* Requests that bypass counting here: pymalloc's large ones (see above). */
#define PASS_LARGE(kind, size) ((kind) == WRAP_PYMALLOC && (size) > pymalloc_small_max)
/* Counts size down on the GIL's countdown; false once it reaches zero. On
 * x86-64 one read-modify-write instruction and its branch, where compilers
 * keep a load, a subtraction, a store and a test. */
static inline __attribute__((always_inline)) int gil_count_down(size_t size)
{
#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 11)
    __asm__ goto("subq %1, %0\n\tjle %l[due]" : "+m"(gil_countdown) : "r"(size) : "cc" : due);
    return 1;
due:
    return 0;
#else
    return (gil_countdown -= (int64_t)size) > 0;
#endif
}

/* Counts size down; true on the fast path (the slow one reads the countdown). */
#define FAST(kind, size)                                                                                    \
    ((kind) == WRAP_PYMALLOC ? gil_count_down(size)                                                         \
                             : (T.countdown -= (int64_t)(size)) > 0 && ((kind) != WRAP_OTHER || (size) <= pymalloc_small_max))

/* The fast paths hand on the ctx they were called with: the saved allocator's
 * own (hooks_install installs each wrapper with it), already in its register. */
static inline __attribute__((always_inline)) void *s_malloc(struct domain *d, void *ctx, size_t size,
                                                             enum wrap_kind kind)
{
    if (PASS_LARGE(kind, size)) return d->saved.malloc(ctx, size);
    if (likely(FAST(kind, size))) return d->saved.malloc(ctx, size);
    return s_malloc_slow(d, size, &COUNTDOWN(kind));
}

static __attribute__((noinline)) void *s_calloc_slow(struct domain *d, size_t nelem, size_t elsize, int64_t *cd)
{
    int64_t c = *cd;
    void *p;
    int64_t keep;
    int first;
    if (T.guard || atomic_load_explicit(&passthrough, memory_order_relaxed))
        return d->saved.calloc(d->saved.ctx, nelem, elsize);
    INFLIGHT_INC(d);
    T.guard = 1;
    keep = T.countdown;
    first = cd == &T.countdown && !T.init;
    if (c <= 0 && !first && sampled_size(d, nelem * elsize) != nelem * elsize)
        p = d->saved.calloc(d->saved.ctx, 1, sampled_size(d, nelem * elsize)); /* zeroed all the same */
    else
        p = d->saved.calloc(d->saved.ctx, nelem, elsize);
    T.countdown = keep;
    if (c <= 0) {
        *cd = next_gap();
        if (p && !first) sample_alloc(p, nelem * elsize);
    }
    T.guard = 0;
    INFLIGHT_DEC(d);
    return p;
}

static inline __attribute__((always_inline)) void *s_calloc(struct domain *d, void *ctx, size_t nelem, size_t elsize,
                                                             enum wrap_kind kind)
{
    size_t size = nelem * elsize;
    if (PASS_LARGE(kind, size)) return d->saved.calloc(ctx, nelem, elsize);
    if (likely(FAST(kind, size))) return d->saved.calloc(ctx, nelem, elsize);
    return s_calloc_slow(d, nelem, elsize, &COUNTDOWN(kind));
}

static __attribute__((noinline)) void *s_realloc_slow(struct domain *d, void *ptr, size_t size, int64_t *cd)
{
    int64_t c = *cd;
    void *p;
    uint64_t meta = 0;
    int64_t keep;
    int first;
    if (T.guard || atomic_load_explicit(&passthrough, memory_order_relaxed))
        return d->saved.realloc(d->saved.ctx, ptr, size);
    INFLIGHT_INC(d);
    T.guard = 1;
    /* Take the old block out before the address can be handed out again. */
    if (ptr && bit_test(ptr)) {
        lock_take();
        meta = block_take(ptr);
        if (meta) bit_clear(ptr);
        lock_give();
    }
    keep = T.countdown;
    first = cd == &T.countdown && !T.init;
    p = d->saved.realloc(d->saved.ctx, ptr, c <= 0 && !first ? sampled_size(d, size) : size);
    T.countdown = keep;
    if (meta) {
        size_t osz = (size_t)(meta >> 24);
        uint32_t st = (uint32_t)(meta & 0xffffff);
        lock_take();
        if (!p) { /* failed: the old block lives on */
            if (block_put(ptr, osz, st) == 0) bit_set(ptr);
        } else {
            double w = weight(osz);
            delta_add(st, w * (double)osz, w, 1);
        }
        lock_give();
    }
    if (c <= 0) {
        *cd = next_gap();
        if (p && !first) sample_alloc(p, size);
    }
    T.guard = 0;
    INFLIGHT_DEC(d);
    return p;
}

/* Over pymalloc no block of this domain is a sampled one: those live in the RAW
 * domain (sampled_size), and pymalloc hands their reallocs on to it. */
static inline __attribute__((always_inline)) void *s_realloc(struct domain *d, void *ctx, void *ptr, size_t size,
                                                              enum wrap_kind kind)
{
    if (PASS_LARGE(kind, size)) return d->saved.realloc(ctx, ptr, size);
    if (likely(FAST(kind, size)) && (kind == WRAP_PYMALLOC || !ptr || !bit_test(ptr)))
        return d->saved.realloc(ctx, ptr, size);
    return s_realloc_slow(d, ptr, size, &COUNTDOWN(kind));
}

/* A free that may be of a tracked block: account it, then free. Both modes. */
static inline __attribute__((always_inline)) void free_tracked(struct domain *d, void *ptr)
{
    if (T.guard || atomic_load_explicit(&passthrough, memory_order_relaxed)) {
        d->saved.free(d->saved.ctx, ptr);
        return;
    }
    INFLIGHT_INC(d);
    T.guard = 1;
    account_free(ptr);
    d->saved.free(d->saved.ctx, ptr);
    T.guard = 0;
    INFLIGHT_DEC(d);
}

static __attribute__((noinline)) void s_free_slow(struct domain *d, void *ptr) { free_tracked(d, ptr); }

static inline __attribute__((always_inline)) void s_free(struct domain *d, void *ptr)
{
    if (likely(!ptr || !bit_test(ptr))) {
        d->saved.free(d->saved.ctx, ptr);
        return;
    }
    s_free_slow(d, ptr);
}

/* ------------------------------------------------------------ exact wrappers */

#define EXACT_ENTER(d, call)                                                                   \
    if (unlikely(T.guard || atomic_load_explicit(&passthrough, memory_order_relaxed))) return call; \
    INFLIGHT_INC(d);                                                                           \
    T.guard = 1

#define EXACT_LEAVE(d)                                                                         \
    T.guard = 0;                                                                               \
    INFLIGHT_DEC(d) /* RAW only, as EXACT_ENTER: one atomic less per call elsewhere */

static inline __attribute__((always_inline)) void *x_malloc(struct domain *d, size_t size)
{
    void *p;
    EXACT_ENTER(d, d->saved.malloc(d->saved.ctx, size));
    p = d->saved.malloc(d->saved.ctx, size);
    if (p) exact_alloc(p, size);
    EXACT_LEAVE(d);
    return p;
}

static inline __attribute__((always_inline)) void *x_calloc(struct domain *d, size_t nelem, size_t elsize)
{
    void *p;
    EXACT_ENTER(d, d->saved.calloc(d->saved.ctx, nelem, elsize));
    p = d->saved.calloc(d->saved.ctx, nelem, elsize);
    if (p) exact_alloc(p, nelem * elsize);
    EXACT_LEAVE(d);
    return p;
}

static inline __attribute__((always_inline)) void *x_realloc(struct domain *d, void *ptr, size_t size)
{
    void *p;
    uint64_t meta = 0;
    EXACT_ENTER(d, d->saved.realloc(d->saved.ctx, ptr, size));
    if (ptr) {
        lock_take();
        meta = block_take(ptr);
        lock_give();
    }
    p = d->saved.realloc(d->saved.ctx, ptr, size);
    if (!p) {
        if (meta) {
            lock_take();
            block_put(ptr, (size_t)(meta >> 24), (uint32_t)(meta & 0xffffff));
            lock_give();
        }
    } else {
        if (meta) {
            lock_take();
            delta_add((uint32_t)(meta & 0xffffff), (double)(meta >> 24), 1, 1);
            lock_give();
        }
        exact_alloc(p, size);
    }
    EXACT_LEAVE(d);
    return p;
}

static inline __attribute__((always_inline)) void x_free(struct domain *d, void *ptr)
{
    if (!ptr) {
        d->saved.free(d->saved.ctx, ptr);
        return;
    }
    free_tracked(d, ptr);
}

/* ------------------------------------------------------------ install / remove */

/* The allocators installed, one set per domain: each knows its domain without
 * a context, so the domain keeps its own ctx -- and a free left unwrapped is
 * called exactly as before. */
#define DOMAIN_WRAPPERS(i, kind)                                                                            \
    static void *s_malloc_##i(void *ctx, size_t n) { return s_malloc(&doms[i], ctx, n, kind); }             \
    static void *s_calloc_##i(void *ctx, size_t n, size_t e) { return s_calloc(&doms[i], ctx, n, e, kind); } \
    static void *s_realloc_##i(void *ctx, void *p, size_t n) { return s_realloc(&doms[i], ctx, p, n, kind); } \
    static void s_free_##i(void *ctx, void *p) { (void)ctx; s_free(&doms[i], p); }                          \
    static void *x_malloc_##i(void *ctx, size_t n) { (void)ctx; return x_malloc(&doms[i], n); }            \
    static void *x_calloc_##i(void *ctx, size_t n, size_t e) { (void)ctx; return x_calloc(&doms[i], n, e); } \
    static void *x_realloc_##i(void *ctx, void *p, size_t n) { (void)ctx; return x_realloc(&doms[i], p, n); } \
    static void x_free_##i(void *ctx, void *p) { (void)ctx; x_free(&doms[i], p); }
/* sampling over pymalloc: its free is left in place (hooks_install) */
#define PYMALLOC_WRAPPERS(i)                                                                                \
    static void *p_malloc_##i(void *ctx, size_t n) { return s_malloc(&doms[i], ctx, n, WRAP_PYMALLOC); }    \
    static void *p_calloc_##i(void *ctx, size_t n, size_t e) { return s_calloc(&doms[i], ctx, n, e, WRAP_PYMALLOC); } \
    static void *p_realloc_##i(void *ctx, void *p, size_t n) { return s_realloc(&doms[i], ctx, p, n, WRAP_PYMALLOC); }
DOMAIN_WRAPPERS(0, WRAP_RAW)
DOMAIN_WRAPPERS(1, WRAP_OTHER)
DOMAIN_WRAPPERS(2, WRAP_OTHER)
PYMALLOC_WRAPPERS(1)
PYMALLOC_WRAPPERS(2)

static const memalloc_t sampling_wrappers[3] = {
    {NULL, s_malloc_0, s_calloc_0, s_realloc_0, s_free_0},
    {NULL, s_malloc_1, s_calloc_1, s_realloc_1, s_free_1},
    {NULL, s_malloc_2, s_calloc_2, s_realloc_2, s_free_2}};
static const memalloc_t pymalloc_wrappers[3] = {
    {NULL, NULL, NULL, NULL, NULL}, /* RAW is never pymalloc */
    {NULL, p_malloc_1, p_calloc_1, p_realloc_1, NULL},
    {NULL, p_malloc_2, p_calloc_2, p_realloc_2, NULL}};
static const memalloc_t exact_wrappers[3] = {
    {NULL, x_malloc_0, x_calloc_0, x_realloc_0, x_free_0},
    {NULL, x_malloc_1, x_calloc_1, x_realloc_1, x_free_1},
    {NULL, x_malloc_2, x_calloc_2, x_realloc_2, x_free_2}};

static int is_ours(void *fn)
{
    for (int i = 0; i < 3; i++)
        if (fn == (void *)sampling_wrappers[i].malloc || fn == (void *)exact_wrappers[i].malloc ||
            (fn && fn == (void *)pymalloc_wrappers[i].malloc))
            return 1;
    return 0;
}

/* pymalloc's own allocator in domain i (MEM or OBJ, as CPython sets them up):
 * context NULL, the same functions in MEM and OBJ, others than RAW's. Not
 * under PYTHONMALLOC=malloc, mimalloc (3.13: MEM and OBJ functions differ),
 * the debug hooks or another tracer (tracemalloc). */
static int is_pymalloc(const memalloc_t *raw, const memalloc_t *mem, const memalloc_t *obj, int i)
{
    return i > 0 && !mem->ctx && !obj->ctx && mem->malloc == obj->malloc && mem->free == obj->free &&
           mem->realloc == obj->realloc && mem->free != raw->free && mem->malloc != raw->malloc;
}

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
    unmap(deltas, MAX_STACKS * sizeof *deltas);
    unmap(stack_live, MAX_STACKS * sizeof *stack_live);
    unmap(stack_peak, MAX_STACKS * sizeof *stack_peak);
    unmap(dirty, MAX_STACKS * sizeof *dirty);
    unmap(is_dirty, MAX_STACKS);
    unmap(blocks, bcap * sizeof *blocks);
    unmap(bitcount, BITMAP_BITS * sizeof *bitcount);
    unmap(code_cache, CODE_CACHE * sizeof *code_cache);
    frames = NULL, frame_index = NULL, strs = NULL, stack_off = stack_hash = stack_index = NULL;
    stack_len = NULL, stack_frames = frame_stack = dirty = NULL, deltas = NULL, is_dirty = NULL;
    stack_live = stack_peak = NULL;
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
    deltas = map_zero(MAX_STACKS * sizeof *deltas);
    stack_live = map_zero(MAX_STACKS * sizeof *stack_live);
    stack_peak = map_zero(MAX_STACKS * sizeof *stack_peak);
    dirty = map_zero(MAX_STACKS * sizeof *dirty);
    is_dirty = map_zero(MAX_STACKS);
    memset(bitmap, 0, sizeof bitmap);
    bitcount = map_zero(BITMAP_BITS * sizeof *bitcount);
    code_cache = map_zero(CODE_CACHE * sizeof *code_cache);
    if (!frames || !frame_index || !strs || !stack_off || !stack_hash || !stack_index || !stack_len ||
        !stack_frames || !frame_stack || !deltas || !stack_live || !stack_peak || !dirty || !is_dirty || !bitcount || !code_cache ||
        blocks_grow() < 0) {
        tables_free();
        return -1;
    }
    memset(str_cache, 0, sizeof str_cache);
    strs[0] = '?';
    strs_len = 2;
    nframes = frames_sent = nstacks = stacks_sent = stack_frames_len = ndirty = 0;
    dropped = samples = events = 0;
    sample_ns = 0;
    for (uint32_t i = 0; i < FRAME_FIRST; i++) {
        frame_intern(names[i], names[i], 0, 0);
        frame_stack[i] = stack_intern(&i, 1) + 1;
    }
    return 0;
}

int hooks_installed(void) { return installed; }

int hooks_install(const struct hooks_conf *c, char *err)
{
    char werr[MP_ERRLEN];
    memalloc_t cur, mine;
    if (installed) return 0;
    get_alloc = (void (*)(int, memalloc_t *))pyapi_sym("PyMem_GetAllocator");
    set_alloc = (void (*)(int, memalloc_t *))pyapi_sym("PyMem_SetAllocator");
    if (!get_alloc || !set_alloc) {
        mp_err(err, "PyMem_GetAllocator/PyMem_SetAllocator not found");
        return -1;
    }
    walk_ok = pyapi_walk_init(werr) == 0; /* without it: sites are "<unknown>" */
    if (pyapi_abi()) pymalloc_small_max = pyapi_abi()->alloc.small_max;
    rate = c->rate ? (double)c->rate : 512.0 * 1024;
    max_frames = c->frames ? (c->frames > 512 ? 512 : c->frames) : 64;
    exact_mode = c->exact;
    if (tables_alloc() < 0) {
        mp_err(err, "cannot allocate the allocation tables");
        return -1;
    }
    heap_live = heap_peak = heap_alloc_bytes = heap_alloc_count = 0;
    T.countdown = 0;
    T.init = 0;
    gil_countdown = next_gap(); /* also starts this thread's generator... */
    T.countdown = next_gap();   /* ...so its countdown starts here */
    for (int i = 0; i < 3; i++) {
        get_alloc(i, &cur);
        /* a fork child re-attached: ours are in place, the originals saved */
        if (!is_ours((void *)cur.malloc)) doms[i].saved = cur;
        doms[i].id = i;
    }
    for (int i = 0; i < 3; i++) {
        /* Sampling over pymalloc leaves its free alone: most frees then cost
         * nothing at all. The blocks sampled there are placed outside the
         * arenas (sampled_size), so theirs reach the RAW wrapper. */
        doms[i].free_unwatched = !exact_mode && is_pymalloc(&doms[0].saved, &doms[1].saved, &doms[2].saved, i);
        mine = exact_mode ? exact_wrappers[i] : doms[i].free_unwatched ? pymalloc_wrappers[i] : sampling_wrappers[i];
        mine.ctx = doms[i].saved.ctx;
        if (doms[i].free_unwatched) mine.free = doms[i].saved.free;
        set_alloc(i, &mine);
    }
    atomic_store(&passthrough, 0);
    installed = ever_hooked = 1;
    return 0;
}

/* Keep this library mapped for good: some code may still call our wrappers. */
static void pin_library(void)
{
    Dl_info di;
    if (dladdr((void *)hooks_install, &di) && di.dli_fname)
        dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

int hooks_quiesce(atomic_int *count)
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

static int need_release;

void hooks_uninstall(void)
{
    memalloc_t cur;
    int wrapped = 0;
    if (!installed) return;
    for (int i = 0; i < 3; i++) {
        get_alloc(i, &cur);
        if (!is_ours((void *)cur.malloc)) wrapped = 1;
    }
    atomic_store(&passthrough, 1);
    installed = 0;
    if (wrapped) {
        /* e.g. tracemalloc started after us and still holds our wrappers as its
         * "previous" allocator: removing ours would remove theirs */
        pin_library();
        return;
    }
    for (int i = 0; i < 3; i++) set_alloc(i, &doms[i].saved);
    need_release = 1;
}

void hooks_release(void)
{
    if (!need_release) return;
    need_release = 0;
    if (hooks_quiesce(&inflight) < 0) {
        pin_library();
        return;
    }
    lock_take();
    tables_free();
    lock_give();
}

void hooks_abandon(void)
{
    if (!installed) return;
    atomic_store(&passthrough, 1);
    installed = 0;
    pin_library();
}

void hooks_freeze(void)
{
    if (installed) atomic_store(&passthrough, 1);
}

int hooks_frozen(void) { return installed && atomic_load(&passthrough); }

void hooks_atfork_follow(void)
{
    /* Only this thread survives; the lock may have been held by another. */
    atomic_flag_clear(&lock);
    atomic_store(&inflight, 0);
    T.guard = 0;
    if (!installed || !frames) return;
    /* The child is a session of its own: it starts with no deltas and no
     * blocks (what it inherited was the parent's), and sends every frame and
     * stack again to its new daemon connection. */
    for (uint32_t i = 0; i < ndirty; i++) {
        deltas[dirty[i]] = (struct delta){0, 0, 0, 0};
        is_dirty[dirty[i]] = 0;
    }
    ndirty = 0;
    memset(stack_live, 0, MAX_STACKS * sizeof *stack_live);
    memset(stack_peak, 0, MAX_STACKS * sizeof *stack_peak);
    heap_live = heap_peak = heap_alloc_bytes = heap_alloc_count = 0;
    if (bcap) memset(blocks, 0, bcap * sizeof *blocks);
    bcount = 0;
    memset(bitmap, 0, sizeof bitmap);
    memset(bitcount, 0, BITMAP_BITS * sizeof *bitcount);
    frames_sent = stacks_sent = 0;
    dropped = samples = events = 0;
    sample_ns = 0;
}

void hooks_atfork_child(void)
{
    /* Only this thread survives; the lock may have been held by another. The
     * wrappers stay installed but only pass through (document: forked children
     * are not tracked; attach to them separately). */
    atomic_store(&passthrough, 1);
    atomic_flag_clear(&lock);
    atomic_store(&inflight, 0);
    installed = 0;
    T.guard = 0;
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

int hooks_collect(Memprof__AllocReport *r)
{
    static uint64_t seq;
    uint32_t f0, f1, s0, s1, nd, cap;
    struct delta *dv = NULL;
    uint32_t *ds = NULL;
    double *pk = NULL;
    double cost_ns;
    memprof__alloc_report__init(r);
    if (!frames) return -1;
    /* room for the stacks dirty now and some more (no malloc under the lock):
     * any beyond it stay dirty for the next report */
    lock_take();
    cap = ndirty + 1024 < MAX_STACKS ? ndirty + 1024 : MAX_STACKS;
    lock_give();
    dv = malloc(cap * sizeof *dv);
    ds = malloc(cap * sizeof *ds);
    pk = malloc(cap * sizeof *pk);
    if (!dv || !ds || !pk) {
        free(dv);
        free(ds);
        free(pk);
        return -1;
    }
    lock_take();
    f0 = frames_sent, f1 = frames_sent = nframes;
    s0 = stacks_sent, s1 = stacks_sent = nstacks;
    nd = ndirty < cap ? ndirty : cap;
    ndirty -= nd; /* the last nd are taken */
    for (uint32_t i = 0; i < nd; i++) {
        uint32_t st = dirty[ndirty + i];
        ds[i] = st;
        dv[i] = deltas[st];
        pk[i] = stack_peak[st];
        deltas[st] = (struct delta){0, 0, 0, 0};
        is_dirty[st] = 0;
    }
    r->dropped = dropped;
    r->samples = samples;
    cost_ns = sample_ns + (exact_mode ? events * EXACT_EVENT_NS : 0);
    lock_give();

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
        free(fa), free(sa), free(da), free(dv), free(ds), free(pk);
        hooks_report_free(r);
        return -1;
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
        memprof__alloc_delta__init(d);
        d->stack = ds[i];
        d->alloc_bytes = dv[i].ab;
        d->alloc_count = dv[i].ac;
        d->free_bytes = dv[i].fb;
        d->free_count = dv[i].fc;
        d->peak_live = pk[i];
        r->deltas[r->n_deltas++] = d;
    }
    free(dv);
    free(ds);
    free(pk);
    return 0;
}

void hooks_report_free(Memprof__AllocReport *r)
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
    on = installed;
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
