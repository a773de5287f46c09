/* alloc.h -- per-session allocation data in the daemon: the agent's reports
 * summed per stack (allocated, freed, live, peak, rates) and a bounded history. */
#ifndef MEMPROF_ALLOC_H
#define MEMPROF_ALLOC_H

#include "daemon/conn.h"
#include "daemon/session.h"

/* Fold one agent report into the session's data (created on first use). */
void alloc_report(struct session *s, const Memprof__AllocReport *r);
/* Answer a client's AllocQuery with AllocData (or an error in it). */
void alloc_on_query(struct conn *c, const Envelope *env);
void alloc_free(struct alloc_data *a);
/* The session's target is gone or detached: its native frames can no longer be named (files closed). */
void alloc_session_ended(struct session *s);

/* The history as AllocPoints with their sites: arrays owned by an alloc_reply. */
struct history_out {
    Memprof__AllocPoint *points, **ptrs;
    Memprof__AllocPointSite *sites, **site_ptrs;
};
/* A session's AllocData (what an AllocQuery gets), borrowing the session's strings: valid until the next
 * report folds in, so use it at once. */
struct alloc_reply {
    Memprof__AllocData d;
    Memprof__SessionInfo info;
    Memprof__AllocFrame *fa, **fp;
    Memprof__AllocStack *sa, **sp;
    Memprof__AllocStat *ta, **tp;
    struct history_out h;
};
int alloc_reply_fill(struct session *s, int history, struct alloc_reply *v, char *err);
void alloc_reply_free(struct alloc_reply *v);

/* For /metrics: a session's totals (-1 before its first report), and its n largest sites by live bytes
 * (innermost frame, constructors folded into their caller, as memprof top shows them). */
struct alloc_totals {
    double live, allocated, peak_live;
    uint64_t rss, samples, dropped;
};
int alloc_totals(const struct session *s, struct alloc_totals *t);
struct alloc_site {
    const char *file, *function;
    uint32_t line;
    double live;
};
size_t alloc_top_sites(const struct session *s, size_t n, struct alloc_site *out);

#endif
