/* hooks.c -- the PyMem front-end of the recorder (track.c): wrappers around
 * the RAW, MEM and OBJ allocators, which count bytes down to Poisson-sampled
 * allocations (or, exact, take every one) and hand them to the recorder.
 * hooks_install picks one set of wrappers per domain. */
#include "agent/hooks.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/agent.h"
#include "agent/pyapi.h"
#include "agent/track.h"
#include "common/util.h"

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

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

#define T track_T /* the calling thread's guard and countdown */

static struct domain doms[3];
static void (*get_alloc)(int, memalloc_t *);
static void (*set_alloc)(int, memalloc_t *);

static atomic_int inflight;

/* ------------------------------------------------------------ sampling wrappers */

/* Who may still be running wrapper code when the hooks are removed: MEM and
 * OBJ wrappers run with the GIL held and never release it, so once the saved
 * allocators are back (under the GIL) none is inside one. RAW wrappers run on
 * any thread without the GIL: their slow paths are counted. */
#define INFLIGHT_INC(d) \
    if ((d) == &doms[0]) atomic_fetch_add_explicit(&inflight, 1, memory_order_acquire)
#define INFLIGHT_DEC(d) \
    if ((d) == &doms[0]) atomic_fetch_sub_explicit(&inflight, 1, memory_order_release)
/* Whether the recorder may take the caller for the GIL's holder (track.h): MEM and OBJ callers hold it. */
#define WHO(d) ((d) == &doms[0] ? TRACK_ANY : TRACK_GIL)

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
    if (T.guard || atomic_load_explicit(&track_passthrough, memory_order_relaxed)) return d->saved.malloc(d->saved.ctx, size);
    INFLIGHT_INC(d);
    T.guard = 1;
    keep = T.countdown;
    first = cd == &T.countdown && !T.init; /* a thread's first call only starts its countdown */
    p = d->saved.malloc(d->saved.ctx, c <= 0 && !first ? sampled_size(d, size) : size);
    T.countdown = keep; /* what a nested RAW call counted */
    if (c <= 0) {
        *cd = track_next_gap();
        if (p && !first) track_sample(p, size);
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
    if (T.guard || atomic_load_explicit(&track_passthrough, memory_order_relaxed))
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
        *cd = track_next_gap();
        if (p && !first) track_sample(p, nelem * elsize);
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
    track_meta meta = 0;
    int64_t keep;
    int first;
    if (T.guard || atomic_load_explicit(&track_passthrough, memory_order_relaxed))
        return d->saved.realloc(d->saved.ctx, ptr, size);
    INFLIGHT_INC(d);
    T.guard = 1;
    /* Take the old block out before the address can be handed out again. */
    if (ptr && track_maybe_sampled(ptr)) meta = track_take(ptr, WHO(d));
    keep = T.countdown;
    first = cd == &T.countdown && !T.init;
    p = d->saved.realloc(d->saved.ctx, ptr, c <= 0 && !first ? sampled_size(d, size) : size);
    T.countdown = keep;
    if (meta) {
        if (!p) track_untake(ptr, meta, WHO(d)); /* failed: the old block lives on */
        else track_freed(meta, WHO(d));
    }
    if (c <= 0) {
        *cd = track_next_gap();
        if (p && !first) track_sample(p, size);
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
    if (likely(FAST(kind, size)) && (kind == WRAP_PYMALLOC || !ptr || !track_maybe_sampled(ptr)))
        return d->saved.realloc(ctx, ptr, size);
    return s_realloc_slow(d, ptr, size, &COUNTDOWN(kind));
}

/* A free that may be of a tracked block: account it, then free. Both modes. */
static inline __attribute__((always_inline)) void free_tracked(struct domain *d, void *ptr)
{
    if (T.guard || atomic_load_explicit(&track_passthrough, memory_order_relaxed)) {
        d->saved.free(d->saved.ctx, ptr);
        return;
    }
    INFLIGHT_INC(d);
    T.guard = 1;
    track_free(ptr, WHO(d));
    d->saved.free(d->saved.ctx, ptr);
    T.guard = 0;
    INFLIGHT_DEC(d);
}

static __attribute__((noinline)) void s_free_slow(struct domain *d, void *ptr) { free_tracked(d, ptr); }

static inline __attribute__((always_inline)) void s_free(struct domain *d, void *ptr)
{
    if (likely(!ptr || !track_maybe_sampled(ptr))) {
        d->saved.free(d->saved.ctx, ptr);
        return;
    }
    s_free_slow(d, ptr);
}

/* ------------------------------------------------------------ exact wrappers */

#define EXACT_ENTER(d, call)                                                                   \
    if (unlikely(T.guard || atomic_load_explicit(&track_passthrough, memory_order_relaxed))) return call; \
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
    if (p) track_exact(p, size);
    EXACT_LEAVE(d);
    return p;
}

static inline __attribute__((always_inline)) void *x_calloc(struct domain *d, size_t nelem, size_t elsize)
{
    void *p;
    EXACT_ENTER(d, d->saved.calloc(d->saved.ctx, nelem, elsize));
    p = d->saved.calloc(d->saved.ctx, nelem, elsize);
    if (p) track_exact(p, nelem * elsize);
    EXACT_LEAVE(d);
    return p;
}

static inline __attribute__((always_inline)) void *x_realloc(struct domain *d, void *ptr, size_t size)
{
    void *p;
    track_meta meta = 0;
    EXACT_ENTER(d, d->saved.realloc(d->saved.ctx, ptr, size));
    if (ptr) meta = track_take(ptr, WHO(d));
    p = d->saved.realloc(d->saved.ctx, ptr, size);
    if (!p) {
        if (meta) track_untake(ptr, meta, WHO(d));
    } else {
        if (meta) track_freed(meta, WHO(d));
        track_exact(p, size);
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

int hooks_installed(void) { return track_on; }

int hooks_install(const struct hooks_conf *c, char *err)
{
    memalloc_t cur, mine;
    if (track_on) return 0;
    get_alloc = (void (*)(int, memalloc_t *))pyapi_sym("PyMem_GetAllocator");
    set_alloc = (void (*)(int, memalloc_t *))pyapi_sym("PyMem_SetAllocator");
    if (!get_alloc || !set_alloc) {
        mp_err(err, "PyMem_GetAllocator/PyMem_SetAllocator not found");
        return -1;
    }
    if (track_start(c->rate, c->frames, c->exact, err) < 0) return -1;
    if (pyapi_abi()) pymalloc_small_max = pyapi_abi()->alloc.small_max;
    gil_countdown = track_next_gap(); /* also starts this thread's generator... */
    T.countdown = track_next_gap();   /* ...so its countdown starts here */
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
        doms[i].free_unwatched = !c->exact && is_pymalloc(&doms[0].saved, &doms[1].saved, &doms[2].saved, i);
        mine = c->exact ? exact_wrappers[i] : doms[i].free_unwatched ? pymalloc_wrappers[i] : sampling_wrappers[i];
        mine.ctx = doms[i].saved.ctx;
        if (doms[i].free_unwatched) mine.free = doms[i].saved.free;
        set_alloc(i, &mine);
    }
    atomic_store(&track_passthrough, 0);
    track_on = 1;
    return 0;
}

/* Keep this library mapped for good: some code may still call our wrappers. */
static void pin_library(void)
{
    Dl_info di;
    if (dladdr((void *)hooks_install, &di) && di.dli_fname)
        dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static int need_release;

void hooks_uninstall(void)
{
    memalloc_t cur;
    int wrapped = 0;
    if (!track_on) return;
    for (int i = 0; i < 3; i++) {
        get_alloc(i, &cur);
        if (!is_ours((void *)cur.malloc)) wrapped = 1;
    }
    atomic_store(&track_passthrough, 1);
    track_on = 0;
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
    if (track_quiesce(&inflight) < 0) {
        pin_library();
        return;
    }
    track_stop();
}

void hooks_abandon(void)
{
    if (!track_on) return;
    atomic_store(&track_passthrough, 1);
    track_on = 0;
    pin_library();
}

void hooks_freeze(void)
{
    if (track_on) atomic_store(&track_passthrough, 1);
}

int hooks_frozen(void) { return track_on && atomic_load(&track_passthrough); }

void hooks_atfork_follow(void)
{
    /* Only this thread survives: no other is inside a wrapper. */
    atomic_store(&inflight, 0);
    track_atfork_follow();
}

void hooks_atfork_child(void)
{
    /* Only this thread survives. The wrappers stay installed but only pass
     * through (document: forked children are not tracked; attach to them
     * separately). */
    atomic_store(&inflight, 0);
    track_atfork_child();
}
