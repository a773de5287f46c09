/* alloc.c -- allocation data per session: folds the agents' AllocReports into
 * per-stack totals (allocated, freed, live, peak, recent rate) and a bounded
 * history of totals and of the top sites, and answers AllocQuery. Kept after
 * the target exits. */
#include "daemon/alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/logging.h"
#include "daemon/loop.h"
#include "daemon/procinfo.h"
#include "probe/symbolize.h"

#define MAX_IDS 131072         /* the agent caps frames and stacks at 65536 (agent/track.c) */
#define NATIVE_BASE 65536      /* native frames (named here) take ids from here up, below MAX_IDS */
#define MAX_NATIVE_PCS 64      /* per stack */
#define MAX_PROFILED 256   /* @profile'd functions kept per session */
#define HISTORY 600            /* snapshots: one a second for ten minutes */
#define HISTORY_STEP 1.0
#define RUN_HISTORY_STEP 0.1
#define RATE_TAU 2.0           /* seconds: smoothing of rates */
/* Each history point also keeps the live bytes of its HIST_SITES largest sites
 * (site: innermost frame, constructors folded into their caller), so growth by
 * line or function over any window of the history can be computed. Bound per
 * session: HISTORY x HIST_SITES x 8 B = 1.2 MB of sites, plus HISTORY x ~100 B
 * of totals; with the daemon's 64 ended sessions kept (session.c), ~80 MB at
 * most for those. */
#define HIST_SITES 256

struct hsite {
    uint32_t frame;
    float live;
};

struct aframe {
    char *file, *func;
    uint32_t line, first;
    char *module; /* native frames: the module's path */
    uint64_t offset;
};

struct astack {
    uint32_t *frames;
    uint32_t n;
    int defined;
    int native; /* allocations by C code under these Python frames (agent --native) */
    uint32_t *native_frames; /* --native-frames: their native call chain (frame ids), innermost first */
    uint32_t nnative;
};

/* --native-frames: return address -> frame id, and (module, function, file, line) -> frame id */
struct pc_ent {
    uint64_t pc;
    uint32_t id; /* 0: empty */
};
struct natives {
    struct symbolizer *sym;
    int sym_failed;                /* the maps could not be read: no more tries */
    struct pc_ent *pcs;
    size_t pcs_cap, pcs_n;
    uint32_t *by_name;             /* open addressing on the name hash: frame id, 0 empty */
    size_t names_cap;
    uint32_t next;                 /* the next native frame id */
};

struct astat {
    double ab, ac, fb, fc, peak, rate;
};

struct alloc_data {
    struct aframe *frames;
    size_t nframes;            /* highest id + 1 */
    struct astack *stacks;
    struct astat *stats;
    size_t nstacks;
    uint64_t rss, samples, dropped, rate_bytes;
    int exact;
    double first_ts, last_ts, agent_cpu;
    double samples_rate, alloc_rate, overhead, peak_live;
    Memprof__AllocPoint hist[HISTORY];
    struct hsite *hist_sites[HISTORY]; /* the top sites of hist[i], largest first */
    uint16_t hist_nsites[HISTORY];
    size_t hist_head, hist_len;
    double hist_last;
    double hist_step;          /* seconds between points: 1 (attach); memprof run starts at
                                * 0.1 and doubles whenever the history fills (whole run kept) */
    Memprof__AllocFrame **profiled; /* memprof run: @profile'd functions (file, function, first_line) */
    size_t nprofiled;
    struct natives nat;
};

/* Room for n entries: the power of two at or above it (16 at least). */
static size_t room_for(size_t n)
{
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* *n entries become want, zeroed; the array is reallocated only when it outgrows its power of two (ids come
 * one at a time: an exact-mode agent defines ~20,000 frames at once, and a realloc per id copied them all). */
static int grow(void **arr, size_t *n, size_t want, size_t elsize)
{
    void *p = *arr;
    if (want <= *n) return 0;
    if (want > MAX_IDS) return -1;
    if (!p || room_for(want) > room_for(*n)) {
        p = realloc(p, room_for(want) * elsize);
        if (!p) return -1;
    }
    memset((char *)p + *n * elsize, 0, (want - *n) * elsize);
    *arr = p;
    *n = want;
    return 0;
}

static int grow_stacks(struct alloc_data *a, size_t want)
{
    size_t n = a->nstacks;
    if (grow((void **)&a->stacks, &n, want, sizeof *a->stacks) < 0) return -1;
    n = a->nstacks;
    if (grow((void **)&a->stats, &n, want, sizeof *a->stats) < 0) return -1;
    a->nstacks = n;
    return 0;
}

void alloc_free(struct alloc_data *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->nframes; i++) {
        free(a->frames[i].file);
        free(a->frames[i].func);
        free(a->frames[i].module);
    }
    for (size_t i = 0; i < a->nstacks; i++) free(a->stacks[i].frames), free(a->stacks[i].native_frames);
    sym_close(a->nat.sym);
    free(a->nat.pcs);
    free(a->nat.by_name);
    for (size_t i = 0; i < HISTORY; i++) free(a->hist_sites[i]);
    for (size_t i = 0; i < a->nprofiled; i++) {
        free(a->profiled[i]->file);
        free(a->profiled[i]->function);
        free(a->profiled[i]);
    }
    free(a->profiled);
    free(a->frames);
    free(a->stacks);
    free(a->stats);
    free(a);
}

/* ------------------------------------------------------------ native frames */

static uint32_t name_hash(const struct sym_frame *f)
{
    uint32_t h = 2166136261u;
    for (const char *p = f->module; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    for (const char *p = f->func; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    for (const char *p = f->file; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return (h ^ f->line) * 16777619u;
}

/* The frame id of a named native frame (one per distinct name and line), 0 when the ids are used up. */
static uint32_t native_intern(struct alloc_data *a, const struct sym_frame *f)
{
    struct natives *n = &a->nat;
    size_t mask, i;
    uint32_t id;
    if (!n->next) n->next = NATIVE_BASE;
    if ((n->next - NATIVE_BASE + 1) * 2 > n->names_cap) {
        size_t cap = n->names_cap ? n->names_cap * 2 : 1024;
        uint32_t *t = calloc(cap, sizeof *t);
        if (!t) return 0;
        for (size_t k = 0; k < n->names_cap; k++) {
            struct sym_frame g;
            const struct aframe *e;
            if (!n->by_name[k]) continue;
            e = &a->frames[n->by_name[k]];
            snprintf(g.module, sizeof g.module, "%s", e->module);
            snprintf(g.func, sizeof g.func, "%s", e->func);
            snprintf(g.file, sizeof g.file, "%s", e->file);
            g.line = e->line;
            for (i = name_hash(&g) & (cap - 1); t[i]; i = (i + 1) & (cap - 1)) {}
            t[i] = n->by_name[k];
        }
        free(n->by_name);
        n->by_name = t;
        n->names_cap = cap;
    }
    mask = n->names_cap - 1;
    for (i = name_hash(f) & mask; (id = n->by_name[i]) != 0; i = (i + 1) & mask) {
        const struct aframe *e = &a->frames[id];
        if (e->line == f->line && !strcmp(e->func, f->func) && !strcmp(e->file, f->file) && !strcmp(e->module, f->module))
            return id;
    }
    id = n->next;
    if (grow((void **)&a->frames, &a->nframes, (size_t)id + 1, sizeof *a->frames) < 0) return 0;
    a->frames[id] = (struct aframe){strdup(f->file), strdup(f->func), f->line, 0, strdup(f->module), f->offset};
    if (!a->frames[id].file || !a->frames[id].func || !a->frames[id].module) {
        free(a->frames[id].file), free(a->frames[id].func), free(a->frames[id].module);
        a->frames[id] = (struct aframe){0};
        return 0;
    }
    n->by_name[i] = id;
    n->next++;
    return id;
}

/* The frame id of a return address in pid (cached per address), 0 when it cannot be had. */
static uint32_t native_frame(struct alloc_data *a, pid_t pid, uint64_t pc)
{
    struct natives *n = &a->nat;
    struct sym_frame f;
    size_t mask, i;
    uint32_t id;
    if (!n->sym && !n->sym_failed && !(n->sym = sym_open(pid, 1))) {
        n->sym_failed = 1;
        server_log("pid %d: its native frames cannot be named (its /proc/PID/maps is not readable)", (int)pid);
    }
    if (!n->sym) return 0;
    if ((n->pcs_n + 1) * 2 > n->pcs_cap) {
        size_t cap = n->pcs_cap ? n->pcs_cap * 2 : 4096;
        struct pc_ent *t = calloc(cap, sizeof *t);
        if (!t) return 0;
        for (size_t k = 0; k < n->pcs_cap; k++) {
            if (!n->pcs[k].id) continue;
            for (i = (n->pcs[k].pc * 0x9E3779B97F4A7C15ull >> 32) & (cap - 1); t[i].id; i = (i + 1) & (cap - 1)) {}
            t[i] = n->pcs[k];
        }
        free(n->pcs);
        n->pcs = t;
        n->pcs_cap = cap;
    }
    mask = n->pcs_cap - 1;
    for (i = (pc * 0x9E3779B97F4A7C15ull >> 32) & mask; n->pcs[i].id; i = (i + 1) & mask)
        if (n->pcs[i].pc == pc) return n->pcs[i].id;
    sym_resolve(n->sym, pc, 1, &f);
    if (!(id = native_intern(a, &f))) return 0;
    n->pcs[i] = (struct pc_ent){pc, id};
    n->pcs_n++;
    return id;
}

void alloc_session_ended(struct session *s)
{
    if (!s->alloc) return;
    sym_close(s->alloc->nat.sym); /* its open module files */
    s->alloc->nat.sym = NULL;
    s->alloc->nat.sym_failed = 1;
}

static void define(struct alloc_data *a, const Memprof__AllocReport *r, pid_t pid)
{
    for (size_t i = 0; i < r->n_frames; i++) {
        const Memprof__AllocFrame *f = r->frames[i];
        if (f->id >= NATIVE_BASE) continue; /* the agent's ids stay below NATIVE_BASE */
        if (grow((void **)&a->frames, &a->nframes, (size_t)f->id + 1, sizeof *a->frames) < 0) continue;
        free(a->frames[f->id].file);
        free(a->frames[f->id].func);
        a->frames[f->id] = (struct aframe){strdup(f->file ? f->file : "?"), strdup(f->function ? f->function : "?"),
                                           f->line, f->first_line, NULL, 0};
    }
    for (size_t i = 0; i < r->n_stacks; i++) {
        const Memprof__AllocStack *s = r->stacks[i];
        struct astack *st;
        if (grow_stacks(a, (size_t)s->id + 1) < 0 || s->n_frames > 4096) continue;
        st = &a->stacks[s->id];
        free(st->frames);
        st->frames = malloc((s->n_frames ? s->n_frames : 1) * sizeof *st->frames);
        st->n = 0;
        if (!st->frames) continue;
        for (size_t k = 0; k < s->n_frames; k++)
            if (s->frames[k] < a->nframes && s->frames[k] < NATIVE_BASE) st->frames[st->n++] = s->frames[k];
        st->defined = 1;
        st->native = s->native;
        free(st->native_frames);
        st->native_frames = NULL;
        st->nnative = 0;
        if (s->n_native_pcs && (st->native_frames = malloc(s->n_native_pcs * sizeof *st->native_frames)))
            for (size_t k = 0; k < s->n_native_pcs && k < MAX_NATIVE_PCS; k++) {
                uint32_t id = native_frame(a, pid, s->native_pcs[k]);
                if (id) st->native_frames[st->nnative++] = id;
            }
    }
}

/* Constructors and comprehensions, by a (qualified) name's last part. */
static int is_folded(const char *func)
{
    const char *d = strrchr(func, '.'), *f = d ? d + 1 : func;
    return !strcmp(f, "__init__") || !strcmp(f, "__new__") || !strcmp(f, "__post_init__") ||
           !strcmp(f, "<listcomp>") || !strcmp(f, "<dictcomp>") || !strcmp(f, "<setcomp>") || !strcmp(f, "<genexpr>");
}

/* The site of a stack: its innermost frame of the user's code (not library
 * code), or for what a constructor allocates, the frame that created the object
 * (whoever keeps it holds it), and for a comprehension's frame (before 3.12)
 * the line that wrote it. */
static int stack_site(const struct alloc_data *a, const struct astack *st, uint32_t *site)
{
    uint32_t own = 0;
    if (!st->defined || !st->n) return -1;
    /* library code's allocations: the innermost line of the user's code under it, if any (as memprof top) */
    while (own < st->n && a->frames[st->frames[own]].file && mp_is_library_file(a->frames[st->frames[own]].file)) own++;
    if (own == st->n) own = 0;
    while (own + 1 < st->n && a->frames[st->frames[own]].func && is_folded(a->frames[st->frames[own]].func)) own++;
    *site = st->frames[own];
    return 0;
}

static int hsite_cmp(const void *x, const void *y)
{
    const struct hsite *p = x, *q = y;
    return p->live < q->live ? 1 : p->live > q->live ? -1 : (p->frame > q->frame) - (p->frame < q->frame);
}

/* The HIST_SITES sites holding the most live bytes now; *n of them. */
static struct hsite *top_sites(const struct alloc_data *a, size_t *n)
{
    double *by_frame = calloc(a->nframes + 1, sizeof *by_frame);
    struct hsite *all = NULL, *top;
    size_t count = 0;
    uint32_t site;
    *n = 0;
    if (!by_frame) return NULL;
    for (size_t i = 0; i < a->nstacks; i++)
        if (stack_site(a, &a->stacks[i], &site) == 0) by_frame[site] += a->stats[i].ab - a->stats[i].fb;
    for (size_t f = 0; f < a->nframes; f++) count += by_frame[f] >= 0.5;
    if (count && (all = malloc(count * sizeof *all))) {
        count = 0;
        for (size_t f = 0; f < a->nframes; f++)
            if (by_frame[f] >= 0.5) all[count++] = (struct hsite){(uint32_t)f, (float)by_frame[f]};
        qsort(all, count, sizeof *all, hsite_cmp);
        if (count > HIST_SITES) count = HIST_SITES;
        top = realloc(all, count * sizeof *top);
        if (top) all = top;
        *n = count;
    }
    free(by_frame);
    return all;
}

/* memprof run: keep every other point, so the history spans the whole run at
 * half the resolution. A run's ring never wraps (it is halved when full), so
 * hist_head is 0 and moving point i to keep <= i in place is safe. */
static void history_halve(struct alloc_data *a)
{
    size_t keep = 0;
    for (size_t i = 0; i < a->hist_len; i++) {
        size_t from = (a->hist_head + i) % HISTORY;
        if (i % 2 && i + 1 != a->hist_len) { /* the odd ones go; the newest stays */
            free(a->hist_sites[from]);
            a->hist_sites[from] = NULL;
            continue;
        }
        Memprof__AllocPoint p = a->hist[from];
        struct hsite *sites = a->hist_sites[from];
        uint16_t n = a->hist_nsites[from];
        a->hist_sites[from] = NULL;
        a->hist[keep] = p;
        a->hist_sites[keep] = sites;
        a->hist_nsites[keep] = n;
        keep++;
    }
    a->hist_head = 0;
    a->hist_len = keep;
    a->hist_step *= 2;
}

static void history_push(struct alloc_data *a, double t, double live, double native, double allocated, int run,
                         int force)
{
    Memprof__AllocPoint *p;
    size_t slot, nsites;
    double kept = 0;
    if (!a->hist_step) a->hist_step = run ? RUN_HISTORY_STEP : HISTORY_STEP;
    if (a->hist_len && t - a->hist_last < a->hist_step && !force) return;
    if (run && a->hist_len == HISTORY) history_halve(a);
    a->hist_last = t;
    slot = (a->hist_head + a->hist_len) % HISTORY;
    p = &a->hist[slot];
    if (a->hist_len < HISTORY) a->hist_len++;
    else a->hist_head = (a->hist_head + 1) % HISTORY;
    memprof__alloc_point__init(p);
    p->t = t;
    p->live_bytes = live;
    p->native_live_bytes = native;
    p->alloc_bytes = allocated;
    p->rss_bytes = a->rss;
    p->samples = a->samples;
    free(a->hist_sites[slot]);
    a->hist_sites[slot] = top_sites(a, &nsites);
    a->hist_nsites[slot] = (uint16_t)nsites;
    for (size_t i = 0; i < nsites; i++) kept += a->hist_sites[slot][i].live;
    p->other_live_bytes = live - kept;
}

/* memprof run: keep the functions the program decorated with @profile. */
static void profiled_add(struct alloc_data *a, const Memprof__AllocReport *r)
{
    for (size_t i = 0; i < r->n_profiled && a->nprofiled < MAX_PROFILED; i++) {
        const Memprof__AllocFrame *f = r->profiled[i];
        Memprof__AllocFrame *c, **v;
        if (!f->file || !f->function) continue;
        if (!(v = realloc(a->profiled, (a->nprofiled + 1) * sizeof *v))) return;
        a->profiled = v;
        if (!(c = calloc(1, sizeof *c))) return;
        memprof__alloc_frame__init(c);
        c->file = strdup(f->file);
        c->function = strdup(f->function);
        c->first_line = c->line = f->first_line;
        if (!c->file || !c->function) {
            free(c->file), free(c->function), free(c);
            return;
        }
        a->profiled[a->nprofiled++] = c;
    }
}

void alloc_report(struct session *s, const Memprof__AllocReport *r)
{
    struct alloc_data *a = s->alloc;
    double dt, k, live = 0, native = 0, allocated = 0, dalloc = 0;
    if (!a) {
        a = s->alloc = calloc(1, sizeof *a);
        if (!a) return;
        a->first_ts = r->timestamp;
        a->last_ts = r->timestamp;
    }
    define(a, r, s->pid);
    dt = r->timestamp - a->last_ts;
    k = dt > 0 ? 1 - exp(-dt / RATE_TAU) : 0;
    for (size_t i = 0; i < a->nstacks; i++) a->stats[i].rate *= 1 - k; /* decay; refreshed below */
    for (size_t i = 0; i < r->n_deltas; i++) {
        const Memprof__AllocDelta *d = r->deltas[i];
        struct astat *st;
        if (grow_stacks(a, (size_t)d->stack + 1) < 0) continue;
        st = &a->stats[d->stack];
        st->ab += d->alloc_bytes;
        st->ac += d->alloc_count;
        st->fb += d->free_bytes;
        st->fc += d->free_count;
        if (st->ab - st->fb > st->peak) st->peak = st->ab - st->fb;
        if (d->peak_live > st->peak) st->peak = d->peak_live; /* the agent's, between reports too */
        if (dt > 0) st->rate += k * d->alloc_bytes / dt;
        dalloc += d->alloc_bytes;
    }
    for (size_t i = 0; i < a->nstacks; i++) {
        live += a->stats[i].ab - a->stats[i].fb;
        if (a->stacks[i].native) native += a->stats[i].ab - a->stats[i].fb;
        allocated += a->stats[i].ab;
    }
    if (live > a->peak_live) a->peak_live = live;
    if (dt > 0) {
        a->alloc_rate += k * (dalloc / dt - a->alloc_rate);
        a->samples_rate += k * ((double)(r->samples - a->samples) / dt - a->samples_rate);
        a->overhead += k * ((r->agent_cpu_s - a->agent_cpu) / dt - a->overhead);
    }
    a->samples = r->samples;
    a->agent_cpu = r->agent_cpu_s;
    a->dropped = r->dropped;
    a->rss = r->rss_bytes;
    a->exact = r->exact;
    a->rate_bytes = r->sample_rate;
    a->last_ts = r->timestamp;
    history_push(a, r->timestamp, live, native, allocated, s->run != 0, r->final);
    profiled_add(a, r);
}

/* ------------------------------------------------------------ query */

static void reply_error(struct conn *c, Memprof__ErrorReply__Code code, const char *msg)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AllocData d = MEMPROF__ALLOC_DATA__INIT;
    d.error = (char *)msg;
    d.code = code;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_DATA;
    env.alloc_data = &d;
    conn_send(c, &env);
}

/* The session a query addresses: by session id when given (an ended session
 * stays reachable after its pid is reused), else pid's. NULL with err set and *code its category. */
static struct session *query_session(struct conn *c, const Memprof__AllocQuery *q, char *err,
                                     Memprof__ErrorReply__Code *code)
{
    struct session *s;
    *code = MEMPROF__ERROR_REPLY__CODE__NOT_ATTACHED;
    if (q->session_id) {
        s = session_by_id(q->session_id);
        if (!s || (c->peer_uid != 0 && c->peer_uid != s->uid)) {
            mp_err(err, "no session %u (memprof status lists them)", q->session_id);
            return NULL;
        }
        if (q->pid && q->pid != s->pid) {
            mp_err(err, "session %u is of pid %d, not %d", q->session_id, (int)s->pid, (int)q->pid);
            *code = MEMPROF__ERROR_REPLY__CODE__BAD_REQUEST;
            return NULL;
        }
        if (s->state == SESS_ATTACHING || (s->state != SESS_ATTACHED && !s->alloc)) {
            mp_err(err, "session %u (pid %d, %s): no allocation data", q->session_id, (int)s->pid,
                   session_state_name(s->state));
            return NULL;
        }
        return s;
    }
    s = session_find(q->pid);
    if (proc_may_access(c->peer_uid, q->pid, err) < 0 && !(s && (c->peer_uid == 0 || c->peer_uid == s->uid))) {
        *code = proc_error_code(q->pid, MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED);
        return NULL;
    }
    if (!s || s->state == SESS_DETACHED || s->state == SESS_LOST || (s->state != SESS_ATTACHED && !s->alloc)) {
        mp_err(err, "pid %d: not attached (attach first: memprofd attach --pid %d)", (int)q->pid, (int)q->pid);
        return NULL;
    }
    return s;
}

static int history_fill(const struct alloc_data *a, struct history_out *h)
{
    size_t total = 0, k = 0;
    for (size_t i = 0; i < a->hist_len; i++) total += a->hist_nsites[(a->hist_head + i) % HISTORY];
    if (!WIRE_ARRAYS(h->points, h->ptrs, a->hist_len) || !WIRE_ARRAYS(h->sites, h->site_ptrs, total)) return -1;
    for (size_t i = 0; i < a->hist_len; i++) {
        size_t slot = (a->hist_head + i) % HISTORY;
        Memprof__AllocPoint *p = &h->points[i];
        *p = a->hist[slot];
        p->sites = &h->site_ptrs[k];
        p->n_sites = a->hist_nsites[slot];
        for (size_t j = 0; j < p->n_sites; j++, k++) {
            memprof__alloc_point_site__init(&h->sites[k]);
            h->sites[k].frame = a->hist_sites[slot][j].frame;
            h->sites[k].live_bytes = a->hist_sites[slot][j].live;
            h->site_ptrs[k] = &h->sites[k];
        }
        h->ptrs[i] = p;
    }
    return 0;
}

void alloc_reply_free(struct alloc_reply *v)
{
    free(v->fa), free(v->fp), free(v->sa), free(v->sp), free(v->ta), free(v->tp);
    free(v->h.points), free(v->h.ptrs), free(v->h.sites), free(v->h.site_ptrs);
    memset(v, 0, sizeof *v);
}

int alloc_reply_fill(struct session *s, int history, struct alloc_reply *v, char *err)
{
    struct alloc_data *a = s->alloc;
    Memprof__AllocData *d = &v->d;
    memset(v, 0, sizeof *v);
    memprof__alloc_data__init(d);
    if (!s->track.enabled) {
        mp_err(err, "pid %d: attached without allocation tracking (detach, then attach without --no-track)",
               (int)s->pid);
        return -1;
    }
    session_fill_info(s, &v->info);
    d->session = &v->info;
    d->exact = s->track.exact;
    d->sample_rate = s->track.sample_rate;
    if (!a) {
        d->rss_bytes = proc_rss(s->pid);
        return 0;
    }
    d->profiled = a->profiled;
    d->n_profiled = a->nprofiled;
    if (!WIRE_ARRAYS(v->fa, v->fp, a->nframes) || !WIRE_ARRAYS(v->sa, v->sp, a->nstacks) ||
        !WIRE_ARRAYS(v->ta, v->tp, a->nstacks) || (history && history_fill(a, &v->h) < 0)) {
        alloc_reply_free(v);
        mp_err(err, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < a->nframes; i++) {
        Memprof__AllocFrame *f = &v->fa[d->n_frames];
        if (!a->frames[i].file) continue;
        memprof__alloc_frame__init(f);
        f->id = (uint32_t)i;
        f->file = a->frames[i].file;
        f->function = a->frames[i].func;
        f->line = a->frames[i].line;
        f->first_line = a->frames[i].first;
        if (a->frames[i].module) {
            f->native = 1;
            f->module = a->frames[i].module;
            f->module_offset = a->frames[i].offset;
        }
        v->fp[d->n_frames++] = f;
    }
    for (size_t i = 0; i < a->nstacks; i++) {
        struct astat *st = &a->stats[i];
        Memprof__AllocStack *k = &v->sa[d->n_stacks];
        Memprof__AllocStat *t = &v->ta[d->n_stats];
        if (!a->stacks[i].defined || (st->ac == 0 && st->fc == 0)) continue;
        memprof__alloc_stack__init(k);
        k->id = (uint32_t)i;
        k->frames = a->stacks[i].frames;
        k->n_frames = a->stacks[i].n;
        k->native = a->stacks[i].native;
        k->native_frames = a->stacks[i].native_frames;
        k->n_native_frames = a->stacks[i].nnative;
        v->sp[d->n_stacks++] = k;
        memprof__alloc_stat__init(t);
        t->stack = (uint32_t)i;
        t->alloc_bytes = st->ab;
        t->alloc_count = st->ac;
        t->free_bytes = st->fb;
        t->free_count = st->fc;
        t->peak_live = st->peak;
        t->alloc_rate = st->rate;
        v->tp[d->n_stats++] = t;
    }
    if (history) {
        d->history = v->h.ptrs;
        d->n_history = a->hist_len;
    }
    d->frames = v->fp;
    d->stacks = v->sp;
    d->stats = v->tp;
    d->rss_bytes = a->rss;
    d->samples = a->samples;
    d->dropped = a->dropped;
    d->samples_rate = a->samples_rate;
    d->alloc_rate = a->alloc_rate;
    d->overhead = a->overhead;
    d->timestamp = a->last_ts;
    d->first_report = a->first_ts;
    d->peak_live = a->peak_live;
    d->exact = a->exact;
    d->sample_rate = a->rate_bytes;
    return 0;
}

/* A query in the moment between an attach and the agent's first report (it reports once an interval,
 * so `memprofd attach; memprof top --once` always met an empty view) waits for that report, at most an
 * interval and a second: the query kept encoded, looked at again every FIRST_REPORT_POLL_MS. */
#define FIRST_REPORT_POLL_MS 20
struct waiting_query {
    uint64_t conn;
    uint8_t *buf;
    size_t len;
    double deadline;
};

static void answer_query(struct conn *c, const Envelope *in, double deadline);

static long retry_query(long long id, void *data)
{
    struct waiting_query *w = data;
    struct conn *c = conn_by_id(w->conn);
    Envelope *in = NULL;
    char err[MP_ERRLEN];
    (void)id;
    if (c && wire_decode(w->buf + WIRE_HDR, w->len - WIRE_HDR, &in, err) == 0) {
        answer_query(c, in, w->deadline);
        wire_free(in);
    }
    free(w->buf);
    free(w);
    return LOOP_NOMORE;
}

static int wait_first_report(struct conn *c, const Envelope *in, const struct session *s, double deadline)
{
    struct waiting_query *w;
    char err[MP_ERRLEN];
    if (!deadline) deadline = mp_now() + (s->track.interval_ms ? s->track.interval_ms : 1000) / 1000.0 + 1.0;
    if (mp_now() > deadline || !(w = calloc(1, sizeof *w))) return 0;
    w->conn = c->id;
    w->deadline = deadline;
    if (wire_encode(in, &w->buf, &w->len, err) < 0 || !loop_add_timer(FIRST_REPORT_POLL_MS, retry_query, w)) {
        free(w->buf);
        free(w);
        return 0;
    }
    return 1;
}

void alloc_on_query(struct conn *c, const Envelope *in) { answer_query(c, in, 0); }

static void answer_query(struct conn *c, const Envelope *in, double deadline)
{
    char err[MP_ERRLEN];
    Memprof__ErrorReply__Code code;
    struct session *s = query_session(c, in->alloc_query, err, &code);
    struct alloc_reply v;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    if (!s) {
        reply_error(c, code, err);
        return;
    }
    if (s->state == SESS_ATTACHED && !s->alloc && s->track.enabled && wait_first_report(c, in, s, deadline)) return;
    if (alloc_reply_fill(s, in->alloc_query->history, &v, err) < 0) {
        reply_error(c, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, err);
        return;
    }
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_DATA;
    env.alloc_data = &v.d;
    conn_send(c, &env);
    alloc_reply_free(&v);
}

int alloc_totals(const struct session *s, struct alloc_totals *t)
{
    const struct alloc_data *a = s->alloc;
    memset(t, 0, sizeof *t);
    if (!a) return -1;
    for (size_t i = 0; i < a->nstacks; i++) {
        t->live += a->stats[i].ab - a->stats[i].fb;
        t->allocated += a->stats[i].ab;
    }
    t->rss = a->rss;
    t->samples = a->samples;
    t->dropped = a->dropped;
    t->peak_live = a->peak_live;
    return 0;
}

size_t alloc_top_sites(const struct session *s, size_t n, struct alloc_site *out)
{
    const struct alloc_data *a = s->alloc;
    struct hsite *top;
    size_t count;
    if (!a || !(top = top_sites(a, &count))) return 0;
    if (count > n) count = n;
    for (size_t i = 0; i < count; i++) {
        const struct aframe *f = &a->frames[top[i].frame];
        out[i] = (struct alloc_site){f->file, f->func, f->line, top[i].live};
    }
    free(top);
    return count;
}
