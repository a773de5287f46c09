/* census.c -- what objects exist: the type census (census_handle), computed in C from the
 * collector's lists, in slices under the GIL (heap_walk_sliced: the target runs between them).
 * The engine is in four files: this one, backrefs.c (who holds them:
 * back-reference graphs and reference chains), labels.c (their text) and heap.c (the walk,
 * pointer maps, types and sizes), sharing heap.h.
 *
 * No Python code runs here: objects are found by walking the GC generation lists,
 * their referents with tp_traverse (the same visits the collector makes), and labels
 * are read from builtin objects' memory (never a user __repr__/__eq__/__hash__). The
 * only C API calls are lookups on builtin types (PyDict_Next, getset/member getters of
 * function/frame/code objects) made after the heap walks, with the collector paused, and the
 * sliced walk's own: its marker lists (PyList_New), references to the types it counts and to
 * the long lists it visits in chunks, and (backrefs.c) to the objects of a graph or chain until
 * its reply is built. Dropping the last of those frees an object the target let go of meanwhile:
 * its deallocator (and a finalizer) runs then, as the target's own release would have run it.
 * Memory is malloc'd hash tables and address bitmaps, capped, freed by the handler (the large ones
 * once it has given the GIL back). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/gil.h"
#include "agent/heap.h"

/* ---------------------------------------------------------------- census */

struct census {
    struct ttab tt;
    struct aset seen;    /* --all: untracked objects already counted */
    pyobj **stack;       /* --all: untracked containers still to traverse */
    size_t sp, scap;
    struct heap_big big; /* --all: long lists and dicts, traversed after the walk in slices */
    int all, failed;
    int lost; /* the walk could not take the GIL back: touch no Python object */
    unsigned slices;
    double gil_max_ms, cpu_max_ms, walk_ms, walk_gil_ms;
    int64_t tracked_change;
};

/* Put a long list or dict aside (with a reference) for heap_big_visit. 0, or 1 when out of memory. */
static int census_defer(struct census *c, pyobj *o)
{
    if (heap_big_push(&c->big, o) < 0) return c->failed = 1;
    return 0;
}

static int census_visit(pyobj *r, void *arg)
{
    struct census *c = arg;
    char *tp;
    struct tinfo *t;
    int gc = 0, rc;
    if (!r) return 0;
    tp = OB_TYPE(r);
    if (TP_FLAGS(tp) & F_HAVE_GC) {
        gc = obj_is_gc(tp, r);
        if (gc && GC_NEXT(r)) return 0; /* tracked: counted by the walk */
    }
    rc = as_add(&c->seen, (uintptr_t)r);
    if (rc == 0) return 0;
    if (rc < 0 || !(t = tt_get(&c->tt, tp))) {
        c->failed = 1;
        return 1;
    }
    t->count++;
    /* SK_FIXED sizes are count * fixed at the end; static types (no PyGC_Head) are SK_VAR */
    if (t->kind != SK_FIXED)
        t->bytes += obj_size(r, t) - (!gc && t->pre >= 16 && (TP_FLAGS(tp) & F_HAVE_GC) ? 16 : 0);
    if (gc && TP_TRAVERSE(tp)) {
        if (heap_big_dict(r)) /* a long untracked dict */
            return census_defer(c, r);
        if (c->sp == c->scap) {
            size_t ncap = c->scap ? c->scap * 2 : 1024;
            pyobj **ns = realloc(c->stack, ncap * sizeof *ns);
            if (!ns) {
                c->failed = 1;
                return 1;
            }
            c->stack = ns;
            c->scap = ncap;
        }
        c->stack[c->sp++] = r;
    }
    return 0;
}

static void census_traverse(struct census *c, pyobj *o)
{
    traverse_fn tr = TP_TRAVERSE(OB_TYPE(o));
    if (tr) tr(o, census_visit, c);
    while (c->sp && !c->failed) {
        pyobj *u = c->stack[--c->sp];
        TP_TRAVERSE(OB_TYPE(u))(u, census_visit, c);
    }
}

static int census_one(pyobj *o, void *arg)
{
    struct census *c = arg;
    char *tp = OB_TYPE(o);
    struct tinfo *t = tt_get(&c->tt, tp);
    if (!t) return c->failed = 1;
    t->count++;
    if (t->kind != SK_FIXED) t->bytes += obj_size(o, t);
    if (!c->all) return 0;
    if (heap_big_list(o) || heap_big_dict(o)) return census_defer(c, o);
    census_traverse(c, o);
    return c->failed;
}

/* After each chunk of a long list: the untracked containers its items led to. */
static int census_drain(void *arg)
{
    struct census *c = arg;
    while (c->sp && !c->failed) {
        pyobj *u = c->stack[--c->sp];
        TP_TRAVERSE(OB_TYPE(u))(u, census_visit, c);
    }
    return c->failed;
}

static int census_walk(struct census *c, char *err)
{
    struct heap h;
    int rc;
    if (heap_open(&h, err) < 0) return -1;
    rc = heap_walk_sliced(&h, census_one, c, err);
    c->tracked_change = (int64_t)h.gen0_count1 - h.gen0_count0;
    /* the collector stays paused until the lists put aside are done */
    if (rc >= 0 && c->big.n && heap_big_visit(&h, &c->big, NULL, census_visit, census_drain, c, err) < 0) rc = -1;
    heap_slice_end(&h);
    c->lost = h.lost;
    c->slices = h.slices;
    c->gil_max_ms = h.gil_max_s * 1e3;
    c->cpu_max_ms = h.cpu_max_s * 1e3;
    c->walk_gil_ms = h.gil_sum_s * 1e3;
    c->walk_ms = (mp_now() - h.t_start) * 1e3;
    heap_big_release(&c->big, &h);
    heap_close(&h);
    if (rc < 0) return -1;
    if (c->failed) {
        mp_err(err, "object census stopped: out of memory (or objects over more than %u GiB of addresses)",
               (unsigned)(((uint64_t)AS_MAX_REGIONS << AS_REGION_SHIFT) >> 30));
        return -1;
    }
    return 0;
}

static int tc_cmp(const void *a, const void *b)
{
    const Memprof__TypeCount *x = *(Memprof__TypeCount *const *)a, *y = *(Memprof__TypeCount *const *)b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->name, y->name);
}

static int census_reply(struct census *c, Memprof__AgentReply *reply, double t0, char *err)
{
    Memprof__CensusReply *cr = calloc(1, sizeof *cr);
    size_t k = 0;
    if (!cr) goto oom;
    memprof__census_reply__init(cr);
    reply->body_case = MEMPROF__AGENT_REPLY__BODY_CENSUS;
    reply->census = cr;
    cr->types = calloc(c->tt.n ? c->tt.n : 1, sizeof *cr->types);
    if (!cr->types) goto oom;
    for (size_t i = 0; i < c->tt.n; i++) {
        struct tinfo *t = &c->tt.v[i];
        Memprof__TypeCount *tc;
        struct sb name = {.n = 0}, mod = {.n = 0};
        if (!t->count) continue;
        if (t->kind == SK_FIXED) t->bytes = t->count * t->fixed;
        type_short(t->tp, &name);
        type_module(t->tp, &mod);
        tc = calloc(1, sizeof *tc);
        if (!tc) goto oom;
        memprof__type_count__init(tc);
        cr->types[k++] = tc;
        cr->n_types = k;
        tc->name = strdup(name.buf);
        tc->module = strdup(mod.buf);
        if (!tc->name || !tc->module) goto oom;
        tc->count = t->count;
        tc->bytes = t->bytes;
        cr->objects += t->count;
        cr->bytes += t->bytes;
    }
    qsort(cr->types, cr->n_types, sizeof *cr->types, tc_cmp);
    cr->timestamp = mp_wallclock();
    cr->gil_ms = c->walk_gil_ms + (mp_now() - t0 - c->walk_ms * 1e-3) * 1e3; /* held: slices, then this */
    cr->slices = c->slices;
    cr->gil_max_ms = c->gil_max_ms;
    cr->gil_max_cpu_ms = c->cpu_max_ms;
    cr->walk_ms = c->walk_ms;
    cr->tracked_change = c->tracked_change;
    return 0;
oom:
    mp_err(err, "object census: out of memory");
    return -1;
}

int census_handle(const Memprof__CensusRequest *req, Memprof__AgentReply *reply, char *err)
{
    struct census c;
    double t0 = mp_now();
    int rc = -1;
    if (api_load(err) < 0) return -1;
    memset(&c, 0, sizeof c);
    if (tt_init(&c.tt) < 0) {
        mp_err(err, "object census: out of memory");
        goto out;
    }
    c.all = req->all;
    c.tt.hold = 1;
    if (census_walk(&c, err) < 0) goto out;
    rc = census_reply(&c, reply, t0, err);
out:
    if (!c.lost) tt_release(&c.tt);
    tt_free(&c.tt);
    as_free(&c.seen);
    gil_free_after(c.stack);
    return rc;
}

void census_free(Memprof__AgentReply *reply)
{
    Memprof__CensusReply *cr;
    if (reply->body_case != MEMPROF__AGENT_REPLY__BODY_CENSUS || !(cr = reply->census)) return;
    for (size_t i = 0; i < cr->n_types; i++) {
        if (!cr->types[i]) continue;
        if (cr->types[i]->name != protobuf_c_empty_string) free(cr->types[i]->name);
        if (cr->types[i]->module != protobuf_c_empty_string) free(cr->types[i]->module);
        free(cr->types[i]);
    }
    free(cr->types);
    free(cr);
    reply->census = NULL;
    reply->body_case = MEMPROF__AGENT_REPLY__BODY__NOT_SET;
}
