/* backrefs.c -- who holds an object: back-reference graphs (objgraph's show_backrefs) and the
 * shortest reference chain to a module (find_backref_chain), built level by level with one heap
 * pass per level, within a GIL-time budget. Each pass is sliced (heap_walk_sliced: the target runs
 * between slices); every object that becomes a node is held by a reference until the reply is
 * built, so no address kept across a slice dangles or is reused.
 *
 * What a sliced search finds: each edge existed when its referrer was traversed, with the GIL
 * held; a level's referrers are the objects tracked when its pass began, alive when the pass
 * reached them, that referred to a node then. Missed: objects created during a pass, moved by a
 * collection the target ran meanwhile, or references made to a node after its referrer was
 * passed. A chain's links each existed, though maybe not all at one instant. On a heap that does
 * not change, the same nodes and edges as one stop-the-world search; long lists (more than
 * BIG_ITEMS items) are searched after the rest of a pass, so which referrers --too-many keeps,
 * which matching objects --max-start samples and which module at the same distance ends a chain
 * may differ. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/gil.h"
#include "agent/heap.h"

/* ---------------------------------------------------------------- backrefs */

struct node {
    uintptr_t addr;
    uintptr_t last_src; /* de-duplicates a referrer visiting the same node twice */
    uint32_t depth, nref, kept, skipped;
    uint32_t parent;    /* chain: the node this one was found as a referrer of */
    uint8_t start, module;
    uint8_t held;       /* we hold a reference to it (all but an --addr not yet found live) */
};

struct edge {
    uint32_t src, dst;
};

struct br {
    const Memprof__BackrefsRequest *req;
    struct heap heap;
    struct heap_big big;  /* long lists met by this pass, searched after it */
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
    struct aset seen;     /* untracked objects already looked at */
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
    if (o != b->want) { /* a live object (the --addr is held once found live: br_found) */
        api.IncRef(o);
        n->held = 1;
    }
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

/* --- sliced passes */

/* The --addr, seen live (tracked, or referred to by a live object): held from now on. */
static void br_found(struct br *b)
{
    if (b->found) return;
    b->found = 1;
    api.IncRef(b->want);
    b->nodes[0].held = 1;
}

/* Grows a map before a slice would have to (rehashing under the GIL is the pause slices avoid). */
static void pm_ahead(struct pmap *m, int *failed)
{
    if (m->keys && !*failed && (m->n + 1) * 20 > (m->mask + 1) * 7 && m->mask + 1 < MAX_SET_SLOTS)
        if (pm_grow(m) < 0) *failed = 1;
}

/* Between slices, without the GIL. */
static void br_off(void *arg)
{
    struct br *b = arg;
    pm_ahead(&b->index, &b->failed);
}

static void big_start(pyobj *o, void *arg) { ((struct br *)arg)->cur = o; }

static int big_after(void *arg)
{
    struct br *b = arg;
    return b->failed || b->stop;
}

/* One pass: fn on every tracked object, in slices, then visit on the items of the long lists fn
 * put aside (as their tp_traverse would). 0, or -1 and err (the GIL lost, a walk failed). */
static int br_pass(struct br *b, heap_fn fn, visit_fn visit, char *err)
{
    int rc = heap_walk_sliced(&b->heap, fn, b, err);
    if (rc >= 0 && visit && !b->failed && !b->stop)
        rc = heap_big_visit(&b->heap, &b->big, big_start, visit, big_after, b, err);
    heap_big_release(&b->big, &b->heap);
    return rc < 0 ? -1 : 0;
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
    rc = as_add(&b->seen, (uintptr_t)r);
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
    if (heap_big_list(o)) {
        if (heap_big_push(&b->big, o) < 0) b->failed = 1;
        return b->failed;
    }
    if (tr) tr(o, find_visit, b);
    return b->failed;
}

static int find_untracked(struct br *b, char *err)
{
    return br_pass(b, find_untracked_one, find_visit, err);
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
        if (lim < 1) lim = 1; /* a third of the letters: "Nope" is not near "type" or "code" */
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
    len = strlen(err);
    snprintf(err + len, MP_ERRLEN - len, "%s", nnames ? "?)" : " (no type of a similar name: memprof types lists them)");
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
    if (br_pass(b, find_typed_one, NULL, err) < 0) return -1;
    if (!b->matched && find_untracked(b, err) < 0) {
        if (!err[0]) goto oom;
        return -1;
    }
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
    if (r == b->want) br_found(b); /* referenced by a live object: live */
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
    if (o == b->want) br_found(b); /* a tracked object: live */
    if (!tr) return 0;
    if (heap_big_list(o)) {
        if (heap_big_push(&b->big, o) < 0) b->failed = 1;
        return b->failed;
    }
    b->cur = o;
    tr(o, level_visit, b);
    return b->failed || b->stop;
}

static int level_frontier(const struct node *n, uint32_t d) { return n->depth == d && !(n->module && !n->start); }

/* Find the referrers of every node at depth d (not modules) in one pass over
 * the tracked objects. Returns the number of frontier nodes, or -1 (err set unless out of memory). */
static long level_pass(struct br *b, uint32_t d, char *err)
{
    long nf = 0;
    pm_free(&b->frontier);
    for (size_t i = 0; i < b->nn; i++) nf += level_frontier(&b->nodes[i], d);
    if (pm_init(&b->frontier, (size_t)nf + 64, 1) < 0) return -1; /* sized: never rehashed in a slice */
    for (size_t i = 0; i < b->nn; i++) {
        struct node *n = &b->nodes[i];
        if (!level_frontier(n, d)) continue;
        if (pm_put(&b->frontier, n->addr, (uint32_t)i) < 0) return -1;
        n->last_src = 0;
    }
    if (!nf) return 0;
    if (br_pass(b, level_one, level_visit, err) < 0) return -1;
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
    for (uint32_t d = 0; d < b->max_depth; d++) {
        long nf = level_pass(b, d, err);
        if (nf < 0) {
            if (!err[0] || b->failed) mp_err(err, "backrefs: out of memory");
            return -1;
        }
        if (check_want(b, err) < 0) return -1;
        if (!nf) break;
        if (heap_gil_s(&b->heap) > BUDGET_S) break; /* draw what we have */
    }
    return 0;
}

/* BFS back from the start to the nearest module; a node nothing refers to
 * (held by a running frame, C code or the interpreter) is the fallback root. */
static long chain_search(struct br *b, char *err)
{
    long root = -1;
    for (uint32_t d = 0; d < b->max_depth; d++) {
        size_t before = b->nn;
        long nf = level_pass(b, d, err);
        if (nf < 0) {
            if (!err[0] || b->failed) mp_err(err, "chain: out of memory");
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
        if (heap_gil_s(&b->heap) > BUDGET_S) {
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

/* Drops the references to the nodes, giving the GIL back between slices (a chain may hold
 * millions), then the types'. Not once the GIL is lost. */
static void br_release(struct br *b)
{
    char err[MP_ERRLEN];
    for (size_t i = 0; i < b->nn && !b->heap.lost; i++) {
        if (b->nodes[i].held) api.DecRef((pyobj *)b->nodes[i].addr);
        b->nodes[i].held = 0;
        if (!(i & 255) && heap_slice_due(&b->heap)) heap_yield(&b->heap, err);
    }
    if (!b->heap.lost) tt_release(&b->tt);
}

static void br_free(struct br *b)
{
    br_release(b);
    heap_big_release(&b->big, &b->heap);
    heap_close(&b->heap);
    gil_free_after(b->nodes);
    gil_free_after(b->edges);
    pm_free_after(&b->index);
    pm_free_after(&b->frontier);
    as_free(&b->seen);
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
    b.tt.hold = 1; /* a type may die between slices, and another be made at its address */
    if (heap_open(&b.heap, err) < 0) goto out;
    heap_set_off(&b.heap, br_off, &b);
    if (find_starts(&b, r, err) < 0) goto out;
    r->matched = b.matched;
    if (b.chain) {
        long root = chain_search(&b, err);
        if (root < 0 || chain_reply(&b, root, r) < 0) goto fail;
    } else {
        if (graph_search(&b, err) < 0 || graph_reply(&b, r) < 0) goto fail;
    }
    heap_slice_stats(&b.heap, &r->slices, &r->gil_max_ms, &r->gil_max_cpu_ms); /* not counting the release */
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
