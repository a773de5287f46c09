/* alloc.c -- allocation data per session: folds the agents' AllocReports into
 * per-stack totals (allocated, freed, live, peak, recent rate) and a bounded
 * history of totals, and answers AllocQuery. Kept after the target exits. */
#include "alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "procinfo.h"
#include "util.h"

#define MAX_IDS 65536          /* the agent caps frames at 16384, stacks at 8192 */
#define HISTORY 600            /* snapshots: one a second for ten minutes */
#define HISTORY_STEP 1.0
#define RATE_TAU 2.0           /* seconds: smoothing of rates */

struct aframe {
    char *file, *func;
    uint32_t line, first;
};

struct astack {
    uint32_t *frames;
    uint32_t n;
    int defined;
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
    size_t hist_head, hist_len;
    double hist_last;
};

static int grow(void **arr, size_t *n, size_t want, size_t elsize)
{
    void *p;
    if (want <= *n) return 0;
    if (want > MAX_IDS) return -1;
    p = realloc(*arr, want * elsize);
    if (!p) return -1;
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
    }
    for (size_t i = 0; i < a->nstacks; i++) free(a->stacks[i].frames);
    free(a->frames);
    free(a->stacks);
    free(a->stats);
    free(a);
}

static void define(struct alloc_data *a, const Memprof__AllocReport *r)
{
    for (size_t i = 0; i < r->n_frames; i++) {
        const Memprof__AllocFrame *f = r->frames[i];
        if (grow((void **)&a->frames, &a->nframes, (size_t)f->id + 1, sizeof *a->frames) < 0) continue;
        free(a->frames[f->id].file);
        free(a->frames[f->id].func);
        a->frames[f->id] = (struct aframe){strdup(f->file ? f->file : "?"), strdup(f->function ? f->function : "?"),
                                           f->line, f->first_line};
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
            if (s->frames[k] < a->nframes) st->frames[st->n++] = s->frames[k];
        st->defined = 1;
    }
}

static void history_push(struct alloc_data *a, double t, double live, double allocated)
{
    Memprof__AllocPoint *p;
    if (a->hist_len && t - a->hist_last < HISTORY_STEP) return;
    a->hist_last = t;
    p = &a->hist[(a->hist_head + a->hist_len) % HISTORY];
    if (a->hist_len < HISTORY) a->hist_len++;
    else a->hist_head = (a->hist_head + 1) % HISTORY;
    memprof__alloc_point__init(p);
    p->t = t;
    p->live_bytes = live;
    p->alloc_bytes = allocated;
    p->rss_bytes = a->rss;
    p->samples = a->samples;
}

void alloc_report(struct session *s, const Memprof__AllocReport *r)
{
    struct alloc_data *a = s->alloc;
    double dt, k, live = 0, allocated = 0, dalloc = 0;
    if (!a) {
        a = s->alloc = calloc(1, sizeof *a);
        if (!a) return;
        a->first_ts = r->timestamp;
        a->last_ts = r->timestamp;
    }
    define(a, r);
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
        if (dt > 0) st->rate += k * d->alloc_bytes / dt;
        dalloc += d->alloc_bytes;
    }
    for (size_t i = 0; i < a->nstacks; i++) {
        live += a->stats[i].ab - a->stats[i].fb;
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
    history_push(a, r->timestamp, live, allocated);
}

/* ------------------------------------------------------------ query */

static void reply_error(struct conn *c, const char *msg)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AllocData d = MEMPROF__ALLOC_DATA__INIT;
    d.error = (char *)msg;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_DATA;
    env.alloc_data = &d;
    conn_send(c, &env);
}

void alloc_query(struct conn *c, const Memprof__AllocQuery *q)
{
    char err[MP_ERRLEN];
    struct session *s = session_find(q->pid);
    struct alloc_data *a;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AllocData d = MEMPROF__ALLOC_DATA__INIT;
    Memprof__SessionInfo info;
    Memprof__AllocFrame *fa = NULL, **fp = NULL;
    Memprof__AllocStack *sa = NULL, **sp = NULL;
    Memprof__AllocStat *ta = NULL, **tp = NULL;
    Memprof__AllocPoint **hp = NULL;

    if (proc_may_access(c->peer_uid, q->pid, err) < 0 && !(s && (c->peer_uid == 0 || c->peer_uid == s->uid))) {
        reply_error(c, err);
        return;
    }
    if (!s || s->state == SESS_DETACHED || s->state == SESS_LOST || (s->state != SESS_ATTACHED && !s->alloc)) {
        snprintf(err, sizeof err, "pid %d: not attached (attach first: memprofd attach --pid %d)", (int)q->pid,
                 (int)q->pid);
        reply_error(c, err);
        return;
    }
    if (!s->track.enabled) {
        snprintf(err, sizeof err, "pid %d: attached without allocation tracking (detach, then attach without --no-track)",
                 (int)q->pid);
        reply_error(c, err);
        return;
    }
    a = s->alloc;
    session_fill_info(s, &info);
    d.session = &info;
    d.exact = s->track.exact;
    d.sample_rate = s->track.sample_rate;
    if (a) {
        fa = calloc(a->nframes + 1, sizeof *fa);
        fp = calloc(a->nframes + 1, sizeof *fp);
        sa = calloc(a->nstacks + 1, sizeof *sa);
        sp = calloc(a->nstacks + 1, sizeof *sp);
        ta = calloc(a->nstacks + 1, sizeof *ta);
        tp = calloc(a->nstacks + 1, sizeof *tp);
        hp = calloc(a->hist_len + 1, sizeof *hp);
        if (!fa || !fp || !sa || !sp || !ta || !tp || !hp) {
            reply_error(c, "out of memory");
            goto out;
        }
        for (size_t i = 0; i < a->nframes; i++) {
            if (!a->frames[i].file) continue;
            memprof__alloc_frame__init(&fa[d.n_frames]);
            fa[d.n_frames].id = (uint32_t)i;
            fa[d.n_frames].file = a->frames[i].file;
            fa[d.n_frames].function = a->frames[i].func;
            fa[d.n_frames].line = a->frames[i].line;
            fa[d.n_frames].first_line = a->frames[i].first;
            fp[d.n_frames] = &fa[d.n_frames];
            d.n_frames++;
        }
        for (size_t i = 0; i < a->nstacks; i++) {
            struct astat *st = &a->stats[i];
            if (!a->stacks[i].defined || (st->ac == 0 && st->fc == 0)) continue;
            memprof__alloc_stack__init(&sa[d.n_stacks]);
            sa[d.n_stacks].id = (uint32_t)i;
            sa[d.n_stacks].frames = a->stacks[i].frames;
            sa[d.n_stacks].n_frames = a->stacks[i].n;
            sp[d.n_stacks] = &sa[d.n_stacks];
            d.n_stacks++;
            memprof__alloc_stat__init(&ta[d.n_stats]);
            ta[d.n_stats].stack = (uint32_t)i;
            ta[d.n_stats].alloc_bytes = st->ab;
            ta[d.n_stats].alloc_count = st->ac;
            ta[d.n_stats].free_bytes = st->fb;
            ta[d.n_stats].free_count = st->fc;
            ta[d.n_stats].peak_live = st->peak;
            ta[d.n_stats].alloc_rate = st->rate;
            tp[d.n_stats] = &ta[d.n_stats];
            d.n_stats++;
        }
        if (q->history)
            for (size_t i = 0; i < a->hist_len; i++) hp[d.n_history++] = &a->hist[(a->hist_head + i) % HISTORY];
        d.frames = fp;
        d.stacks = sp;
        d.stats = tp;
        d.history = hp;
        d.rss_bytes = a->rss;
        d.samples = a->samples;
        d.dropped = a->dropped;
        d.samples_rate = a->samples_rate;
        d.alloc_rate = a->alloc_rate;
        d.overhead = a->overhead;
        d.timestamp = a->last_ts;
        d.first_report = a->first_ts;
        d.peak_live = a->peak_live;
        d.exact = a->exact;
        d.sample_rate = a->rate_bytes;
    } else {
        d.rss_bytes = proc_rss(s->pid);
    }
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_DATA;
    env.alloc_data = &d;
    conn_send(c, &env);
out:
    free(fa), free(fp), free(sa), free(sp), free(ta), free(tp), free(hp);
}
