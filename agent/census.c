/* census.c -- what objects exist and who holds them: the type census, back-reference
 * graphs and reference chains, computed in C under the GIL from the collector's lists.
 *
 * No Python code runs here: objects are found by walking the GC generation lists,
 * their referents with tp_traverse (the same visits the collector makes), and labels
 * are read from builtin objects' memory (never a user __repr__/__eq__/__hash__). The
 * only C API calls are lookups on builtin types (PyDict_Next, getset/member getters of
 * function/frame/code objects) made after the heap walks, with the collector paused.
 * Memory is malloc'd hash tables, capped, freed before the handler returns. */
#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "agent.h"

/* Every CPython layout fact used below comes from agent/pyabi.h: constants for
 * what every supported version shares, the running version's entry (L) for the
 * rest. Read at fixed offsets, the same in every supported version (LP64):
 * str length 0x10; dict ma_used 0x10; long digits 0x18;
 * float ob_fval 0x10; bytes ob_sval 0x20; bytearray ob_alloc 0x18; set used
 * 0x18, mask 0x20, table 0x28, smalltable 0x40; module md_dict 0x10; cell
 * ob_ref 0x10; method im_func 0x10, im_self 0x18; C function m_ml 0x10, m_self
 * 0x18. tests/test_objects.py checks them against the interpreter on each. */
static const struct pyabi *L;

/* ---------------------------------------------------------------- object access */

typedef struct pyobj pyobj; /* a PyObject, only read through the macros below */
typedef int (*visit_fn)(pyobj *, void *);
typedef int (*traverse_fn)(pyobj *, visit_fn, void *);
typedef int (*inquiry_fn)(pyobj *);

#define FLD(p, off, T) (*(T *)((char *)(p) + (off)))
#define OB_REFCNT(o) FLD(o, PYABI_OB_REFCNT, ssize_t)
#define OB_TYPE(o) FLD(o, PYABI_OB_TYPE, char *)
#define OB_SIZE(o) FLD(o, PYABI_OB_SIZE, ssize_t)
#define GC_NEXT(o) FLD((char *)(o) - PYABI_GC_HEAD, 0, uintptr_t)
#define TP_NAME(t) FLD(t, PYABI_TP_NAME, const char *)
#define TP_BASICSIZE(t) FLD(t, PYABI_TP_BASICSIZE, ssize_t)
#define TP_ITEMSIZE(t) FLD(t, PYABI_TP_ITEMSIZE, ssize_t)
#define TP_FLAGS(t) FLD(t, PYABI_TP_FLAGS, unsigned long)
#define TP_TRAVERSE(t) FLD(t, PYABI_TP_TRAVERSE, traverse_fn)
#define TP_MEMBERS(t) FLD(t, PYABI_TP_MEMBERS, char *)
#define TP_BASE(t) FLD(t, PYABI_TP_BASE, char *)
#define TP_DICT(t) FLD(t, PYABI_TP_DICT, pyobj *)
#define TP_DICTOFFSET(t) FLD(t, PYABI_TP_DICTOFFSET, ssize_t)
#define TP_IS_GC(t) FLD(t, PYABI_TP_IS_GC, inquiry_fn)
#define TP_BASES(t) FLD(t, PYABI_TP_BASES, pyobj *)
#define TP_MRO(t) FLD(t, PYABI_TP_MRO, pyobj *)

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
#define HEAP_MAX 2000000000ull     /* more than this on one walk: a corrupt list */

/* ---------------------------------------------------------------- the C API */

static struct capi {
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
    char *type_t, *module_t, *dict_t, *list_t, *tuple_t, *set_t, *frozenset_t, *str_t, *long_t,
        *bool_t, *float_t, *bytes_t, *bytearray_t, *function_t, *method_t, *cfunction_t, *cell_t,
        *frame_t, *code_t, *gen_t, *coro_t, *asyncgen_t;
    pyobj *none, *true_;
} api;

static const char *const func_getters[7] = {
    "PyFunction_GetCode", "PyFunction_GetGlobals", "PyFunction_GetDefaults",
    "PyFunction_GetKwDefaults", "PyFunction_GetClosure", "PyFunction_GetAnnotations",
    "PyFunction_GetModule"};
static const char *const func_attrs[7] = {"__code__",    "__globals__", "__defaults__", "__kwdefaults__",
                                          "__closure__", "__annotations__", "__module__"};

static int api_load(char *err)
{
    struct { void **slot; const char *name; } req[] = {
        {(void **)&api.Dict_Next, "PyDict_Next"},
        {(void **)&api.Dict_GetItemString, "PyDict_GetItemString"},
        {(void **)&api.GetAttrString, "PyObject_GetAttrString"},
        {(void **)&api.DecRef, "Py_DecRef"},
        {(void **)&api.Err_Clear, "PyErr_Clear"},
        {(void **)&api.IsSubtype, "PyType_IsSubtype"},
        {(void **)&api.Import, "PyImport_ImportModule"},
        {(void **)&api.CallMethod, "PyObject_CallMethod"},
        {(void **)&api.Frame_GetLineNumber, "PyFrame_GetLineNumber"},
        {(void **)&api.type_t, "PyType_Type"}, {(void **)&api.module_t, "PyModule_Type"},
        {(void **)&api.dict_t, "PyDict_Type"}, {(void **)&api.list_t, "PyList_Type"},
        {(void **)&api.tuple_t, "PyTuple_Type"}, {(void **)&api.set_t, "PySet_Type"},
        {(void **)&api.frozenset_t, "PyFrozenSet_Type"}, {(void **)&api.str_t, "PyUnicode_Type"},
        {(void **)&api.long_t, "PyLong_Type"}, {(void **)&api.bool_t, "PyBool_Type"},
        {(void **)&api.float_t, "PyFloat_Type"}, {(void **)&api.bytes_t, "PyBytes_Type"},
        {(void **)&api.bytearray_t, "PyByteArray_Type"},
        {(void **)&api.function_t, "PyFunction_Type"}, {(void **)&api.method_t, "PyMethod_Type"},
        {(void **)&api.cfunction_t, "PyCFunction_Type"}, {(void **)&api.cell_t, "PyCell_Type"},
        {(void **)&api.frame_t, "PyFrame_Type"}, {(void **)&api.code_t, "PyCode_Type"},
        {(void **)&api.gen_t, "PyGen_Type"}, {(void **)&api.coro_t, "PyCoro_Type"},
        {(void **)&api.asyncgen_t, "PyAsyncGen_Type"},
        {(void **)&api.none, "_Py_NoneStruct"}, {(void **)&api.true_, "_Py_TrueStruct"},
    };
    L = pyapi_abi();
    if (!L) {
        mp_err(err, "object census: %s", pyapi_abi_error());
        return -1;
    }
    if (api.ready) return 0;
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        *req[i].slot = pyapi_sym(req[i].name);
        if (!*req[i].slot) {
            mp_err(err, "object census: the interpreter does not export %s", req[i].name);
            return -1;
        }
    }
    api.InterpreterState_Main = (void *(*)(void))pyapi_sym("PyInterpreterState_Main");
    api.runtime = pyapi_sym("_PyRuntime");
    api.GC_Disable = (int (*)(void))pyapi_sym("PyGC_Disable");
    api.GC_Enable = (int (*)(void))pyapi_sym("PyGC_Enable");
    for (int i = 0; i < 7; i++) api.Func_Get[i] = (pyobj * (*)(pyobj *)) pyapi_sym(func_getters[i]);
    api.ready = 1;
    return 0;
}

static int is_sub(char *tp, char *base) { return tp == base || api.IsSubtype(tp, base); }

/* PyObject_IS_GC: has a PyGC_Head (static types do not, though their type has HAVE_GC). */
static int obj_is_gc(char *tp, pyobj *o)
{
    inquiry_fn f;
    if (!(TP_FLAGS(tp) & F_HAVE_GC)) return 0;
    f = TP_IS_GC(tp);
    return !f || f(o);
}

/* ---------------------------------------------------------------- pointer maps */

/* Open addressing, linear probing, key 0 = empty; vals optional. */
struct pmap {
    uintptr_t *keys;
    uint32_t *vals;
    size_t mask, n;
    unsigned bits;
};

static inline size_t pm_slot(const struct pmap *m, uintptr_t k)
{
    return (size_t)(((k >> 4) * 0x9E3779B97F4A7C15ull) >> (64 - m->bits));
}

static int pm_init(struct pmap *m, size_t want, int with_vals)
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

static void pm_free(struct pmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
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

static int pm_grow(struct pmap *m)
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

/* ---------------------------------------------------------------- heap walk */

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
};

/* Called per tracked object; nonzero stops the walk. */
typedef int (*heap_fn)(pyobj *o, void *arg);

#define GC_PTR(g, off) (FLD(g, off, uintptr_t) & ~(uintptr_t)3)

/* One generation list, from both ends at once: walking a linked list is one
 * cache miss after another, and two independent chains of misses overlap. */
static int heap_walk_list(uintptr_t head, heap_fn fn, void *arg)
{
    uintptr_t f = GC_PTR(head, 0), b = GC_PTR(head, 8);
    uint64_t n = 0;
    int rc;
    while (f && b && f != head && n < HEAP_MAX) {
        uintptr_t nf, nb;
        if ((rc = fn((pyobj *)(f + 16), arg))) return rc;
        if (f == b) break;
        if ((rc = fn((pyobj *)(b + 16), arg))) return rc;
        nf = GC_PTR(f, 0);
        nb = GC_PTR(b, 8);
        if (nf == b) break;
        f = nf;
        b = nb;
        n += 2;
    }
    return 0;
}

/* Every tracked object once (in no particular order). Returns what fn stopped with. */
static int heap_walk(const struct heap *h, heap_fn fn, void *arg)
{
    int rc = 0;
    if (h->gc) {
        for (int i = 0; i < h->nheads && !rc; i++) rc = heap_walk_list(h->heads[i], fn, arg);
        return rc;
    }
    for (ssize_t i = 0; i < h->len && !rc; i++)
        if (h->items[i] != h->list) rc = fn(h->items[i], arg);
    return rc;
}

static int gc_state_valid(char *gc)
{
    uintptr_t heads[4];
    /* the generation0 pointer: 3.14.0's incremental collector has none, and
     * then this fails and the census lists objects with gc.get_objects() */
    if (FLD(gc, L->gc.generation0, uintptr_t) != (uintptr_t)(gc + L->gc.generations)) return 0;
    for (int i = 0; i < 3; i++) heads[i] = (uintptr_t)(gc + L->gc.generations + 24 * i);
    heads[3] = (uintptr_t)(gc + L->gc.permanent);
    for (int i = 0; i < 4; i++) {
        uintptr_t next = FLD(heads[i], 0, uintptr_t) & ~(uintptr_t)3;
        uintptr_t prev = FLD(heads[i], 8, uintptr_t) & ~(uintptr_t)3;
        if (!next || !prev) return 0;
        if ((FLD(next, 8, uintptr_t) & ~(uintptr_t)3) != heads[i]) return 0;
        if ((FLD(prev, 0, uintptr_t) & ~(uintptr_t)3) != heads[i]) return 0;
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
        h->was_enabled = FLD(h->gc, L->gc.enabled, int);
        FLD(h->gc, L->gc.enabled, int) = 0;
    } else if (api.GC_Disable) {
        h->was_enabled = api.GC_Disable();
    } else {
        h->was_enabled = gc_module_call("isenabled") == 1;
        gc_module_call("disable");
    }
    h->paused = 1;
}

static void heap_close(struct heap *h)
{
    if (h->paused && h->was_enabled) {
        if (h->gc) FLD(h->gc, L->gc.enabled, int) = 1;
        else if (api.GC_Enable) api.GC_Enable();
        else gc_module_call("enable");
    }
    if (h->list) api.DecRef(h->list);
    memset(h, 0, sizeof *h);
}

static int heap_open(struct heap *h, char *err)
{
    char *base = NULL;
    memset(h, 0, sizeof *h);
    if (L->caps & PYABI_GC_IN_RUNTIME) base = api.runtime;
    else if (api.InterpreterState_Main) base = api.InterpreterState_Main();
#ifdef CENSUS_TEST_FALLBACK /* tests/objects: exercise the gc.get_objects() path */
    base = NULL;
#endif
    if (base && gc_state_valid(base + L->gc.state)) {
        h->gc = base + L->gc.state;
        if (FLD(h->gc, L->gc.collecting, int)) {
            mp_err(err, "the target is in the middle of a garbage collection; try again");
            h->gc = NULL;
            return -1;
        }
        for (int i = 0; i < 3; i++) h->heads[i] = (uintptr_t)(h->gc + L->gc.generations + 24 * i);
        h->heads[3] = (uintptr_t)(h->gc + L->gc.permanent);
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
    h->items = FLD(h->list, L->list.items, pyobj **);
    return 0;
}

/* ---------------------------------------------------------------- strings */

struct str_view {
    ssize_t len;
    unsigned kind; /* 1, 2 or 4 bytes per code point */
    const unsigned char *data;
};

/* The code points of a str (or subclass), read from its memory. 0 when the
 * string is in a form we do not read (3.8-3.11 not-ready wstr strings). */
static int str_view(pyobj *s, struct str_view *v)
{
    uint32_t state = FLD(s, L->str.state, uint32_t);
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    v->len = FLD(s, 0x10, ssize_t);
    v->kind = kind;
    if (kind != 1 && kind != 2 && kind != 4) return 0;
    if (compact && ascii) v->data = (const unsigned char *)s + L->str.ascii_size;
    else if (compact) v->data = (const unsigned char *)s + L->str.compact_size;
    else v->data = FLD(s, L->str.compact_size, const unsigned char *);
    return v->data != NULL && v->len >= 0;
}

static inline uint32_t str_at(const struct str_view *v, ssize_t i)
{
    if (v->kind == 1) return v->data[i];
    if (v->kind == 2) return ((const uint16_t *)v->data)[i];
    return ((const uint32_t *)v->data)[i];
}

/* A bounded label builder that counts code points (objgraph cuts reprs at 40). */
struct sb {
    char buf[256];
    size_t n;
    size_t chars;
};

static void sb_raw(struct sb *b, const char *s, size_t n)
{
    if (b->n + n >= sizeof b->buf) return;
    memcpy(b->buf + b->n, s, n);
    b->n += n;
    b->buf[b->n] = 0;
    b->chars++;
}

static void sb_cp(struct sb *b, uint32_t cp)
{
    char u[4];
    if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
    if (cp < 0x80) u[0] = (char)cp, sb_raw(b, u, 1);
    else if (cp < 0x800) u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), sb_raw(b, u, 2);
    else if (cp < 0x10000)
        u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3f)),
        u[2] = (char)(0x80 | (cp & 0x3f)), sb_raw(b, u, 3);
    else
        u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3f)),
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), u[3] = (char)(0x80 | (cp & 0x3f)), sb_raw(b, u, 4);
}

static void sb_puts(struct sb *b, const char *s)
{
    for (; *s; s++) sb_raw(b, s, 1);
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    char tmp[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    sb_puts(b, tmp);
}

/* Cut to max code points (objgraph: repr(obj)[:40]). */
static void sb_cut(struct sb *b, size_t max)
{
    size_t chars = 0, i = 0;
    while (i < b->n) {
        unsigned char c = (unsigned char)b->buf[i];
        size_t w = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        if (chars == max) {
            b->n = i;
            b->buf[i] = 0;
            return;
        }
        chars++;
        i += w;
    }
}

/* str -> UTF-8 name (module names, attribute names, __module__). */
static void sb_str(struct sb *b, pyobj *s)
{
    struct str_view v;
    if (!s || !(TP_FLAGS(OB_TYPE(s)) & F_UNICODE_SUB) || !str_view(s, &v)) {
        sb_puts(b, "?");
        return;
    }
    for (ssize_t i = 0; i < v.len && b->n < sizeof b->buf - 8; i++) sb_cp(b, str_at(&v, i));
}

static void sb_str_repr(struct sb *b, pyobj *s)
{
    struct str_view v;
    int has_sq = 0, has_dq = 0;
    char q;
    if (!str_view(s, &v)) {
        sb_puts(b, "<str>");
        return;
    }
    for (ssize_t i = 0; i < v.len && i < 64; i++) {
        uint32_t c = str_at(&v, i);
        has_sq |= c == '\'';
        has_dq |= c == '"';
    }
    q = has_sq && !has_dq ? '"' : '\'';
    sb_raw(b, &q, 1);
    for (ssize_t i = 0; i < v.len && b->chars < 48; i++) {
        uint32_t c = str_at(&v, i);
        if (c == (uint32_t)q || c == '\\') sb_printf(b, "\\%c", (char)c);
        else if (c == '\n') sb_puts(b, "\\n");
        else if (c == '\r') sb_puts(b, "\\r");
        else if (c == '\t') sb_puts(b, "\\t");
        else if (c < 0x20 || (c >= 0x7f && c < 0xa0)) sb_printf(b, "\\x%02x", c);
        else if (c >= 0xd800 && c < 0xe000) sb_printf(b, "\\u%04x", c);
        else sb_cp(b, c);
    }
    sb_raw(b, &q, 1);
}

/* ---------------------------------------------------------------- types */

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
};

/* Inline values of 3.13 instances: allocated with the object. */
static uint64_t inline_values_size(char *tp)
{
    char *keys = FLD(tp, L->type.cached_keys, char *);
    ssize_t size;
    if (!keys) return 0;
    size = FLD(keys, 16, ssize_t) + FLD(keys, 24, ssize_t); /* dk_usable + dk_nentries */
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

static void tinfo_init(struct tinfo *t, char *tp)
{
    unsigned long fl = TP_FLAGS(tp);
    memset(t, 0, sizeof *t);
    t->tp = tp;
    t->itemsize = TP_ITEMSIZE(tp);
    if (fl & F_HAVE_GC) t->pre = 16;
    if (fl & L->type.preheader_flags) t->pre += 16;
    t->fixed = (uint64_t)TP_BASICSIZE(tp) + t->pre;
    if (L->dict.inst_values == PYABI_VALUES_INLINE && (fl & F_INLINE_VALUES)) t->fixed += inline_values_size(tp);
    if (fl & F_LONG_SUB) t->kind = SK_LONG;
    else if (fl & F_UNICODE_SUB) t->kind = SK_STR;
    else if (fl & F_LIST_SUB) t->kind = SK_LIST;
    else if (fl & F_DICT_SUB) t->kind = SK_DICT;
    else if (is_sub(tp, api.set_t) || is_sub(tp, api.frozenset_t)) t->kind = SK_SET;
    else if (is_sub(tp, api.bytearray_t)) t->kind = SK_BYTEARRAY;
    else if (t->itemsize && !((L->caps & PYABI_FRAME_SIZED_BY_CODE) && not_var(tp))) t->kind = SK_VAR;
    else t->kind = SK_FIXED;
}

static int tt_init(struct ttab *tt)
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

static void tt_free(struct ttab *tt)
{
    free(tt->v);
    pm_free(&tt->map);
    memset(tt, 0, sizeof *tt);
}

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
        ix = pm_get(&tt->map, (uintptr_t)tp);
        tt->n++;
    }
    tt->cache_tp[slot] = tp;
    tt->cache_ix[slot] = *ix;
    return &tt->v[*ix];
}

static uint64_t dict_extra(pyobj *o)
{
    char *keys = FLD(o, L->dict.keys, char *);
    int has_values = FLD(o, L->dict.values, char *) != NULL;
    uint64_t extra = 0;
    if (!keys) return 0;
    if (!(L->caps & PYABI_DICT_KEYS_V2)) {
        ssize_t size = FLD(keys, 8, ssize_t), usable, es;
        if (size <= 0 || size > ((ssize_t)1 << 40)) return 0;
        usable = (size << 1) / 3;
        es = size <= 0xff ? 1 : size <= 0xffff ? 2 : size <= 0xffffffffL ? 4 : 8;
        if (has_values) extra += (uint64_t)usable * 8;
        if (FLD(keys, 0, ssize_t) == 1) extra += 40 + (uint64_t)(es * size + 24 * usable);
    } else {
        unsigned log2 = FLD(keys, 8, uint8_t), log2ib = FLD(keys, 9, uint8_t), kind = FLD(keys, 10, uint8_t);
        if (log2 > 40 || log2ib > 43) return 0;
        if (has_values) extra += (uint64_t)(FLD(keys, 16, ssize_t) + FLD(keys, 24, ssize_t)) * 8;
        if (FLD(keys, 0, ssize_t) == 1)
            extra += 32 + ((uint64_t)1 << log2ib) + ((((uint64_t)1 << log2) << 1) / 3) * (kind ? 16 : 24);
    }
    return extra;
}

static uint64_t str_size(pyobj *o)
{
    uint32_t state = FLD(o, L->str.state, uint32_t);
    unsigned kind = (state >> 2) & 7, compact = (state >> 5) & 1, ascii = (state >> 6) & 1;
    uint64_t len = (uint64_t)FLD(o, 0x10, ssize_t);
    if (compact && ascii) return L->str.ascii_size + len + 1;
    if (compact) return L->str.compact_size + (len + 1) * kind;
    return L->str.compact_size + 8 + (FLD(o, L->str.compact_size, void *) ? (len + 1) * kind : 0);
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
    case SK_LIST: return t->fixed + (uint64_t)FLD(o, L->list.items + 8, ssize_t) * 8; /* allocated */
    case SK_DICT: return t->fixed + dict_extra(o);
    case SK_SET:
        return t->fixed + (FLD(o, 0x28, char *) != (char *)o + 0x40 ? (uint64_t)(FLD(o, 0x20, ssize_t) + 1) * 16 : 0);
    case SK_BYTEARRAY: return t->fixed + (uint64_t)FLD(o, 0x18, ssize_t);
    case SK_STR: return t->fixed - (uint64_t)TP_BASICSIZE(t->tp) + str_size(o);
    case SK_LONG:
        if (L->caps & PYABI_LONG_TAG) {
            uint64_t nd = FLD(o, L->longobj.tag, uintptr_t) >> 3;
            return t->fixed + (nd ? nd : 1) * 4;
        }
        n = OB_SIZE(o);
        return t->fixed + (uint64_t)(n < 0 ? -n : n) * 4;
    }
    return t->fixed;
}

/* Names of a type: __name__ (short: tp_name after its last dot, for static
 * types and PyType_FromSpec heap types alike) and __module__. */
static void type_short(char *tp, struct sb *b)
{
    const char *name = TP_NAME(tp), *dot;
    if (!name) name = "?";
    if ((dot = strrchr(name, '.'))) name = dot + 1;
    sb_puts(b, name);
}

static void type_module(char *tp, struct sb *b)
{
    const char *name = TP_NAME(tp), *dot;
    if (TP_FLAGS(tp) & F_HEAPTYPE) {
        pyobj *d = TP_DICT(tp), *m;
        if (d && (TP_FLAGS(OB_TYPE(d)) & F_DICT_SUB)) {
            m = api.Dict_GetItemString(d, "__module__");
            if (m && (TP_FLAGS(OB_TYPE(m)) & F_UNICODE_SUB)) sb_str(b, m);
        }
        return;
    }
    if (name && (dot = strrchr(name, '.'))) sb_raw(b, name, (size_t)(dot - name));
    else sb_puts(b, "builtins");
}

/* ---------------------------------------------------------------- census */

struct census {
    struct ttab tt;
    struct pmap seen;    /* --all: untracked objects already counted */
    pyobj **stack;       /* --all: untracked containers still to traverse */
    size_t sp, scap;
    int all, failed;
};

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
    rc = pm_put(&c->seen, (uintptr_t)r, 0);
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
    struct tinfo *t = tt_get(&c->tt, OB_TYPE(o));
    if (!t) return c->failed = 1;
    t->count++;
    if (t->kind != SK_FIXED) t->bytes += obj_size(o, t);
    if (c->all) census_traverse(c, o);
    return c->failed;
}

static int census_walk(struct census *c, char *err)
{
    struct heap h;
    if (heap_open(&h, err) < 0) return -1;
    heap_walk(&h, census_one, c);
    heap_close(&h);
    if (c->failed) {
        mp_err(err, "object census stopped: out of memory or more than %u untracked objects",
               MAX_SET_SLOTS / 10 * 7);
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
    cr->gil_ms = (mp_now() - t0) * 1e3;
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
    if (tt_init(&c.tt) < 0 || (req->all && pm_init(&c.seen, 1 << 16, 0) < 0)) {
        mp_err(err, "object census: out of memory");
        goto out;
    }
    c.all = req->all;
    if (census_walk(&c, err) < 0) goto out;
    rc = census_reply(&c, reply, t0, err);
out:
    tt_free(&c.tt);
    pm_free(&c.seen);
    free(c.stack);
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

/* ---------------------------------------------------------------- labels */

/* Long value for small ints (up to 4 digits of 30 bits); 0 if too big. */
static int long_value(pyobj *o, __int128 *out)
{
    ssize_t nd;
    int neg;
    __int128 v = 0;
    if (L->caps & PYABI_LONG_TAG) {
        uintptr_t tag = FLD(o, L->longobj.tag, uintptr_t);
        nd = (ssize_t)(tag >> 3);
        neg = (tag & 3) == 2;
    } else {
        nd = OB_SIZE(o);
        neg = nd < 0;
        if (neg) nd = -nd;
    }
    if (nd > 4) return 0;
    for (ssize_t i = nd - 1; i >= 0; i--) v = (v << 30) | (FLD(o, 0x18 + 4 * i, uint32_t) & 0x3fffffff);
    *out = neg ? -v : v;
    return 1;
}

static void sb_int128(struct sb *b, __int128 v)
{
    char tmp[48], *p = tmp + sizeof tmp - 1;
    int neg = v < 0;
    unsigned __int128 u = neg ? (unsigned __int128)(-(v + 1)) + 1 : (unsigned __int128)v;
    *p = 0;
    do {
        *--p = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    if (neg) *--p = '-';
    sb_puts(b, p);
}

static void sb_float(struct sb *b, double d)
{
    char tmp[40];
    if (d != d) {
        sb_puts(b, "nan");
        return;
    }
    if (d > 1.7976931348623157e308 || d < -1.7976931348623157e308) {
        sb_puts(b, d > 0 ? "inf" : "-inf");
        return;
    }
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, d);
        if (strtod(tmp, NULL) == d) break;
    }
    if (!strpbrk(tmp, ".en")) strcat(tmp, ".0");
    sb_puts(b, tmp);
}

/* A getattr on a builtin type whose attribute is a getset/member of C code. */
static pyobj *builtin_attr(pyobj *o, const char *name)
{
    pyobj *r = api.GetAttrString(o, name);
    if (!r) api.Err_Clear();
    return r;
}

static void sb_attr_str(struct sb *b, pyobj *o, const char *name, int basename)
{
    pyobj *s = builtin_attr(o, name);
    struct sb tmp = {.n = 0};
    const char *p;
    sb_str(&tmp, s);
    if (s) api.DecRef(s);
    p = basename && strrchr(tmp.buf, '/') ? strrchr(tmp.buf, '/') + 1 : tmp.buf;
    sb_puts(b, p);
}

static long attr_long(pyobj *o, const char *name)
{
    pyobj *v = builtin_attr(o, name);
    __int128 x = 0;
    if (!v) return 0;
    if (TP_FLAGS(OB_TYPE(v)) & F_LONG_SUB) long_value(v, &x);
    api.DecRef(v);
    return (long)x;
}

static void frame_label(pyobj *f, struct sb *b)
{
    pyobj *code = builtin_attr(f, "f_code");
    if (code && OB_TYPE(code) == api.code_t) sb_attr_str(b, code, "co_filename", 0);
    else sb_puts(b, "?");
    if (code) api.DecRef(code);
    sb_printf(b, ":%d", api.Frame_GetLineNumber(f));
}

static void function_label(pyobj *fn, struct sb *b)
{
    struct sb name = {.n = 0};
    sb_attr_str(&name, fn, "__name__", 0);
    if (!strcmp(name.buf, "<lambda>")) {
        pyobj *code = api.Func_Get[0] ? api.Func_Get[0](fn) : NULL; /* borrowed */
        sb_puts(b, "lambda: ");
        if (code && OB_TYPE(code) == api.code_t) {
            sb_attr_str(b, code, "co_filename", 1);
            sb_printf(b, ":%ld", attr_long(code, "co_firstlineno"));
        }
        return;
    }
    sb_puts(b, "<function ");
    sb_attr_str(b, fn, "__qualname__", 0);
    sb_printf(b, " at %p>", (void *)fn);
}

/* objgraph's _short_repr, without calling any Python-level repr. */
static void obj_label(pyobj *o, struct sb *b)
{
    char *tp = OB_TYPE(o);
    unsigned long fl = TP_FLAGS(tp);
    if (fl & F_TYPE_SUB) type_short((char *)o, b);
    else if (is_sub(tp, api.module_t)) sb_str(b, FLD(o, L->module.name, pyobj *));
    else if (is_sub(tp, api.cfunction_t)) {
        char *ml = FLD(o, 0x10, char *);
        sb_puts(b, ml && FLD(ml, 0, const char *) ? FLD(ml, 0, const char *) : "?");
    } else if (tp == api.method_t) {
        pyobj *fn = FLD(o, 0x10, pyobj *);
        if (fn && OB_TYPE(fn) == api.function_t) sb_attr_str(b, fn, "__name__", 0);
        else sb_puts(b, "method");
        if (FLD(o, 0x18, pyobj *)) sb_puts(b, " (bound)");
    } else if (tp == api.function_t) function_label(o, b);
    else if (tp == api.frame_t) frame_label(o, b);
    else if (fl & (F_TUPLE_SUB | F_LIST_SUB)) sb_printf(b, "%zd items", OB_SIZE(o));
    else if (fl & F_DICT_SUB) sb_printf(b, "%zd items", FLD(o, 0x10, ssize_t));
    else if (is_sub(tp, api.set_t)) sb_printf(b, "%zd items", FLD(o, 0x18, ssize_t));
    else if (fl & F_UNICODE_SUB) sb_str_repr(b, o);
    else if (tp == api.bool_t) sb_puts(b, o == api.true_ ? "True" : "False");
    else if (fl & F_LONG_SUB) {
        __int128 v;
        if (long_value(o, &v)) sb_int128(b, v);
        else sb_puts(b, "<big int>");
    } else if (tp == api.float_t) sb_float(b, FLD(o, 0x10, double));
    else if (o == api.none) sb_puts(b, "None");
    else if (tp == api.code_t) {
        sb_puts(b, "<code object ");
        sb_attr_str(b, o, "co_name", 0);
        sb_printf(b, " at %p>", (void *)o);
    } else if (fl & F_BYTES_SUB) {
        ssize_t n = OB_SIZE(o);
        const unsigned char *d = (const unsigned char *)o + 0x20;
        sb_puts(b, "b'");
        for (ssize_t i = 0; i < n && b->chars < 48; i++) {
            if (d[i] == '\'' || d[i] == '\\') sb_printf(b, "\\%c", d[i]);
            else if (d[i] >= 0x20 && d[i] < 0x7f) sb_raw(b, (const char *)&d[i], 1);
            else sb_printf(b, "\\x%02x", d[i]);
        }
        sb_puts(b, "'");
    } else {
        struct sb mod = {.n = 0};
        type_module(tp, &mod);
        sb_puts(b, "<");
        if (mod.n && strcmp(mod.buf, "builtins")) sb_printf(b, "%s.", mod.buf);
        type_short(tp, b);
        sb_printf(b, " object at %p>", (void *)o);
    }
    sb_cut(b, 40);
}

/* The dict holding src's attributes, if any (not creating one). */
static pyobj *dict_of(pyobj *src, char *tp)
{
    unsigned long fl = TP_FLAGS(tp);
    ssize_t off;
    if (fl & F_TYPE_SUB) return TP_DICT((char *)src);
    if (is_sub(tp, api.module_t)) return FLD(src, 0x10, pyobj *);
    if (L->dict.inst_values != PYABI_VALUES_NONE && (fl & F_MANAGED_DICT)) {
        uintptr_t d = FLD(src, -24, uintptr_t);
        if (L->dict.inst_values == PYABI_VALUES_TAGGED && (d & 1)) return NULL; /* values, no dict */
        return (pyobj *)d;
    }
    off = TP_DICTOFFSET(tp);
    if (off > 0) return FLD(src, off, pyobj *);
    if (off < 0 && !(fl & F_LONG_SUB)) { /* 3.12+ long: ob_size is lv_tag */
        ssize_t n = OB_SIZE(src), size;
        if (n > (1 << 28) || n < -(1 << 28)) return NULL;
        size = TP_BASICSIZE(tp) + (n < 0 ? -n : n) * TP_ITEMSIZE(tp);
        size = (size + 7) & ~(ssize_t)7;
        return FLD(src, size + off, pyobj *);
    }
    return NULL;
}

/* 3.11+: instance attributes kept as a values array beside the type's shared keys. */
static int managed_attr(pyobj *src, char *tp, pyobj *dst, struct sb *b)
{
    unsigned long fl = TP_FLAGS(tp);
    char *values = NULL, *keys, *entries;
    ssize_t n;
    unsigned kind;
    if (L->dict.inst_values == PYABI_VALUES_NONE || !(fl & F_MANAGED_DICT) || !(fl & F_HEAPTYPE)) return 0;
    if (L->dict.inst_values == PYABI_VALUES_PREHEADER) values = FLD(src, -32, char *);
    else if (L->dict.inst_values == PYABI_VALUES_TAGGED) {
        uintptr_t d = FLD(src, -24, uintptr_t);
        if (d & 1) values = (char *)(d + 1); /* stored as values - 1 */
    } else if (fl & F_INLINE_VALUES) {
        values = (char *)src + TP_BASICSIZE(tp);
        if (!FLD(values, 3, uint8_t)) values = NULL; /* not valid: the dict has them */
    }
    keys = FLD(tp, L->type.cached_keys, char *);
    if (!values || !keys) return 0;
    n = FLD(keys, 24, ssize_t);
    kind = FLD(keys, 10, uint8_t);
    if (L->dict.inst_values == PYABI_VALUES_INLINE) {
        if (n > FLD(values, 0, uint8_t)) n = FLD(values, 0, uint8_t);
        values += 8;
    }
    entries = keys + 32 + ((size_t)1 << FLD(keys, 9, uint8_t));
    for (ssize_t i = 0; i < n && i < 4096; i++) {
        if (FLD(values, 8 * i, pyobj *) != dst) continue;
        sb_puts(b, ".");
        sb_str(b, FLD(entries, (kind ? 16 : 24) * i + (kind ? 0 : 8), pyobj *));
        return 1;
    }
    return 0;
}

/* Object members (T_OBJECT, T_OBJECT_EX) of tp and its bases: __slots__ and
 * builtin fields such as __func__, __self__, f_back, __globals__. */
static int member_attr(pyobj *src, char *tp, pyobj *dst, struct sb *b)
{
    int depth = 0;
    for (char *t = tp; t && depth < 64; t = TP_BASE(t), depth++) {
        char *m = TP_MEMBERS(t);
        for (int i = 0; m && FLD(m, 0, const char *) && i < 1000; m += PYABI_MEMBERDEF_SIZE, i++) {
            int type = FLD(m, 8, int), flags = FLD(m, 24, int);
            ssize_t off = FLD(m, 16, ssize_t);
            if ((type != 6 && type != 16) || (flags & 8) || off < 16 || off + 8 > TP_BASICSIZE(tp)) continue;
            if (FLD(src, off, pyobj *) == dst) {
                sb_printf(b, ".%s", FLD(m, 0, const char *));
                return 1;
            }
        }
    }
    return 0;
}

static void key_label(pyobj *k, struct sb *b)
{
    char *kt = OB_TYPE(k);
    __int128 v;
    sb_puts(b, "[");
    if (TP_FLAGS(kt) & F_UNICODE_SUB) sb_str_repr(b, k);
    else if ((TP_FLAGS(kt) & F_LONG_SUB) && kt != api.bool_t && long_value(k, &v)) sb_int128(b, v);
    else if (kt == api.float_t) sb_float(b, FLD(k, 0x10, double));
    else {
        sb_puts(b, "<");
        type_short(kt, b);
        sb_puts(b, ">");
    }
    sb_puts(b, "]");
}

static int special_attr(pyobj *src, char *tp, pyobj *dst, struct sb *b)
{
    const char *name = NULL;
    if (tp == api.function_t) {
        for (int i = 0; i < 7 && !name; i++)
            if (api.Func_Get[i] && api.Func_Get[i](src) == dst) name = func_attrs[i];
    } else if (tp == api.cell_t) {
        if (FLD(src, 0x10, pyobj *) == dst) name = "cell_contents";
    } else if (tp == api.frame_t) {
        char *f = L->frameobj.iframe >= 0 ? FLD(src, L->frameobj.iframe, char *) : (char *)src;
        if (f && FLD(f, L->frameobj.locals, pyobj *) == dst) name = "f_locals";
        else if (f && FLD(f, L->frameobj.globals, pyobj *) == dst) name = "f_globals";
    } else if (is_sub(tp, api.cfunction_t)) {
        if (FLD(src, 0x18, pyobj *) == dst) name = "__self__";
    } else if (TP_FLAGS(tp) & F_TYPE_SUB) {
        if (TP_MRO((char *)src) == dst) name = "__mro__";
        else if (TP_BASES((char *)src) == dst) name = "__bases__";
        else if ((pyobj *)TP_BASE((char *)src) == dst) name = "__base__";
    }
    if (!name) return 0;
    sb_printf(b, ".%s", name);
    return 1;
}

/* How src refers to dst, in Python accessor syntax: ".attr", "['key']", "[3]",
 * ".__dict__"; "(key)" when dst is a dict key; "" when unknown. */
static void edge_label(pyobj *src, pyobj *dst, struct sb *b)
{
    char *tp = OB_TYPE(src);
    unsigned long fl = TP_FLAGS(tp);
    if ((TP_FLAGS(OB_TYPE(dst)) & F_DICT_SUB) && dict_of(src, tp) == dst) {
        sb_puts(b, ".__dict__");
        return;
    }
    if (fl & F_DICT_SUB) {
        ssize_t pos = 0;
        pyobj *k, *v;
        while (api.Dict_Next(src, &pos, &k, &v)) {
            if (v == dst) {
                key_label(k, b);
                return;
            }
            if (k == dst) {
                sb_puts(b, "(key)");
                return;
            }
        }
        return;
    }
    if (fl & (F_LIST_SUB | F_TUPLE_SUB)) {
        pyobj **items = (fl & F_LIST_SUB) ? FLD(src, L->list.items, pyobj **) : &FLD(src, L->tuple.items, pyobj *);
        ssize_t n = OB_SIZE(src);
        for (ssize_t i = 0; items && i < n; i++)
            if (items[i] == dst) {
                sb_printf(b, "[%zd]", i);
                return;
            }
    }
    if (special_attr(src, tp, dst, b)) return;
    if (managed_attr(src, tp, dst, b)) return;
    member_attr(src, tp, dst, b);
}

/* ---------------------------------------------------------------- backrefs */

struct node {
    uintptr_t addr;
    uintptr_t last_src; /* de-duplicates a referrer visiting the same node twice */
    uint32_t depth, nref, kept, skipped;
    uint32_t parent;    /* chain: the node this one was found as a referrer of */
    uint8_t start, module;
};

struct edge {
    uint32_t src, dst;
};

struct br {
    const Memprof__BackrefsRequest *req;
    struct heap heap;
    struct node *nodes;
    size_t nn, ncap, max_nodes;
    struct edge *edges;
    size_t ne, ecap;
    struct pmap index;    /* addr -> node */
    struct pmap frontier; /* addr -> node, this level's targets */
    uint32_t max_depth, too_many, max_start;
    int chain, failed;
    pyobj *cur;           /* the object being traversed */
    uint64_t matched;
    /* finding start objects */
    struct ttab tt;       /* types seen: matching and suggestions */
    struct pmap seen;     /* untracked objects already looked at */
    pyobj *want;          /* --addr: not dereferenced until found live */
    int found, stop;
    long stop_node;       /* chain: the module that ended the search */
};

static int is_module_obj(pyobj *o) { return is_sub(OB_TYPE(o), api.module_t); }

/* The node of addr, created at depth (index into nodes), or -1. */
static long br_node(struct br *b, pyobj *o, uint32_t depth, uint32_t parent, int module)
{
    uint32_t *ix = pm_get(&b->index, (uintptr_t)o);
    struct node *n;
    if (ix) return *ix;
    if (b->nn >= b->max_nodes) return -1;
    if (b->nn == b->ncap) {
        size_t nc = b->ncap ? b->ncap * 2 : 256;
        struct node *nv = realloc(b->nodes, nc * sizeof *nv);
        if (!nv) {
            b->failed = 1;
            return -1;
        }
        b->nodes = nv;
        b->ncap = nc;
    }
    if (pm_put(&b->index, (uintptr_t)o, (uint32_t)b->nn) < 0) {
        b->failed = 1;
        return -1;
    }
    n = &b->nodes[b->nn];
    memset(n, 0, sizeof *n);
    n->addr = (uintptr_t)o;
    n->depth = depth;
    n->parent = parent;
    n->module = (uint8_t)module;
    return (long)b->nn++;
}

static int br_edge(struct br *b, uint32_t src, uint32_t dst)
{
    if (b->ne == b->ecap) {
        size_t nc = b->ecap ? b->ecap * 2 : 256;
        struct edge *nv = realloc(b->edges, nc * sizeof *nv);
        if (!nv) return -1;
        b->edges = nv;
        b->ecap = nc;
    }
    b->edges[b->ne].src = src;
    b->edges[b->ne].dst = dst;
    b->ne++;
    return 0;
}

/* --- start objects */

static int name_matches(char *tp, const char *want)
{
    struct sb s = {.n = 0};
    const char *dot;
    type_short(tp, &s);
    if (!strcmp(s.buf, want) || (TP_NAME(tp) && !strcmp(TP_NAME(tp), want))) return 1;
    if ((dot = strrchr(want, '.')) && !strcmp(s.buf, dot + 1)) {
        struct sb m = {.n = 0};
        type_module(tp, &m);
        return strlen(m.buf) == (size_t)(dot - want) && !strncmp(m.buf, want, (size_t)(dot - want));
    }
    return 0;
}

/* Does tp match the requested name? Cached per type: the type table of a
 * backrefs request uses tinfo.bytes as 1 = no, 2 = yes. */
static int type_wanted(struct br *b, char *tp)
{
    struct tinfo *t = tt_get(&b->tt, tp);
    if (!t) {
        b->failed = 1;
        return 0;
    }
    if (t->count == 0) t->bytes = (uint64_t)name_matches(tp, b->req->type_name) + 1;
    t->count++;
    return t->bytes == 2;
}

static void br_start(struct br *b, pyobj *o)
{
    b->matched++;
    if (b->nn < b->max_start) {
        long ix = br_node(b, o, 0, UINT32_MAX, is_module_obj(o));
        if (ix >= 0) b->nodes[ix].start = 1;
    }
}

static int find_visit(pyobj *r, void *arg)
{
    struct br *b = arg;
    char *tp;
    int rc;
    if (!r) return 0;
    tp = OB_TYPE(r);
    if ((TP_FLAGS(tp) & F_HAVE_GC) && obj_is_gc(tp, r) && GC_NEXT(r)) return 0;
    rc = pm_put(&b->seen, (uintptr_t)r, 0);
    if (rc < 0) b->failed = 1;
    if (rc <= 0) return b->failed;
    if (type_wanted(b, tp)) br_start(b, r);
    return b->failed;
}

/* Untracked objects are found as referents of tracked ones (and of untracked
 * containers, which hold only untracked objects and are rare: not followed). */
static int find_untracked_one(pyobj *o, void *arg)
{
    struct br *b = arg;
    traverse_fn tr = TP_TRAVERSE(OB_TYPE(o));
    if (tr) tr(o, find_visit, b);
    return b->failed;
}

static int find_untracked(struct br *b)
{
    if (pm_init(&b->seen, 1 << 16, 0) < 0) return -1;
    heap_walk(&b->heap, find_untracked_one, b);
    return b->failed ? -1 : 0;
}

static int find_typed_one(pyobj *o, void *arg)
{
    struct br *b = arg;
    if (type_wanted(b, OB_TYPE(o))) br_start(b, o);
    return b->failed;
}

static int lev_cmp(const void *a, const void *b)
{
    const int *x = a, *y = b;
    return x[0] != y[0] ? x[0] - y[0] : x[1] - y[1];
}

static int lev_distance(const char *a, const char *b)
{
    int la = (int)strlen(a), lb = (int)strlen(b), row[128];
    if (la > 120 || lb > 120) return 1000;
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int prev = row[0], tmp;
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int ca = a[i - 1], cb = b[j - 1];
            if (ca >= 'A' && ca <= 'Z') ca += 32;
            if (cb >= 'A' && cb <= 'Z') cb += 32;
            tmp = row[j];
            row[j] = prev + (ca != cb);
            if (row[j - 1] + 1 < row[j]) row[j] = row[j - 1] + 1;
            if (tmp + 1 < row[j]) row[j] = tmp + 1;
            prev = tmp;
        }
    }
    return row[lb];
}

static int ci_contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    if (n < 3) return 0;
    for (; *hay; hay++)
        if (!strncasecmp(hay, needle, n)) return 1;
    return 0;
}

/* Up to 5 type names near want, best first, into the reply and err. */
static void suggest(struct br *b, Memprof__BackrefsReply *r, char *err)
{
    const char *want = b->req->type_name;
    const char *dot = strrchr(want, '.');
    int (*cand)[2] = calloc(b->tt.n + 1, sizeof *cand);
    size_t nc = 0, len;
    char names[5][128];
    int nnames = 0;
    if (dot) want = dot + 1;
    for (size_t i = 0; cand && i < b->tt.n; i++) {
        struct sb s = {.n = 0};
        int d, lim = (int)strlen(want) / 3;
        type_short(b->tt.v[i].tp, &s);
        d = lev_distance(want, s.buf);
        if (lim < 2) lim = 2;
        /* a name containing the other counts when they are of comparable length */
        if (d <= lim || (ci_contains(s.buf, want) && strlen(s.buf) <= 2 * strlen(want)) ||
            (ci_contains(want, s.buf) && 2 * strlen(s.buf) >= strlen(want))) {
            cand[nc][0] = d;
            cand[nc][1] = (int)i;
            nc++;
        }
    }
    if (cand) qsort(cand, nc, sizeof *cand, lev_cmp);
    for (size_t i = 0; i < nc && nnames < 5; i++) {
        struct sb s = {.n = 0};
        int dup = 0;
        type_short(b->tt.v[cand[i][1]].tp, &s);
        for (int j = 0; j < nnames; j++) dup |= !strcmp(names[j], s.buf);
        if (!dup) snprintf(names[nnames++], sizeof names[0], "%.120s", s.buf);
    }
    free(cand);
    r->suggestions = calloc((size_t)nnames + 1, sizeof *r->suggestions);
    for (int i = 0; r->suggestions && i < nnames; i++)
        if ((r->suggestions[r->n_suggestions] = strdup(names[i]))) r->n_suggestions++;
    mp_err(err, "no objects of type '%s'", b->req->type_name);
    for (int i = 0; i < nnames; i++) {
        len = strlen(err);
        snprintf(err + len, MP_ERRLEN - len, "%s%s", i ? ", " : " (did you mean ", names[i]);
    }
    if (nnames) {
        len = strlen(err);
        snprintf(err + len, MP_ERRLEN - len, "?)");
    }
}

/* The objects to start from. An address only becomes a node here: the first
 * level pass finds out whether it is a live object (see level_one). */
static int find_starts(struct br *b, Memprof__BackrefsReply *r, char *err)
{
    if (b->req->addr) {
        b->want = (pyobj *)(uintptr_t)b->req->addr;
        b->matched = 1;
        if (br_node(b, b->want, 0, UINT32_MAX, 0) < 0) goto oom;
        b->nodes[0].start = 1;
        return 0;
    }
    if (!b->req->type_name || !b->req->type_name[0]) {
        mp_err(err, "backrefs: give a type name or an address");
        return -1;
    }
    heap_walk(&b->heap, find_typed_one, b);
    if (!b->matched && find_untracked(b) < 0) goto oom;
    if (b->failed) goto oom;
    if (!b->matched) {
        suggest(b, r, err);
        return -1;
    }
    return 0;
oom:
    mp_err(err, "backrefs: out of memory");
    return -1;
}

/* --- one heap pass per level */

static int level_visit(pyobj *r, void *arg)
{
    struct br *b = arg;
    uint32_t *ix;
    struct node *t;
    long s;
    uint32_t ti;
    if (!r || !(ix = pm_get(&b->frontier, (uintptr_t)r))) return 0;
    ti = *ix;
    t = &b->nodes[ti];
    if (r == b->want) b->found = 1; /* referenced by a live object: live */
    if (t->last_src == (uintptr_t)b->cur) return 0;
    t->last_src = (uintptr_t)b->cur;
    t->nref++;
    if (!b->chain && t->kept >= b->too_many) {
        t->skipped++;
        return 0;
    }
    s = pm_get(&b->index, (uintptr_t)b->cur) ? (long)*pm_get(&b->index, (uintptr_t)b->cur)
                                              : br_node(b, b->cur, b->nodes[ti].depth + 1, ti,
                                                        is_module_obj(b->cur));
    if (s < 0) {
        b->nodes[ti].skipped++;
        return b->failed;
    }
    b->nodes[ti].kept++;
    if (!b->chain && br_edge(b, (uint32_t)s, ti) < 0) b->failed = 1;
    /* a chain ends at the first module found: any is at the shortest distance */
    if (b->chain && b->nodes[s].module && !b->nodes[s].start) {
        b->stop = 1;
        b->stop_node = s;
    }
    return b->failed || b->stop;
}

static int level_one(pyobj *o, void *arg)
{
    struct br *b = arg;
    traverse_fn tr = TP_TRAVERSE(OB_TYPE(o));
    if (o == b->want) b->found = 1; /* a tracked object: live */
    if (!tr) return 0;
    b->cur = o;
    tr(o, level_visit, b);
    return b->failed || b->stop;
}

/* Find the referrers of every node at depth d (not modules) in one pass over
 * the tracked objects. Returns the number of frontier nodes, or -1. */
static long level_pass(struct br *b, uint32_t d)
{
    long nf = 0;
    pm_free(&b->frontier);
    if (pm_init(&b->frontier, 64, 1) < 0) return -1;
    for (size_t i = 0; i < b->nn; i++) {
        struct node *n = &b->nodes[i];
        if (n->depth != d || (n->module && !n->start)) continue;
        if (pm_put(&b->frontier, n->addr, (uint32_t)i) < 0) return -1;
        n->last_src = 0;
        nf++;
    }
    if (!nf) return 0;
    heap_walk(&b->heap, level_one, b);
    return b->failed ? -1 : nf;
}

/* After the first pass: an address nothing refers to and that is not a
 * tracked object is not an object we can vouch for; never read it. */
static int check_want(struct br *b, char *err)
{
    if (!b->want) return 0;
    if (!b->found) {
        mp_err(err, "0x%" PRIx64 ": not a live Python object (not a tracked object nor referenced by one)",
               b->req->addr);
        return -1;
    }
    b->nodes[0].module = (uint8_t)is_module_obj(b->want);
    b->want = NULL;
    return 0;
}

static int graph_search(struct br *b, char *err)
{
    double t0 = mp_now();
    for (uint32_t d = 0; d < b->max_depth; d++) {
        long nf = level_pass(b, d);
        if (nf < 0) {
            mp_err(err, "backrefs: out of memory");
            return -1;
        }
        if (check_want(b, err) < 0) return -1;
        if (!nf) break;
        if (mp_now() - t0 > BUDGET_S) break; /* draw what we have */
    }
    return 0;
}

/* BFS back from the start to the nearest module; a node nothing refers to
 * (held by a running frame, C code or the interpreter) is the fallback root. */
static long chain_search(struct br *b, char *err)
{
    double t0 = mp_now();
    long root = -1;
    for (uint32_t d = 0; d < b->max_depth; d++) {
        size_t before = b->nn;
        long nf = level_pass(b, d);
        if (nf < 0) {
            mp_err(err, "chain: out of memory");
            return -1;
        }
        if (check_want(b, err) < 0) return -1;
        if (b->stop) return b->stop_node;
        for (size_t i = 0; i < before; i++)
            if (b->nodes[i].depth == d && !b->nodes[i].nref && root < 0) root = (long)i;
        for (size_t i = before; i < b->nn; i++)
            if (b->nodes[i].module) return (long)i;
        if (!nf || b->nn == before) break;
        if (b->nn >= b->max_nodes) {
            mp_err(err, "chain: gave up after %zu objects without reaching a module", b->nn);
            return -1;
        }
        if (mp_now() - t0 > BUDGET_S) {
            mp_err(err, "chain: gave up after %.0f s (%u levels) without reaching a module", BUDGET_S, d + 1);
            return -1;
        }
    }
    if (root < 0) {
        mp_err(err, "chain: no module or root found within %u references", b->max_depth);
        return -1;
    }
    return root;
}

/* --- reply */

static Memprof__GraphNode *reply_node(struct node *n)
{
    Memprof__GraphNode *g = calloc(1, sizeof *g);
    struct sb ty = {.n = 0}, lb = {.n = 0};
    pyobj *o = (pyobj *)n->addr;
    if (!g) return NULL;
    memprof__graph_node__init(g);
    type_short(OB_TYPE(o), &ty);
    obj_label(o, &lb);
    g->addr = n->addr;
    g->type_name = strdup(ty.buf);
    g->label = strdup(lb.buf);
    g->depth = n->depth;
    g->start = n->start;
    g->is_module = n->module;
    if (!g->type_name || !g->label) {
        free(g->type_name);
        free(g->label);
        free(g);
        return NULL;
    }
    return g;
}

static Memprof__GraphEdge *reply_edge(struct node *s, struct node *d)
{
    Memprof__GraphEdge *e = calloc(1, sizeof *e);
    struct sb lb = {.n = 0};
    if (!e) return NULL;
    memprof__graph_edge__init(e);
    edge_label((pyobj *)s->addr, (pyobj *)d->addr, &lb);
    e->src = s->addr;
    e->dst = d->addr;
    e->label = strdup(lb.buf);
    if (!e->label) {
        free(e);
        return NULL;
    }
    return e;
}

static int graph_reply(struct br *b, Memprof__BackrefsReply *r)
{
    size_t more = 0;
    for (size_t i = 0; i < b->nn; i++) more += b->nodes[i].skipped > 0;
    r->nodes = calloc(b->nn + more + 1, sizeof *r->nodes);
    r->edges = calloc(b->ne + 1, sizeof *r->edges);
    if (!r->nodes || !r->edges) return -1;
    for (size_t i = 0; i < b->nn; i++) {
        if (!(r->nodes[r->n_nodes] = reply_node(&b->nodes[i]))) return -1;
        r->n_nodes++;
    }
    for (size_t i = 0; i < b->nn; i++) {
        Memprof__GraphNode *g;
        if (!b->nodes[i].skipped) continue;
        if (!(g = calloc(1, sizeof *g))) return -1;
        memprof__graph_node__init(g);
        g->addr = b->nodes[i].addr;
        g->depth = b->nodes[i].depth + 1;
        g->more = b->nodes[i].skipped;
        r->nodes[r->n_nodes++] = g;
    }
    for (size_t i = 0; i < b->ne; i++) {
        if (!(r->edges[r->n_edges] = reply_edge(&b->nodes[b->edges[i].src], &b->nodes[b->edges[i].dst])))
            return -1;
        r->n_edges++;
    }
    return 0;
}

static int chain_reply(struct br *b, long root, Memprof__BackrefsReply *r)
{
    size_t len = 0;
    for (long i = root; i >= 0 && len < b->nn; i = b->nodes[i].parent == UINT32_MAX ? -1 : (long)b->nodes[i].parent)
        len++;
    r->nodes = calloc(len + 1, sizeof *r->nodes);
    r->edges = calloc(len + 1, sizeof *r->edges);
    r->chain = calloc(len + 1, sizeof *r->chain);
    if (!r->nodes || !r->edges || !r->chain) return -1;
    for (long i = root, prev = -1; i >= 0 && r->n_chain < len;
         prev = i, i = b->nodes[i].parent == UINT32_MAX ? -1 : (long)b->nodes[i].parent) {
        if (!(r->nodes[r->n_nodes] = reply_node(&b->nodes[i]))) return -1;
        r->n_nodes++;
        r->chain[r->n_chain++] = b->nodes[i].addr;
        if (prev >= 0) {
            if (!(r->edges[r->n_edges] = reply_edge(&b->nodes[prev], &b->nodes[i]))) return -1;
            r->n_edges++;
        }
    }
    return 0;
}

static void br_free(struct br *b)
{
    heap_close(&b->heap);
    free(b->nodes);
    free(b->edges);
    pm_free(&b->index);
    pm_free(&b->frontier);
    pm_free(&b->seen);
    tt_free(&b->tt);
}

static uint32_t clamp(uint32_t v, uint32_t dflt, uint32_t max) { return !v ? dflt : v > max ? max : v; }

int backrefs_handle(const Memprof__BackrefsRequest *req, Memprof__AgentReply *reply, char *err)
{
    struct br b;
    Memprof__BackrefsReply *r;
    int rc = -1;
    if (api_load(err) < 0) return -1;
    if (!(r = calloc(1, sizeof *r))) {
        mp_err(err, "backrefs: out of memory");
        return -1;
    }
    memprof__backrefs_reply__init(r);
    reply->body_case = MEMPROF__AGENT_REPLY__BODY_BACKREFS;
    reply->backrefs = r;
    memset(&b, 0, sizeof b);
    b.req = req;
    b.chain = req->chain_only;
    b.max_depth = clamp(req->max_depth, b.chain ? 20 : 3, b.chain ? 100 : 20);
    b.too_many = clamp(req->too_many, 10, 1000);
    b.max_start = clamp(req->max_start, 1, 100);
    b.max_nodes = b.chain ? MAX_CHAIN_NODES : MAX_GRAPH_NODES;
    if (tt_init(&b.tt) < 0 || pm_init(&b.index, 256, 1) < 0) {
        mp_err(err, "backrefs: out of memory");
        goto out;
    }
    if (heap_open(&b.heap, err) < 0) goto out;
    if (find_starts(&b, r, err) < 0) goto out;
    r->matched = b.matched;
    if (b.chain) {
        long root = chain_search(&b, err);
        if (root < 0 || chain_reply(&b, root, r) < 0) goto fail;
    } else {
        if (graph_search(&b, err) < 0 || graph_reply(&b, r) < 0) goto fail;
    }
    rc = 0;
    goto out;
fail:
    if (!err[0] || b.failed) mp_err(err, "backrefs: out of memory");
out:
    br_free(&b);
    return rc;
}

void backrefs_free(Memprof__AgentReply *reply)
{
    Memprof__BackrefsReply *r;
    if (reply->body_case != MEMPROF__AGENT_REPLY__BODY_BACKREFS || !(r = reply->backrefs)) return;
    for (size_t i = 0; i < r->n_nodes; i++) {
        Memprof__GraphNode *g = r->nodes[i];
        if (g->type_name != protobuf_c_empty_string) free(g->type_name);
        if (g->label != protobuf_c_empty_string) free(g->label);
        free(g);
    }
    for (size_t i = 0; i < r->n_edges; i++) {
        if (r->edges[i]->label != protobuf_c_empty_string) free(r->edges[i]->label);
        free(r->edges[i]);
    }
    for (size_t i = 0; i < r->n_suggestions; i++) free(r->suggestions[i]);
    free(r->nodes);
    free(r->edges);
    free(r->suggestions);
    free(r->chain);
    free(r);
    reply->backrefs = NULL;
    reply->body_case = MEMPROF__AGENT_REPLY__BODY__NOT_SET;
}
