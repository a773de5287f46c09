/* heap.c -- the census engine's ground floor: the C API it resolves, pointer maps, the walk
 * over the collector's lists (or gc.get_objects()), and per-type shallow sizes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/gil.h"
#include "agent/heap.h"

const struct pyabi *abi;
struct capi api;

/* ---------------------------------------------------------------- the C API */

int api_load(char *err)
{
#define OPT PYAPI_OPTIONAL
    const struct pyapi_symbol table[] = {
        {(void **)&api.Dict_Next, "PyDict_Next", 0},
        {(void **)&api.Dict_GetItemString, "PyDict_GetItemString", 0},
        {(void **)&api.GetAttrString, "PyObject_GetAttrString", 0},
        {(void **)&api.DecRef, "Py_DecRef", 0},
        {(void **)&api.Err_Clear, "PyErr_Clear", 0},
        {(void **)&api.IsSubtype, "PyType_IsSubtype", 0},
        {(void **)&api.Import, "PyImport_ImportModule", 0},
        {(void **)&api.CallMethod, "PyObject_CallMethod", 0},
        {(void **)&api.Frame_GetLineNumber, "PyFrame_GetLineNumber", 0},
        {(void **)&api.type_t, "PyType_Type", 0}, {(void **)&api.module_t, "PyModule_Type", 0},
        {(void **)&api.dict_t, "PyDict_Type", 0}, {(void **)&api.list_t, "PyList_Type", 0},
        {(void **)&api.tuple_t, "PyTuple_Type", 0}, {(void **)&api.set_t, "PySet_Type", 0},
        {(void **)&api.frozenset_t, "PyFrozenSet_Type", 0}, {(void **)&api.str_t, "PyUnicode_Type", 0},
        {(void **)&api.long_t, "PyLong_Type", 0}, {(void **)&api.bool_t, "PyBool_Type", 0},
        {(void **)&api.float_t, "PyFloat_Type", 0}, {(void **)&api.bytes_t, "PyBytes_Type", 0},
        {(void **)&api.bytearray_t, "PyByteArray_Type", 0},
        {(void **)&api.function_t, "PyFunction_Type", 0}, {(void **)&api.method_t, "PyMethod_Type", 0},
        {(void **)&api.cfunction_t, "PyCFunction_Type", 0}, {(void **)&api.cell_t, "PyCell_Type", 0},
        {(void **)&api.frame_t, "PyFrame_Type", 0}, {(void **)&api.code_t, "PyCode_Type", 0},
        {(void **)&api.gen_t, "PyGen_Type", 0}, {(void **)&api.coro_t, "PyCoro_Type", 0},
        {(void **)&api.asyncgen_t, "PyAsyncGen_Type", 0},
        {(void **)&api.none, "_Py_NoneStruct", 0}, {(void **)&api.true_, "_Py_TrueStruct", 0},
        {(void **)&api.List_New, "PyList_New", 0}, {(void **)&api.IncRef, "Py_IncRef", 0},
        /* the census does without these where a version lacks them */
        {(void **)&api.InterpreterState_Main, "PyInterpreterState_Main", OPT},
        {(void **)&api.runtime, "_PyRuntime", OPT},
        {(void **)&api.GC_Disable, "PyGC_Disable", OPT}, {(void **)&api.GC_Enable, "PyGC_Enable", OPT},
        {(void **)&api.Func_Get[0], "PyFunction_GetCode", OPT},
        {(void **)&api.Func_Get[1], "PyFunction_GetGlobals", OPT},
        {(void **)&api.Func_Get[2], "PyFunction_GetDefaults", OPT},
        {(void **)&api.Func_Get[3], "PyFunction_GetKwDefaults", OPT},
        {(void **)&api.Func_Get[4], "PyFunction_GetClosure", OPT},
        {(void **)&api.Func_Get[5], "PyFunction_GetAnnotations", OPT},
        {(void **)&api.Func_Get[6], "PyFunction_GetModule", OPT},
    };
#undef OPT
    const struct pyapi_symbol *missing;
    abi = pyapi_abi();
    if (!abi) {
        mp_err(err, "object census: %s", pyapi_abi_error());
        return -1;
    }
    if (api.ready) return 0;
    if ((missing = pyapi_resolve(table, sizeof table / sizeof table[0]))) {
        mp_err(err, "object census: the interpreter does not export %s", missing->names);
        return -1;
    }
    api.ready = 1;
    return 0;
}

/* ---------------------------------------------------------------- pointer maps */

int pm_init(struct pmap *m, size_t want, int with_vals)
{
    unsigned bits = 10;
    while (((size_t)1 << bits) < want * 2 && bits < 25) bits++;
    memset(m, 0, sizeof *m);
    m->bits = bits;
    m->mask = ((size_t)1 << bits) - 1;
    m->keys = calloc(m->mask + 1, sizeof *m->keys);
    if (with_vals) m->vals = malloc((m->mask + 1) * sizeof *m->vals);
    if (!m->keys || (with_vals && !m->vals)) {
        free(m->keys);
        free(m->vals);
        m->keys = NULL;
        m->vals = NULL;
        return -1;
    }
    return 0;
}

void pm_free(struct pmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

void pm_free_after(struct pmap *m)
{
    gil_free_after(m->keys);
    gil_free_after(m->vals);
    memset(m, 0, sizeof *m);
}

int pm_grow(struct pmap *m)
{
    struct pmap g;
    if (m->mask + 1 >= MAX_SET_SLOTS) return -1;
    g.bits = m->bits + 1;
    g.mask = ((size_t)1 << g.bits) - 1;
    g.n = m->n;
    g.keys = calloc(g.mask + 1, sizeof *g.keys);
    g.vals = m->vals ? malloc((g.mask + 1) * sizeof *g.vals) : NULL;
    if (!g.keys || (m->vals && !g.vals)) {
        free(g.keys);
        free(g.vals);
        return -1;
    }
    for (size_t i = 0; i <= m->mask; i++) {
        size_t j;
        if (!m->keys[i]) continue;
        j = pm_pos(&g, m->keys[i]);
        g.keys[j] = m->keys[i];
        if (g.vals) g.vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    *m = g;
    return 0;
}

/* ---------------------------------------------------------------- heap walk */

static int gc_state_valid(char *gc)
{
    uintptr_t heads[4];
    /* the generation0 pointer: 3.14.0's incremental collector has none, and
     * then this fails and the census lists objects with gc.get_objects() */
    if (PYABI_AT(gc, abi->gc.generation0, uintptr_t) != (uintptr_t)(gc + abi->gc.generations)) return 0;
    for (int i = 0; i < 3; i++) heads[i] = (uintptr_t)(gc + abi->gc.generations + 24 * i);
    heads[3] = (uintptr_t)(gc + abi->gc.permanent);
    for (int i = 0; i < 4; i++) {
        uintptr_t next = PYABI_AT(heads[i], 0, uintptr_t) & ~(uintptr_t)3;
        uintptr_t prev = PYABI_AT(heads[i], 8, uintptr_t) & ~(uintptr_t)3;
        if (!next || !prev) return 0;
        if ((PYABI_AT(next, 8, uintptr_t) & ~(uintptr_t)3) != heads[i]) return 0;
        if ((PYABI_AT(prev, 0, uintptr_t) & ~(uintptr_t)3) != heads[i]) return 0;
    }
    return 1;
}

/* gc.isenabled()/disable()/enable() through the module, for 3.8/3.9 fallback. */
static int gc_module_call(const char *name)
{
    pyobj *mod = api.Import("gc"), *r;
    int v = -1;
    if (!mod) {
        api.Err_Clear();
        return -1;
    }
    r = api.CallMethod(mod, name, NULL);
    if (r) {
        v = r == api.true_;
        api.DecRef(r);
    } else {
        api.Err_Clear();
    }
    api.DecRef(mod);
    return v;
}

/* No collection may run while we hold borrowed pointers: a collection runs
 * finalizers (user code) and frees objects. */
static void heap_pause_gc(struct heap *h)
{
    if (h->gc) {
        h->was_enabled = PYABI_AT(h->gc, abi->gc.enabled, int);
        PYABI_AT(h->gc, abi->gc.enabled, int) = 0;
    } else if (api.GC_Disable) {
        h->was_enabled = api.GC_Disable();
    } else {
        h->was_enabled = gc_module_call("isenabled") == 1;
        gc_module_call("disable");
    }
    h->paused = 1;
}

static void heap_drop_marks(struct heap *h);

void heap_close(struct heap *h)
{
    if (h->lost) { /* without the GIL, the process finalizing: leave it all as it is */
        memset(h, 0, sizeof *h);
        return;
    }
    heap_drop_marks(h);
    if (h->paused && h->was_enabled) {
        if (h->gc) PYABI_AT(h->gc, abi->gc.enabled, int) = 1;
        else if (api.GC_Enable) api.GC_Enable();
        else gc_module_call("enable");
    }
    if (h->list) api.DecRef(h->list);
    memset(h, 0, sizeof *h);
}

int heap_open(struct heap *h, char *err)
{
    char *base = NULL;
    memset(h, 0, sizeof *h);
    if (abi->caps & PYABI_GC_IN_RUNTIME) base = api.runtime;
    else if (api.InterpreterState_Main) base = api.InterpreterState_Main();
#ifdef CENSUS_TEST_FALLBACK /* tests/objects: exercise the gc.get_objects() path */
    base = NULL;
#endif
    if (base && gc_state_valid(base + abi->gc.state)) {
        h->gc = base + abi->gc.state;
        if (PYABI_AT(h->gc, abi->gc.collecting, int)) {
            mp_err(err, "the target is in the middle of a garbage collection; try again");
            h->gc = NULL;
            return -1;
        }
        for (int i = 0; i < 3; i++) h->heads[i] = (uintptr_t)(h->gc + abi->gc.generations + 24 * i);
        h->heads[3] = (uintptr_t)(h->gc + abi->gc.permanent);
        h->nheads = 4;
        heap_pause_gc(h);
        return 0;
    }
    heap_pause_gc(h);
    {
        pyobj *mod = api.Import("gc");
        if (mod) {
            h->list = api.CallMethod(mod, "get_objects", NULL);
            api.DecRef(mod);
        }
    }
    if (!h->list || !(TP_FLAGS(OB_TYPE(h->list)) & F_LIST_SUB)) {
        api.Err_Clear();
        if (h->list) api.DecRef(h->list);
        h->list = NULL;
        heap_close(h);
        mp_err(err, "cannot list the objects of the target (gc.get_objects failed)");
        return -1;
    }
    h->len = OB_SIZE(h->list);
    h->items = PYABI_AT(h->list, abi->list.items, pyobj **);
    return 0;
}

/* ---------------------------------------------------------------- sliced walk */

/* Between two slices the target runs: objects are created (appended to the young list's tail),
 * freed or untracked (unlinked), and an explicit gc.collect() or gc.freeze() may merge lists
 * (keeping their order) or move objects to a list's tail. So no pointer to a target object is
 * kept across a release. What is kept are markers: empty lists this walk made and holds a
 * reference to (never freed, never unreachable, so never moved by a collection), two per
 * generation list. What is left to walk of list i is what lies between mark[2i] and mark[2i+1];
 * a slice walks it from both ends (two chains of cache misses overlap) and then moves the
 * markers in to the last objects it saw, which it still holds the GIL for. Objects created
 * during the walk land after the end marker of the young list: not counted. Objects moved by a
 * collection go to a list's tail, past every end marker: not counted, never counted twice. */

#define GCH(o) ((uintptr_t *)((char *)(o) - PYABI_GC_HEAD)) /* [0] _gc_next, [1] _gc_prev */
#define GCP(v) ((uintptr_t *)((v) & ~(uintptr_t)3))          /* without the flag bits */

/* Unlink node n and put it after node at (gc_list_remove, then an insert), keeping the flag
 * bits CPython keeps in _gc_prev. With the GIL held, outside a collection. */
static void gch_move_after(uintptr_t *n, uintptr_t *at)
{
    uintptr_t *p, *x, *nx;
    if (at == n || GCP(n[1]) == at) return;
    p = GCP(n[1]);
    x = GCP(n[0]);
    p[0] = (uintptr_t)x;
    x[1] = (x[1] & 3) | (uintptr_t)p;
    nx = GCP(at[0]);
    n[0] = (uintptr_t)nx;
    n[1] = (n[1] & 3) | (uintptr_t)at;
    at[0] = (uintptr_t)n;
    nx[1] = (nx[1] & 3) | (uintptr_t)n;
}

static int heap_marks(struct heap *h, char *err)
{
    for (int i = 0; i < 2 * h->nheads; i++) {
        if (!(h->mark[i] = api.List_New(0))) {
            api.Err_Clear();
            mp_err(err, "object census: out of memory");
            return -1;
        }
        if (!GC_NEXT(h->mark[i])) {
            mp_err(err, "object census: a new list is not in the collector's lists");
            return -1;
        }
    }
    for (int i = 0; i < h->nheads; i++) {
        uintptr_t *head = (uintptr_t *)h->heads[i];
        gch_move_after(GCH(h->mark[2 * i]), head);
        gch_move_after(GCH(h->mark[2 * i + 1]), GCP(head[1])); /* the tail */
    }
    return 0;
}

/* A list head is not an object: reading one as an object would crash. They all lie in the
 * collector's state, from generations[0] to the permanent generation's; one compare. (Never
 * met between the markers; checked all the same, as the walk runs on the target's memory.) */
static int is_head(const struct heap *h, uintptr_t g)
{
    uintptr_t lo = (uintptr_t)(h->gc + abi->gc.generations), hi = (uintptr_t)(h->gc + abi->gc.permanent) + 16;
    if (abi->gc.permanent < abi->gc.generations) {
        lo = (uintptr_t)(h->gc + abi->gc.permanent);
        hi = (uintptr_t)(h->gc + abi->gc.generations) + 3 * 24;
    }
    return g - lo < hi - lo;
}

/* One slice of list i until deadline. 1 when the list is done (or fn stopped: *rc), 0 when the
 * time ran out, with the markers moved in. */
static int slice_list(struct heap *h, int i, heap_fn fn, void *arg, double deadline, int *rc)
{
    uintptr_t *B = GCH(h->mark[2 * i]), *E = GCH(h->mark[2 * i + 1]);
    uintptr_t f = (uintptr_t)GCP(B[0]), b = (uintptr_t)GCP(E[1]), lastf = 0, lastb = 0;
    unsigned n = 0;
    while (f != (uintptr_t)E) {
        uintptr_t nf, nb;
        if (!f || !b || is_head(h, f) || is_head(h, b)) return 1; /* not expected: a list changed shape */
        if ((*rc = fn((pyobj *)(f + PYABI_GC_HEAD), arg))) return 1;
        lastf = f;
        if (f == b) return 1;
        if ((*rc = fn((pyobj *)(b + PYABI_GC_HEAD), arg))) return 1;
        lastb = b;
        nf = (uintptr_t)GCP(((uintptr_t *)f)[0]);
        nb = (uintptr_t)GCP(((uintptr_t *)b)[1]);
        if (nf == b) return 1;
        f = nf;
        b = nb;
        if (!(++n & 63) && mp_now() > deadline) {
            gch_move_after(B, (uintptr_t *)lastf);
            gch_move_after(E, GCP(((uintptr_t *)lastb)[1]));
            return 0;
        }
    }
    return 1;
}

/* One slice of the gc.get_objects() list (its references keep every item alive). */
static int slice_items(struct heap *h, heap_fn fn, void *arg, double deadline, int *rc)
{
    while (h->pos < h->len) {
        pyobj *o = h->items[h->pos++];
        if (o != h->list && (*rc = fn(o, arg))) return 1;
        if (!(h->pos & 63) && mp_now() > deadline) return h->pos >= h->len;
    }
    return 1;
}

#define GEN0_COUNT(h) PYABI_AT((h)->gc, abi->gc.generations + 20, int) /* generations[0].count */
#define COLLECTING_WAIT_S 10.0

void heap_set_off(struct heap *h, void (*off)(void *), void *arg)
{
    h->off = off;
    h->off_arg = arg;
}

/* This thread's CPU time: a slice's length without the time the machine gave to others. */
double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void heap_slice_open(struct heap *h)
{
    if (h->s_open) return;
    h->s_t0 = mp_now();
    h->s_c0 = thread_cpu_s();
    h->s_open = 1;
}

void heap_slice_end(struct heap *h)
{
    double t, c;
    if (!h->s_open) return;
    t = mp_now() - h->s_t0;
    c = thread_cpu_s() - h->s_c0;
    h->slices++;
    if (t > h->gil_max_s) h->gil_max_s = t;
    if (c > h->cpu_max_s) h->cpu_max_s = c;
    h->gil_sum_s += t;
    h->s_open = 0;
}

double heap_gil_s(const struct heap *h)
{
    return h->gil_sum_s + (h->s_open ? mp_now() - h->s_t0 : 0);
}

void heap_slice_stats(const struct heap *h, uint32_t *slices, double *max_ms, double *cpu_max_ms)
{
    double t = h->s_open ? mp_now() - h->s_t0 : 0, c = h->s_open ? thread_cpu_s() - h->s_c0 : 0;
    *slices = h->slices + (unsigned)h->s_open;
    *max_ms = (t > h->gil_max_s ? t : h->gil_max_s) * 1e3;
    *cpu_max_ms = (c > h->cpu_max_s ? c : h->cpu_max_s) * 1e3;
}

int heap_yield(struct heap *h, char *err)
{
    double t = mp_now();
    heap_slice_end(h);
    /* give the GIL back; a collection the target started meanwhile must end before we go on */
    do {
        if (gil_yield(h->off, h->off_arg) < 0) {
            h->lost = 1;
            mp_err(err, "the Python interpreter is shutting down");
            return -1;
        }
        if (mp_now() - t > COLLECTING_WAIT_S) {
            mp_err(err, "object census: the target stayed in a garbage collection for %.0f s", COLLECTING_WAIT_S);
            heap_slice_open(h);
            return -1;
        }
    } while (h->gc && PYABI_AT(h->gc, abi->gc.collecting, int));
    heap_slice_open(h);
    return 0;
}

/* The markers of a finished walk (each an empty list: untracks and frees itself). */
static void heap_drop_marks(struct heap *h)
{
    if (h->lost) return;
    for (int i = 0; i < 8; i++) {
        if (h->mark[i]) api.DecRef(h->mark[i]);
        h->mark[i] = NULL;
    }
}

int heap_walk_sliced(struct heap *h, heap_fn fn, void *arg, char *err)
{
    int rc = 0;
    heap_slice_open(h);
    h->t_start = mp_now();
    h->seg = 0;
    h->pos = 0;
    if (h->gc) {
        heap_drop_marks(h);
        if (heap_marks(h, err) < 0) return -1;
        h->gen0_count0 = GEN0_COUNT(h);
    }
    for (;;) {
        double deadline = h->s_t0 + SLICE_S;
        int done;
        if (h->gc) {
            while (h->seg < h->nheads && slice_list(h, h->seg, fn, arg, deadline, &rc) && !rc) h->seg++;
            done = rc || h->seg >= h->nheads;
        } else {
            done = slice_items(h, fn, arg, deadline, &rc) || rc;
        }
        if (done) break;
        if (heap_yield(h, err) < 0) return -1;
    }
    h->t_end = mp_now();
    if (h->gc) h->gen0_count1 = GEN0_COUNT(h);
    heap_drop_marks(h);
    return rc;
}

/* ---------------------------------------------------------------- long containers */

int heap_big_push(struct heap_big *q, pyobj *o)
{
    if (q->n == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 64;
        pyobj **nv = realloc(q->v, ncap * sizeof *nv);
        if (!nv) return -1;
        q->v = nv;
        q->cap = ncap;
    }
    api.IncRef(o);
    q->v[q->n++] = o;
    return 0;
}

/* Up to 256 items of a list, or entries of a dict (PyDict_Next: its position stays valid, and
 * bounds-checked, across changes), from *pos on. 1 when there are no more or fn stopped. */
static int big_chunk(pyobj *o, ssize_t *pos, visit_fn fn, void *arg)
{
    if (OB_TYPE(o) == api.dict_t) {
        pyobj *k, *v;
        for (int j = 0; j < 256; j++) {
            if (!api.Dict_Next(o, pos, &k, &v)) return 1;
            if (fn(k, arg) || fn(v, arg)) return 1;
        }
        return 0;
    } else {
        ssize_t n = OB_SIZE(o), e = *pos + 256 < n ? *pos + 256 : n;
        pyobj **items = PYABI_AT(o, abi->list.items, pyobj **);
        for (; *pos < e; ++*pos)
            if (fn(items[*pos], arg)) return 1;
        return *pos >= OB_SIZE(o);
    }
}

int heap_big_visit(struct heap *h, struct heap_big *q, void (*start)(pyobj *, void *), visit_fn fn,
                   int (*after)(void *), void *arg, char *err)
{
    heap_slice_open(h);
    for (size_t k = 0; k < q->n; k++) {
        ssize_t pos = 0;
        int done = 0;
        while (!done) {
            if (start) start(q->v[k], arg);
            done = big_chunk(q->v[k], &pos, fn, arg);
            if (after && after(arg)) return 1;
            if (heap_slice_due(h) && heap_yield(h, err) < 0) return -1;
        }
    }
    return 0;
}

void heap_big_release(struct heap_big *q, const struct heap *h)
{
    if (!h->lost)
        for (size_t i = 0; i < q->n; i++) api.DecRef(q->v[i]);
    free(q->v);
    memset(q, 0, sizeof *q);
}

/* ---------------------------------------------------------------- types */

/* Inline values of 3.13 instances: allocated with the object. */
static uint64_t inline_values_size(char *tp)
{
    char *keys = PYABI_AT(tp, abi->type.cached_keys, char *);
    ssize_t size;
    if (!keys) return 0;
    size = PYABI_AT(keys, 16, ssize_t) + PYABI_AT(keys, 24, ssize_t); /* dk_usable + dk_nentries */
    if (size < 0 || size > 1 << 16) return 0;
    return (uint64_t)(((size + 7) & ~7) + (size + 1) * 8);
}

/* 3.11+ frames and generators have a tp_itemsize but no ob_size: their
 * variable part is sized by the code object; counted at tp_basicsize. */
static int not_var(char *tp)
{
    return is_sub(tp, api.frame_t) || is_sub(tp, api.gen_t) || is_sub(tp, api.coro_t) ||
           is_sub(tp, api.asyncgen_t);
}

void tinfo_init(struct tinfo *t, char *tp)
{
    unsigned long fl = TP_FLAGS(tp);
    memset(t, 0, sizeof *t);
    t->tp = tp;
    t->itemsize = TP_ITEMSIZE(tp);
    if (fl & F_HAVE_GC) t->pre = 16;
    if (fl & abi->type.preheader_flags) t->pre += 16;
    t->fixed = (uint64_t)TP_BASICSIZE(tp) + t->pre;
    if (abi->dict.inst_values == PYABI_VALUES_INLINE && (fl & F_INLINE_VALUES)) t->fixed += inline_values_size(tp);
    if (fl & F_LONG_SUB) t->kind = SK_LONG;
    else if (fl & F_UNICODE_SUB) t->kind = SK_STR;
    else if (fl & F_LIST_SUB) t->kind = SK_LIST;
    else if (fl & F_DICT_SUB) t->kind = SK_DICT;
    else if (is_sub(tp, api.set_t) || is_sub(tp, api.frozenset_t)) t->kind = SK_SET;
    else if (is_sub(tp, api.bytearray_t)) t->kind = SK_BYTEARRAY;
    else if (t->itemsize && !((abi->caps & PYABI_FRAME_SIZED_BY_CODE) && not_var(tp))) t->kind = SK_VAR;
    else t->kind = SK_FIXED;
}

int tt_init(struct ttab *tt)
{
    memset(tt, 0, sizeof *tt);
    tt->cap = 1024;
    tt->v = malloc(tt->cap * sizeof *tt->v);
    if (!tt->v || pm_init(&tt->map, 4096, 1) < 0) {
        free(tt->v);
        tt->v = NULL;
        return -1;
    }
    return 0;
}

void tt_release(struct ttab *tt)
{
    if (tt->hold)
        for (size_t i = 0; i < tt->n; i++) api.DecRef((pyobj *)tt->v[i].tp);
    tt->hold = 0;
}

void tt_free(struct ttab *tt)
{
    free(tt->v);
    pm_free(&tt->map);
    memset(tt, 0, sizeof *tt);
}

uint64_t dict_extra(pyobj *o)
{
    char *keys = PYABI_AT(o, abi->dict.keys, char *);
    int has_values = PYABI_AT(o, abi->dict.values, char *) != NULL;
    uint64_t extra = 0;
    if (!keys) return 0;
    if (!(abi->caps & PYABI_DICT_KEYS_V2)) {
        ssize_t size = PYABI_AT(keys, 8, ssize_t), usable, es;
        if (size <= 0 || size > ((ssize_t)1 << 40)) return 0;
        usable = (size << 1) / 3;
        es = size <= 0xff ? 1 : size <= 0xffff ? 2 : size <= 0xffffffffL ? 4 : 8;
        if (has_values) extra += (uint64_t)usable * 8;
        if (PYABI_AT(keys, 0, ssize_t) == 1) extra += 40 + (uint64_t)(es * size + 24 * usable);
    } else {
        unsigned log2 = PYABI_AT(keys, 8, uint8_t), log2ib = PYABI_AT(keys, 9, uint8_t), kind = PYABI_AT(keys, 10, uint8_t);
        if (log2 > 40 || log2ib > 43) return 0;
        if (has_values) extra += (uint64_t)(PYABI_AT(keys, 16, ssize_t) + PYABI_AT(keys, 24, ssize_t)) * 8;
        if (PYABI_AT(keys, 0, ssize_t) == 1)
            extra += 32 + ((uint64_t)1 << log2ib) + ((((uint64_t)1 << log2) << 1) / 3) * (kind ? 16 : 24);
    }
    return extra;
}

uint64_t str_size(pyobj *o)
{
    uint32_t state = pyabi_str_state(abi, o);
    unsigned kind = pyabi_str_kind(state);
    uint64_t len = (uint64_t)PYABI_AT(o, 0x10, ssize_t);
    if (pyabi_str_compact(state) && pyabi_str_ascii(state)) return abi->str.ascii_size + len + 1;
    if (pyabi_str_compact(state)) return abi->str.compact_size + (len + 1) * kind;
    return abi->str.compact_size + 8 + (PYABI_AT(o, abi->str.compact_size, void *) ? (len + 1) * kind : 0);
}
