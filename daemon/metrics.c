/* metrics.c -- the Prometheus text exposition of memprofd (format 0.0.4): per attached session one
 * memprof_process_info series carrying its python, command, pod and namespace, the numeric series keyed by pid
 * and container, its top-N
 * sites by live bytes and top-N types of its last census, and the daemon's health. Names and units follow Prometheus' conventions (_bytes, _total for counters). */
#include "daemon/metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/alloc.h"
#include "daemon/conn.h"
#include "daemon/procinfo.h"
#include "daemon/session.h"

#define CENSUS_KEEP 64 /* types kept per session from its last census (the largest by bytes) */
#define COMMAND_MAX 160

struct census_note {
    uint32_t session;
    double when; /* wall clock */
    size_t n;
    struct census_type {
        char *name;
        double count, bytes;
    } types[CENSUS_KEEP];
    struct census_note *next;
};

static unsigned long long agent_reports;
static struct census_note *censuses;

void metrics_alloc_report(void) { agent_reports++; }

static int by_bytes(const void *a, const void *b)
{
    const Memprof__TypeCount *x = *(Memprof__TypeCount *const *)a, *y = *(Memprof__TypeCount *const *)b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : 0;
}

static void census_free(struct census_note *n)
{
    for (size_t i = 0; i < n->n; i++) free(n->types[i].name);
    free(n);
}

/* Keep the largest types of a census that passes through to a client. */
void metrics_census(const struct session *s, const Memprof__CensusReply *r)
{
    struct census_note *n, **pp;
    Memprof__TypeCount **sorted;
    for (pp = &censuses; *pp; pp = &(*pp)->next)
        if ((*pp)->session == s->id) {
            n = *pp;
            *pp = n->next;
            census_free(n);
            break;
        }
    if (!(n = calloc(1, sizeof *n))) return;
    if (!(sorted = malloc((r->n_types + 1) * sizeof *sorted))) {
        free(n);
        return;
    }
    memcpy(sorted, r->types, r->n_types * sizeof *sorted);
    qsort(sorted, r->n_types, sizeof *sorted, by_bytes);
    n->session = s->id;
    n->when = r->timestamp > 0 ? r->timestamp : mp_wallclock();
    for (size_t i = 0; i < r->n_types && n->n < CENSUS_KEEP; i++) {
        char *name = strdup(sorted[i]->name ? sorted[i]->name : "?");
        if (!name) break;
        n->types[n->n++] = (struct census_type){name, (double)sorted[i]->count, (double)sorted[i]->bytes};
    }
    free(sorted);
    n->next = censuses;
    censuses = n;
}

/* ------------------------------------------------------------ exposition */

static void label_value(FILE *f, const char *s, size_t max)
{
    fputc('"', f);
    for (size_t i = 0; s && s[i] && i < max; i++) {
        if (s[i] == '\\') fputs("\\\\", f);
        else if (s[i] == '"') fputs("\\\"", f);
        else if (s[i] == '\n') fputs("\\n", f);
        else fputc(s[i], f);
    }
    fputc('"', f);
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int exposed(const struct session *s) { return s->state == SESS_ATTACHED; }

/* The labels that name a process among a fleet's: its pid, and its container id ("" on the host: pids of
 * different containers may be equal). */
static void key(FILE *f, const char *name, const struct session *s)
{
    fprintf(f, "%s{pid=\"%d\",container=", name, (int)s->pid);
    label_value(f, s->ident.container, sizeof s->ident.container);
}

/* The descriptive labels (pod, namespace, python, command) once per process, in an info series (value 1), as
 * Prometheus' practice has it: the numeric series carry pid and container alone and join them with
 * `* on(pid, container) group_left(command) memprof_process_info`. pod and namespace only where known. */
static void process_info(FILE *f)
{
    int any = 0;
    for (const struct session *s = sessions; s; s = s->next) {
        char cmd[COMMAND_MAX + 1] = "";
        size_t len = 0;
        if (!exposed(s)) continue;
        for (size_t i = 0; i < s->argc && len < COMMAND_MAX; i++)
            len += (size_t)snprintf(cmd + len, sizeof cmd - len, "%s%s", i ? " " : "", s->argv[i]);
        if (!any++)
            head(f, "memprof_process_info", "gauge",
                 "An attached process: its Kubernetes pod and namespace where known, Python version and command line (value 1).");
        key(f, "memprof_process_info", s);
        if (s->ident.pod[0]) {
            fputs(",pod=", f);
            label_value(f, s->ident.pod, sizeof s->ident.pod);
        }
        if (s->ident.pod_namespace[0]) {
            fputs(",namespace=", f);
            label_value(f, s->ident.pod_namespace, sizeof s->ident.pod_namespace);
        }
        fputs(",python=", f);
        label_value(f, s->py.version, 32);
        fputs(",command=", f);
        label_value(f, cmd, COMMAND_MAX);
        fputs("} 1\n", f);
    }
}

static void num(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, " %.17g\n", v);
    else fputs(" NaN\n", f);
}

/* One metric with a value per exposed session; which is 0..4 of struct alloc_totals' fields, or -1: RSS. */
static void per_session(FILE *f, const char *name, const char *type, const char *help, int which)
{
    int any = 0;
    for (const struct session *s = sessions; s; s = s->next) {
        struct alloc_totals t;
        double v;
        int have = exposed(s) && alloc_totals(s, &t) == 0;
        if (!exposed(s) || (which >= 0 && !have)) continue;
        switch (which) {
        case -1: v = have && t.rss ? (double)t.rss : (double)proc_rss(s->pid); break;
        case 0: v = t.live; break;
        case 1: v = t.allocated; break;
        case 2: v = (double)t.samples; break;
        case 3: v = (double)t.dropped; break;
        default: v = t.peak_live; break;
        }
        if (!any++) head(f, name, type, help);
        key(f, name, s);
        fputc('}', f);
        num(f, v < 0 ? 0 : v);
    }
}

static const char *base_name(const char *p)
{
    const char *s = p ? strrchr(p, '/') : NULL;
    return s ? s + 1 : p ? p : "?";
}

static void top_sites(FILE *f, unsigned top_n)
{
    struct alloc_site *sites = calloc(top_n + 1, sizeof *sites);
    int any = 0;
    if (!sites) return;
    for (const struct session *s = sessions; s; s = s->next) {
        size_t n = exposed(s) ? alloc_top_sites(s, top_n, sites) : 0;
        for (size_t i = 0; i < n; i++) {
            char site[512];
            if (!any++)
                head(f, "memprof_site_live_bytes", "gauge",
                     "Live bytes allocated at a line (what constructors allocate counted where the object was created); the largest sites of each process only.");
            snprintf(site, sizeof site, "%s:%u", base_name(sites[i].file), sites[i].line);
            key(f, "memprof_site_live_bytes", s);
            fputs(",site=", f);
            label_value(f, site, sizeof site);
            fputs(",function=", f);
            label_value(f, sites[i].function, 128);
            fputs(",file=", f);
            label_value(f, sites[i].file, 256);
            fputc('}', f);
            num(f, sites[i].live);
        }
    }
    free(sites);
}

static const struct session *live_session(uint32_t id)
{
    const struct session *s = session_by_id(id);
    return s && exposed(s) ? s : NULL;
}

static void census_types(FILE *f, unsigned top_n)
{
    static const char *names[] = {"memprof_type_objects", "memprof_type_bytes", "memprof_census_timestamp_seconds"};
    static const char *helps[] = {
        "Objects of a type in the last census (memprof types), the largest types by bytes only.",
        "Shallow bytes of a type's objects in the last census, the largest types only.",
        "When the last census of the process was taken (unix seconds)."};
    struct census_note **pp = &censuses;
    while (*pp) { /* forget the censuses of sessions that ended */
        if (!live_session((*pp)->session)) {
            struct census_note *n = *pp;
            *pp = n->next;
            census_free(n);
        } else {
            pp = &(*pp)->next;
        }
    }
    for (int m = 0; m < 3 && censuses; m++) {
        head(f, names[m], "gauge", helps[m]);
        for (const struct census_note *n = censuses; n; n = n->next) {
            const struct session *s = live_session(n->session);
            if (m == 2) {
                key(f, names[m], s);
                fputc('}', f);
                num(f, n->when);
                continue;
            }
            for (size_t i = 0; i < n->n && i < top_n; i++) {
                key(f, names[m], s);
                fputs(",type=", f);
                label_value(f, n->types[i].name, 128);
                fputc('}', f);
                num(f, m ? n->types[i].bytes : n->types[i].count);
            }
        }
    }
}

static void health(FILE *f)
{
    static const enum sess_state states[] = {SESS_ATTACHING, SESS_ATTACHED, SESS_DETACHING,
                                             SESS_DETACHED,  SESS_EXITED,   SESS_LOST};
    unsigned clients = 0, agents = 0;
    head(f, "memprof_sessions", "gauge", "Sessions the daemon holds, by state (ended ones are kept for a while).");
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
        unsigned n = 0;
        for (const struct session *s = sessions; s; s = s->next) n += s->state == states[i];
        fprintf(f, "memprof_sessions{state=\"%s\"} %u\n", session_state_name(states[i]), n);
    }
    head(f, "memprof_agent_reports_total", "counter", "Allocation reports received from agents.");
    fprintf(f, "memprof_agent_reports_total %llu\n", agent_reports);
    conn_counts(&clients, &agents);
    head(f, "memprof_client_connections", "gauge", "Connected memprof clients.");
    fprintf(f, "memprof_client_connections %u\n", clients);
    head(f, "memprof_agent_connections", "gauge", "Connected agents.");
    fprintf(f, "memprof_agent_connections %u\n", agents);
}

char *metrics_render(unsigned top_n, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) return NULL;
    process_info(f);
    per_session(f, "memprof_process_rss_bytes", "gauge", "Resident set size of the process.", -1);
    per_session(f, "memprof_tracked_live_bytes", "gauge",
                "Live bytes of the allocations memprof tracks (estimated in sampling mode).", 0);
    per_session(f, "memprof_tracked_peak_live_bytes", "gauge", "Highest tracked live bytes since attaching.", 4);
    per_session(f, "memprof_allocated_bytes_total", "counter", "Bytes allocated since tracking began (estimated in sampling mode).", 1);
    per_session(f, "memprof_samples_total", "counter", "Allocations sampled (exact mode: recorded).", 2);
    per_session(f, "memprof_dropped_samples_total", "counter", "Samples the agent could not record (its tables were full).", 3);
    if (top_n) {
        top_sites(f, top_n);
        census_types(f, top_n);
    }
    health(f);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
