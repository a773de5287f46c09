/* heap.h -- what the object census engine's files share (census.c, backrefs.c, labels.c,
 * heap.c): reading objects at the running version's offsets, the C API it calls, pointer maps,
 * the heap walk, the type table and shallow sizes, and the bounded label builder. Internal to the
 * agent: no Python code runs through any of it (see census.c). */
#ifndef MEMPROF_HEAP_H
#define MEMPROF_HEAP_H

#include <stdint.h>
#include <stdlib.h>
#include <sys/types.h>

#include "agent/agent.h"
#include "agent/aset.h"

/* Every CPython layout fact used below comes from common/pyabi.h: constants for
 * what every supported version shares, the running version's entry (abi) for the
 * rest. Read at fixed offsets, the same in every supported version (LP64):
 * str length 0x10; dict ma_used 0x10; long digits 0x18;
 * float ob_fval 0x10; bytes ob_sval 0x20; bytearray ob_alloc 0x18; set used
 * 0x18, mask 0x20, table 0x28, smalltable 0x40; module md_dict 0x10; cell
 * ob_ref 0x10; method im_func 0x10, im_self 0x18; C function m_ml 0x10, m_self
 * 0x18. tests/test_objects.py checks them against the interpreter on each. */
extern const struct pyabi *abi;

typedef struct pyobj pyobj; /* a PyObject, only read through the macros below */
typedef int (*visit_fn)(pyobj *, void *);
typedef int (*traverse_fn)(pyobj *, visit_fn, void *);
typedef int (*inquiry_fn)(pyobj *);

#define OB_REFCNT(o) PYABI_AT(o, PYABI_OB_REFCNT, ssize_t)
#define OB_TYPE(o) PYABI_AT(o, PYABI_OB_TYPE, char *)
#define OB_SIZE(o) PYABI_AT(o, PYABI_OB_SIZE, ssize_t)
#define GC_NEXT(o) PYABI_AT((char *)(o) - PYABI_GC_HEAD, 0, uintptr_t)
#define TP_NAME(t) PYABI_AT(t, PYABI_TP_NAME, const char *)
#define TP_BASICSIZE(t) PYABI_AT(t, PYABI_TP_BASICSIZE, ssize_t)
#define TP_ITEMSIZE(t) PYABI_AT(t, PYABI_TP_ITEMSIZE, ssize_t)
#define TP_FLAGS(t) PYABI_AT(t, PYABI_TP_FLAGS, unsigned long)
#define TP_TRAVERSE(t) PYABI_AT(t, PYABI_TP_TRAVERSE, traverse_fn)
#define TP_MEMBERS(t) PYABI_AT(t, PYABI_TP_MEMBERS, char *)
#define TP_BASE(t) PYABI_AT(t, PYABI_TP_BASE, char *)
#define TP_DICT(t) PYABI_AT(t, PYABI_TP_DICT, pyobj *)
#define TP_DICTOFFSET(t) PYABI_AT(t, PYABI_TP_DICTOFFSET, ssize_t)
#define TP_IS_GC(t) PYABI_AT(t, PYABI_TP_IS_GC, inquiry_fn)
#define TP_BASES(t) PYABI_AT(t, PYABI_TP_BASES, pyobj *)
#define TP_MRO(t) PYABI_AT(t, PYABI_TP_MRO, pyobj *)

#define F_INLINE_VALUES (1UL << 2) /* 3.13 */
#define F_MANAGED_WEAKREF (1UL << 3) /* 3.12+ */
#define F_MANAGED_DICT (1UL << 4)  /* 3.11+ */
#define F_HEAPTYPE (1UL << 9)
#define F_HAVE_GC (1UL << 14)
#define F_LONG_SUB (1UL << 24)
#define F_LIST_SUB (1UL << 25)
#define F_TUPLE_SUB (1UL << 26)
#define F_BYTES_SUB (1UL << 27)
#define F_UNICODE_SUB (1UL << 28)
#define F_DICT_SUB (1UL << 29)
#define F_TYPE_SUB (1UL << 31)

#define MAX_SET_SLOTS (1u << 25)   /* 256 MiB of keys: about 23M objects per set */
#define MAX_GRAPH_NODES 20000
#define MAX_CHAIN_NODES 2000000
#define BUDGET_S 10.0              /* GIL time a backrefs/chain request may take */

/* ---------------------------------------------------------------- the C API (heap.c) */

struct capi {
    int ready;
    void *(*InterpreterState_Main)(void);
    char *runtime;
    int (*Dict_Next)(pyobj *, ssize_t *, pyobj **, pyobj **);
    pyobj *(*Dict_GetItemString)(pyobj *, const char *);
    pyobj *(*GetAttrString)(pyobj *, const char *);
    void (*DecRef)(pyobj *);
    void (*Err_Clear)(void);
    int (*IsSubtype)(char *, char *);
    pyobj *(*Import)(const char *);
    pyobj *(*CallMethod)(pyobj *, const char *, const char *, ...);
    int (*GC_Disable)(void);
    int (*GC_Enable)(void);
    int (*Frame_GetLineNumber)(pyobj *);
    pyobj *(*Func_Get[7])(pyobj *);
    pyobj *(*List_New)(ssize_t);
    void (*IncRef)(pyobj *);
    char *type_t, *module_t, *dict_t, *list_t, *tuple_t, *set_t, *frozenset_t, *str_t, *long_t,
        *bool_t, *float_t, *bytes_t, *bytearray_t, *function_t, *method_t, *cfunction_t, *cell_t,
        *frame_t, *code_t, *gen_t, *coro_t, *asyncgen_t;
    pyobj *none, *true_;
};
extern struct capi api;

int api_load(char *err); /* resolves api and abi; 0, or -1 and err */

static inline int is_sub(char *tp, char *base) { return tp == base || api.IsSubtype(tp, base); }

/* PyObject_IS_GC: has a PyGC_Head (static types do not, though their type has HAVE_GC). */
static inline int obj_is_gc(char *tp, pyobj *o)
{
    inquiry_fn f;
    if (!(TP_FLAGS(tp) & F_HAVE_GC)) return 0;
    f = TP_IS_GC(tp);
    return !f || f(o);
}

/* ---------------------------------------------------------------- pointer maps (heap.c) */

/* Open addressing, linear probing, key 0 = empty; vals optional. */
struct pmap {
    uintptr_t *keys;
    uint32_t *vals;
    size_t mask, n;
    unsigned bits;
};

int pm_init(struct pmap *m, size_t want, int with_vals);
void pm_free(struct pmap *m);
void pm_free_after(struct pmap *m); /* pm_free once the GIL is given back (gil_free_after) */
int pm_grow(struct pmap *m); /* doubles it; -1 past MAX_SET_SLOTS or out of memory */

static inline size_t pm_slot(const struct pmap *m, uintptr_t k)
{
    return (size_t)(((k >> 4) * 0x9E3779B97F4A7C15ull) >> (64 - m->bits));
}

/* Index of k's slot, or of the empty slot where it would go. */
static inline size_t pm_pos(const struct pmap *m, uintptr_t k)
{
    size_t i = pm_slot(m, k);
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & m->mask;
    return i;
}

static inline uint32_t *pm_get(const struct pmap *m, uintptr_t k)
{
    size_t i = pm_pos(m, k);
    if (!m->keys[i]) return NULL;
    return m->vals ? &m->vals[i] : (uint32_t *)&m->keys[i];
}

/* Insert k (with value v). Returns 1 added, 0 present (value untouched), -1 full. */
static inline int pm_put(struct pmap *m, uintptr_t k, uint32_t v)
{
    size_t i = pm_pos(m, k);
    if (m->keys[i]) return 0;
    if ((m->n + 1) * 10 > (m->mask + 1) * 7) {
        if (pm_grow(m) < 0) return -1;
        i = pm_pos(m, k);
    }
    m->keys[i] = k;
    if (m->vals) m->vals[i] = v;
    m->n++;
    return 1;
}

/* ---------------------------------------------------------------- heap walk (heap.c) */

/* The tracked objects: the collector's generation lists (with the collector
 * paused), or, when the gc state is not where the table says, gc.get_objects()
 * (that list itself is skipped). */
struct heap {
    uintptr_t heads[4];
    int nheads;
    char *gc;            /* validated struct _gc_runtime_state, or NULL */
    pyobj *list;         /* fallback: gc.get_objects() */
    pyobj **items;
    ssize_t len;
    int paused, was_enabled;
    /* heap_walk_sliced: the markers bounding what is left of list i, mark[2i] .. mark[2i+1] */
    pyobj *mark[8];
    int seg;             /* the list being walked */
    ssize_t pos;         /* fallback: the next item */
    int lost;            /* the GIL could not be taken back (finalizing): touch nothing */
    unsigned slices;
    double gil_max_s, cpu_max_s, gil_sum_s, t_start, t_end;
    double s_t0, s_c0;   /* the open slice: when it took the GIL, in wall and thread CPU time */
    int s_open;
    int gen0_count0, gen0_count1; /* generations[0].count at the start and end (gc path) */
    void (*off)(void *);
    void *off_arg;
};

/* Called per tracked object; nonzero stops the walk. */
typedef int (*heap_fn)(pyobj *o, void *arg);

/* Lists the tracked objects and pauses the collector; heap_close resumes it. 0, or -1 and err. */
int heap_open(struct heap *h, char *err);
void heap_close(struct heap *h);

#define SLICE_S 0.002 /* GIL time of one slice of heap_walk_sliced */

/* Every tracked object in slices of about SLICE_S, giving the GIL back between them (gil_yield): fn
 * never sees a pointer kept across a release. What it counts: every object tracked when the walk
 * began and still alive when the walk reaches it, once. Not: objects created during the walk; an
 * object freed (or untracked) before the walk reaches it; an object a collection moved meanwhile.
 * It may be called again on the same heap (backrefs: one walk per level), each walk anew; the
 * slice open when it returns stays open (heap_slice_end).
 * 0, what fn stopped with, or -1 and err (then h->lost says whether the GIL is still held). */
int heap_walk_sliced(struct heap *h, heap_fn fn, void *arg, char *err);
/* Run between slices, without the GIL (gil_yield's off): e.g. growing a table. */
void heap_set_off(struct heap *h, void (*off)(void *), void *arg);
double thread_cpu_s(void); /* this thread's CPU time, in seconds */

/* The slices of one request: heap_walk_sliced and every other sliced loop (long lists, releasing
 * references) share them. A slice opens when the GIL is taken and stays open across loops; it
 * ends in heap_yield, which gives the GIL back (running off), takes it again once no collection
 * runs and opens the next one, or in heap_slice_end when the request is done. Their count,
 * longest (wall and CPU) and total are h->slices, gil_max_s, cpu_max_s and gil_sum_s. */
void heap_slice_open(struct heap *h); /* opens one unless one is open */
void heap_slice_end(struct heap *h);
int heap_yield(struct heap *h, char *err); /* 0, or -1 and err (h->lost: the GIL is not held) */
static inline int heap_slice_due(const struct heap *h) { return h->s_open && mp_now() - h->s_t0 > SLICE_S; }
double heap_gil_s(const struct heap *h); /* the GIL time of the slices so far, the open one too */
/* Their count and longest (ms, wall and CPU) so far, the open one too. */
void heap_slice_stats(const struct heap *h, uint32_t *slices, double *max_ms, double *cpu_max_ms);

/* Long containers, visited in chunks of their own between slices: a list of millions of items is
 * traversed by one tp_traverse call, far longer than a slice. Each is held by a reference until
 * heap_big_release; its length and item array are read afresh for every chunk (the target may
 * change it between them: an item moved meanwhile may be missed, none is visited twice). */
#define BIG_ITEMS 4096

struct heap_big {
    pyobj **v;
    size_t n, cap;
};

/* A list (or dict) of more than BIG_ITEMS items, to be put aside rather than traversed. */
static inline int heap_big_list(pyobj *o) { return OB_TYPE(o) == api.list_t && OB_SIZE(o) > BIG_ITEMS; }
static inline int heap_big_dict(pyobj *o) { return OB_TYPE(o) == api.dict_t && PYABI_AT(o, 0x10, ssize_t) > BIG_ITEMS; }
int heap_big_push(struct heap_big *q, pyobj *o); /* takes a reference; 0, or -1 out of memory */
/* Each one's items (a dict's keys and values, by PyDict_Next) to fn, in chunks of 256, giving the
 * GIL back whenever a slice is due: start(o, arg) before each chunk, after(arg) after it (nonzero
 * stops). fn returning nonzero ends that container. 0, 1 when after stopped, -1 and err. */
int heap_big_visit(struct heap *h, struct heap_big *q, void (*start)(pyobj *, void *), visit_fn fn,
                   int (*after)(void *), void *arg, char *err);
void heap_big_release(struct heap_big *q, const struct heap *h); /* drops them (not when h->lost) */

/* ---------------------------------------------------------------- types and sizes (heap.c) */

enum size_kind { SK_FIXED, SK_VAR, SK_LIST, SK_DICT, SK_SET, SK_BYTEARRAY, SK_STR, SK_LONG };

struct tinfo {
    char *tp;
    uint64_t count, bytes;
    uint32_t kind;
    uint32_t pre;   /* PyGC_Head and pre-header bytes before the object */
    uint64_t fixed; /* size of a fixed-size object, or the part before the variable part */
    ssize_t itemsize;
};

#define TT_CACHE 64 /* direct-mapped: heaps interleave a few types (obj, dict, list) */

struct ttab {
    struct tinfo *v;
    size_t n, cap;
    struct pmap map;
    char *cache_tp[TT_CACHE];
    uint32_t cache_ix[TT_CACHE];
    int hold; /* takes a reference to each type (a sliced walk: a type may die between slices) */
};

void tinfo_init(struct tinfo *t, char *tp);
int tt_init(struct ttab *tt);
void tt_free(struct ttab *tt);
void tt_release(struct ttab *tt); /* drops the references tt->hold took; with the GIL */
uint64_t dict_extra(pyobj *o);
uint64_t str_size(pyobj *o);

/* The entry of type tp, created on first sight. NULL when out of memory. */
static inline struct tinfo *tt_get(struct ttab *tt, char *tp)
{
    uint32_t *ix;
    unsigned slot = (unsigned)((uintptr_t)tp >> 4) % TT_CACHE;
    int rc;
    if (tp == tt->cache_tp[slot]) return &tt->v[tt->cache_ix[slot]];
    ix = pm_get(&tt->map, (uintptr_t)tp);
    if (!ix) {
        if (tt->n == tt->cap) {
            struct tinfo *nv = realloc(tt->v, tt->cap * 2 * sizeof *nv);
            if (!nv) return NULL;
            tt->v = nv;
            tt->cap *= 2;
        }
        rc = pm_put(&tt->map, (uintptr_t)tp, (uint32_t)tt->n);
        if (rc < 0) return NULL;
        tinfo_init(&tt->v[tt->n], tp);
        if (tt->hold) api.IncRef((pyobj *)tp);
        ix = pm_get(&tt->map, (uintptr_t)tp);
        tt->n++;
    }
    tt->cache_tp[slot] = tp;
    tt->cache_ix[slot] = *ix;
    return &tt->v[*ix];
}

/* Shallow size, like sys.getsizeof without calling __sizeof__: the object's
 * block with its PyGC_Head/pre-header, plus the buffers it owns that are cheap
 * to see (list items, dict keys/values, set table, bytearray buffer). Not
 * counted: str UTF-8 caches, 3.11/3.12 instance value arrays, anything a
 * C extension type allocates on its own. */
static inline uint64_t obj_size(pyobj *o, const struct tinfo *t)
{
    ssize_t n;
    switch (t->kind) {
    case SK_FIXED: return t->fixed;
    case SK_VAR:
        n = OB_SIZE(o);
        if (n < 0) n = -n;
        return t->fixed + (n < ((ssize_t)1 << 36) ? (uint64_t)n * (uint64_t)t->itemsize : 0);
    case SK_LIST: return t->fixed + (uint64_t)PYABI_AT(o, abi->list.items + 8, ssize_t) * 8; /* allocated */
    case SK_DICT: return t->fixed + dict_extra(o);
    case SK_SET:
        return t->fixed + (PYABI_AT(o, 0x28, char *) != (char *)o + 0x40 ? (uint64_t)(PYABI_AT(o, 0x20, ssize_t) + 1) * 16 : 0);
    case SK_BYTEARRAY: return t->fixed + (uint64_t)PYABI_AT(o, 0x18, ssize_t);
    case SK_STR: return t->fixed - (uint64_t)TP_BASICSIZE(t->tp) + str_size(o);
    case SK_LONG:
        if (abi->caps & PYABI_LONG_TAG) {
            uint64_t nd = PYABI_AT(o, abi->longobj.tag, uintptr_t) >> 3;
            return t->fixed + (nd ? nd : 1) * 4;
        }
        n = OB_SIZE(o);
        return t->fixed + (uint64_t)(n < 0 ? -n : n) * 4;
    }
    return t->fixed;
}

/* ---------------------------------------------------------------- labels (labels.c) */

/* A bounded label builder that counts code points (objgraph cuts reprs at 40). */
struct sb {
    char buf[256];
    size_t n;
    size_t chars;
};

void sb_raw(struct sb *b, const char *s, size_t n);
void sb_puts(struct sb *b, const char *s);
void sb_str(struct sb *b, pyobj *s); /* a str's text, cut to the label length */

/* Names of a type: __name__ (short: tp_name after its last dot, for static
 * types and PyType_FromSpec heap types alike) and __module__. */
void type_short(char *tp, struct sb *b);
void type_module(char *tp, struct sb *b);
/* objgraph's _short_repr of o, without calling any Python-level repr. */
void obj_label(pyobj *o, struct sb *b);
/* How src refers to dst: ".attr", "['key']", "[3]", ".__dict__", "(key)"; "" when unknown. */
void edge_label(pyobj *src, pyobj *dst, struct sb *b);

#endif
