/* rss_view.c -- memprof rss's rows, RSS figures and timeline, shown as a live table or JSON lines. */
#include "gen/rss_config.h"
#if MEMPROF_HAVE_RSS
#include "cli/rss_view.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/rss_tracked.h"
#include "gen/memprof.pb-c.h"
#include "probe/procfs.h"
#include "proto/wire.h"

#define NSLOTS (1 << 16)
#define MAX_ROWS 50000
#define ROW_STACK RSS_MAX_STACK /* native frames a row keeps: as many as an event brings */

struct rss_row {
    char *key, *file, *func, *native, *mapping;
    char *stack[ROW_STACK];
    int line, nstack;
    uint64_t faulted, mapped, unmapped, iv_faulted;
    uint64_t iv_huge; /* faults recorded this interval that mapped a transparent huge page */
};

struct figures { uint64_t rss, anon, file, shmem, vmrss, pss, swap, huge; int ok; };
struct point { double t; uint64_t rss, peak, faulted; };

struct rss_view {
    struct rss_opts o;
    struct rss_trace *trace;
    struct rss_sym *sym;
    struct rss_row *rows;
    int nrows, cap;
    int slots[NSLOTS]; /* row index + 1 */
    uint64_t faulted, mapped, unmapped, iv_faulted, iv_mapped, iv_unmapped, events, iv_events, with_python;
    uint64_t brk;
    uint64_t huge_pending; /* transparent huge pages mapped before the last refresh, no recorded fault in one yet */
    int pagemap, kpageflags; /* to tell a fault's page huge; -1: not readable (every fault weighs 4 KiB) */
    uint64_t peak;           /* --rss-stat: the highest RSS the kernel reported */
    struct figures base, now;
    struct point *tl;
    int ntl, tlcap;
    double start, last_tick, wall_start;
    char comm[64];
    char cmdline[4096]; /* NULs between the arguments, read at the start (--save) */
    ssize_t cmdlen;
    int exited;
    struct rss_tracked tracked; /* a memprofd session on the same process, when there is one */
};

/* /proc/PID/status: VmRSS, RssAnon, RssFile, RssShmem; ok 0 when gone (a zombie's has no VmRSS). */
static void read_status(int pid, struct figures *f)
{
    char buf[8192];
    static const char *keys[] = {"VmRSS", "RssAnon", "RssFile", "RssShmem"};
    uint64_t *dst[] = {&f->vmrss, &f->anon, &f->file, &f->shmem};
    f->ok = 0;
    if (procfs_status(pid, 0, buf, sizeof buf) < 0) return;
    for (int k = 0; k < 4; k++) {
        const char *p = procfs_field(buf, keys[k]);
        if (p) *dst[k] = strtoull(p, NULL, 10) * 1024;
    }
    f->ok = f->vmrss > 0;
}

/* /proc/PID/smaps_rollup: Rss, Pss, Swap and the transparent huge pages mapped (slow on a big process: it walks
 * the page tables). */
static void read_rollup(int pid, struct figures *f)
{
    char path[64], buf[8192];
    static const char *keys[] = {"\nRss:", "\nPss:", "\nSwap:", "\nAnonHugePages:", "\nShmemPmdMapped:",
                                 "\nFilePmdMapped:"};
    uint64_t *dst[] = {&f->rss, &f->pss, &f->swap, &f->huge, NULL, NULL};
    snprintf(path, sizeof path, "/proc/%d/smaps_rollup", pid);
    buf[0] = '\n';
    if (mp_read_file(path, buf + 1, sizeof buf - 1) <= 0) return;
    f->huge = 0;
    for (int k = 0; k < 6; k++) {
        const char *p = strstr(buf, keys[k]);
        uint64_t n = p ? strtoull(p + strlen(keys[k]), NULL, 10) * 1024 : 0;
        if (dst[k]) *dst[k] = n;
        else f->huge += n;
    }
}

/* Whether the page at addr is part of a transparent huge page now: its frame from /proc/PID/pagemap, the
 * frame's flags from /proc/kpageflags (KPF_THP; both root's). Read at most 100 ms after the fault. */
static int is_huge(struct rss_view *v, uint64_t addr)
{
    uint64_t e, flags;
    if (v->pagemap < 0 || v->kpageflags < 0) return 0;
    if (pread(v->pagemap, &e, 8, (off_t)(addr / 4096 * 8)) != 8 || !(e >> 63)) return 0; /* not present */
    e &= (1ull << 55) - 1;                                                                /* the frame */
    if (!e || pread(v->kpageflags, &flags, 8, (off_t)(e * 8)) != 8) return 0;
    return (flags >> 22) & 1; /* KPF_THP */
}

/* The huge pages mapped since the last refresh (smaps_rollup's growth), shared among the rows by their recorded
 * faults that landed in one: a fault of a huge page maps 512 small pages' worth at once, so its weight is what
 * the kernel counted, not the sampling period's. None recorded: kept for the next refresh. */
static void share_huge(struct rss_view *v, uint64_t before, uint64_t now)
{
    uint64_t grown = (now > before ? now - before : 0) + v->huge_pending, left = grown, all = 0, seen = 0;
    for (int i = 0; i < v->nrows; i++) all += v->rows[i].iv_huge;
    v->huge_pending = all ? 0 : grown;
    for (int i = 0; i < v->nrows && all; i++) {
        struct rss_row *r = &v->rows[i];
        uint64_t part;
        if (!r->iv_huge) continue;
        seen += r->iv_huge;
        part = (uint64_t)((double)grown * (double)r->iv_huge / (double)all);
        if (part > left || seen == all) part = left; /* the last one: what rounding left */
        r->faulted += part;
        r->iv_faulted += part;
        left -= part;
        r->iv_huge = 0;
    }
    v->faulted += grown - left;
    v->iv_faulted += grown - left;
}

/* The end of [heap] (the break, page-rounded), 0 when none yet. */
static uint64_t heap_end(int pid)
{
    char path[64], line[512];
    unsigned long long lo, hi, end = 0;
    FILE *f;
    snprintf(path, sizeof path, "/proc/%d/maps", pid);
    if (!(f = fopen(path, "r"))) return 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, "[heap]") && sscanf(line, "%llx-%llx", &lo, &hi) == 2) end = hi;
    fclose(f);
    return end;
}

struct rss_view *rss_view_new(const struct rss_opts *o)
{
    struct rss_view *v = calloc(1, sizeof *v);
    char path[64];
    if (!v) return NULL;
    v->o = *o;
    v->sym = rss_sym_open(o->pid, o->abi);
    read_status(o->pid, &v->base);
    read_rollup(o->pid, &v->base);
    v->now = v->base;
    v->brk = heap_end(o->pid);
    snprintf(path, sizeof path, "/proc/%d/pagemap", o->pid);
    v->pagemap = open(path, O_RDONLY | O_CLOEXEC);
    v->kpageflags = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
    v->start = v->last_tick = mp_now();
    v->wall_start = mp_wallclock();
    snprintf(path, sizeof path, "/proc/%d/cmdline", o->pid);
    v->cmdlen = mp_read_file(path, v->cmdline, sizeof v->cmdline);
    snprintf(path, sizeof path, "/proc/%d/comm", o->pid);
    if (mp_read_file(path, v->comm, sizeof v->comm) > 0) v->comm[strcspn(v->comm, "\n")] = 0;
    return v;
}

void rss_view_attach(struct rss_view *v, struct rss_trace *t) { v->trace = t; }

void rss_view_start_pages(const struct rss_view *v, uint64_t pages[RSS_NMEMBERS])
{
    memset(pages, 0, RSS_NMEMBERS * sizeof *pages);
    pages[RSS_FILE] = v->base.file / RSS_PAGE;
    pages[RSS_ANON] = v->base.anon / RSS_PAGE;
    pages[RSS_SHMEM] = v->base.shmem / RSS_PAGE;
}

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static struct rss_row *row_for(struct rss_view *v, const char *key)
{
    uint32_t h = hash(key) & (NSLOTS - 1);
    while (v->slots[h]) {
        struct rss_row *r = &v->rows[v->slots[h] - 1];
        if (!strcmp(r->key, key)) return r;
        h = (h + 1) & (NSLOTS - 1);
    }
    if (v->nrows >= MAX_ROWS) return NULL;
    if (v->nrows == v->cap) {
        struct rss_row *n = realloc(v->rows, (size_t)(v->cap = v->cap ? 2 * v->cap : 256) * sizeof *n);
        if (!n) return NULL;
        v->rows = n;
    }
    struct rss_row *r = &v->rows[v->nrows++];
    memset(r, 0, sizeof *r);
    r->key = strdup(key);
    v->slots[h] = v->nrows;
    return r;
}

void rss_view_event(struct rss_view *v, const struct rss_event *e)
{
    const char *file = "", *func = "", *native = "?", *mapping = "";
    char key[1024];
    int line = -1, py = 0, nframes = e->nstack > 0 ? e->nstack / 8 : 0;
    uint64_t fault = 0, map = 0, unmap = 0;
    int huge = 0;
    struct rss_row *r;

    v->events++;
    v->iv_events++;
    for (int i = 0; i < e->npy && i < RSS_MAX_PYFRAMES && !py; i++)
        py = rss_sym_python(v->sym, e->pycode[i], e->pyoff[i], &file, &func, &line) == 0;
    if (nframes > RSS_MAX_STACK) nframes = RSS_MAX_STACK;
    for (int i = 0; i < nframes; i++) /* a frame-pointer walk through code without them ends in junk */
        if (e->stack[i] < 4096 || e->stack[i] >= 0x800000000000ull) nframes = i;
    if (nframes) native = rss_sym_native(v->sym, e->stack[0], 1);
    switch (e->kind) {
    case RSS_FAULT:
        if (!(huge = is_huge(v, e->addr))) fault = e->len; /* a huge one is weighed at the refresh */
        mapping = rss_sym_mapping(v->sym, e->addr);
        break;
    case RSS_MMAP: map = e->len; mapping = rss_sym_mapping(v->sym, e->addr); break;
    case RSS_MUNMAP: unmap = e->len; mapping = "(unmapped)"; break;
    case RSS_MREMAP: unmap = e->len; map = e->len2; mapping = rss_sym_mapping(v->sym, e->addr2); break;
    case RSS_BRK:
        if (v->brk && e->addr2 > v->brk) map = e->addr2 - v->brk;
        if (v->brk && e->addr2 < v->brk) unmap = v->brk - e->addr2;
        v->brk = e->addr2;
        mapping = "[heap]";
        break;
    default: return;
    }
    if (py && e->kind == RSS_FAULT) v->with_python++;
    switch (v->o.by) {
    case RSS_BY_LINE:
        if (py) snprintf(key, sizeof key, "%s\n%d\n%s", file, line, func);
        else snprintf(key, sizeof key, "\n\n\n%s", native);
        break;
    case RSS_BY_FUNCTION:
        if (py) snprintf(key, sizeof key, "%s\n%s", file, func);
        else snprintf(key, sizeof key, "\n\n\n%s", native);
        break;
    case RSS_BY_NATIVE: snprintf(key, sizeof key, "%s", native); break;
    case RSS_BY_MAPPING: snprintf(key, sizeof key, "%s", mapping); break;
    }
    if (!(r = row_for(v, key))) return;
    if (!r->native) { /* the first event of a row names it */
        r->file = strdup(py ? file : "");
        r->func = strdup(py ? func : "");
        r->line = py ? line : -1;
        r->native = strdup(native);
        r->mapping = strdup(mapping);
        for (int i = 0; i < nframes && r->nstack < ROW_STACK; i++) {
            const char *name = rss_sym_native(v->sym, e->stack[i], i == 0);
            if (i && name[0] == '0' && name[1] == 'x') break; /* in no module: a walk gone astray */
            r->stack[r->nstack++] = strdup(name);
        }
    }
    r->iv_huge += (uint64_t)huge;
    r->faulted += fault;
    r->iv_faulted += fault;
    r->mapped += map;
    r->unmapped += unmap;
    v->faulted += fault;
    v->mapped += map;
    v->unmapped += unmap;
    v->iv_faulted += fault;
    v->iv_mapped += map;
    v->iv_unmapped += unmap;
}

static int by_faulted(const void *a, const void *b)
{
    const struct rss_row *x = a, *y = b;
    if (x->faulted != y->faulted) return x->faulted < y->faulted ? 1 : -1;
    if (x->mapped != y->mapped) return x->mapped < y->mapped ? 1 : -1;
    return strcmp(x->key, y->key);
}

static void jstr(FILE *f, const char *name, const char *s)
{
    fprintf(f, "\"%s\":", name);
    cli_json_str(f, s ? s : "");
}

static void print_json(struct rss_view *v, double t, double dt, uint64_t faults, uint64_t lost, int final)
{
    FILE *f = stdout;
    const struct figures *g = &v->now;
    fprintf(f, "{\"pid\":%d,", v->o.pid);
    jstr(f, "comm", v->comm);
    fputc(',', f);
    jstr(f, "python", v->o.version);
    fprintf(f, ",\"python_lines\":%s,", v->o.abi ? "true" : "false");
    jstr(f, "python_lines_unavailable", v->o.abi ? "" : v->o.no_python);
    fprintf(f, ",\"time\":%.3f,\"t\":%.3f,\"interval\":%.3f,\"final\":%s,\"exited\":%s,", mp_wallclock(), t, dt,
            final ? "true" : "false", v->exited ? "true" : "false");
    fprintf(f, "\"rss\":{\"rss_bytes\":%llu,\"anon_bytes\":%llu,\"file_bytes\":%llu,\"shmem_bytes\":%llu,"
               "\"vmrss_bytes\":%llu,\"pss_bytes\":%llu,\"swap_bytes\":%llu,\"huge_bytes\":%llu",
            (unsigned long long)g->rss, (unsigned long long)g->anon, (unsigned long long)g->file,
            (unsigned long long)g->shmem, (unsigned long long)g->vmrss, (unsigned long long)g->pss,
            (unsigned long long)g->swap, (unsigned long long)g->huge);
    if (v->o.rss_stat) fprintf(f, ",\"peak_bytes\":%llu", (unsigned long long)v->peak);
    fputs("},", f);
    fprintf(f, "\"last\":{\"faulted_bytes\":%llu,\"mapped_bytes\":%llu,\"unmapped_bytes\":%llu,\"events\":%llu},",
            (unsigned long long)v->iv_faulted, (unsigned long long)v->iv_mapped, (unsigned long long)v->iv_unmapped,
            (unsigned long long)v->iv_events);
    fprintf(f, "\"total\":{\"faulted_bytes\":%llu,\"mapped_bytes\":%llu,\"unmapped_bytes\":%llu,\"faults\":%llu,"
               "\"events\":%llu,\"events_lost\":%llu,\"faults_with_python\":%llu},\"sample_every\":%u,",
            (unsigned long long)v->faulted, (unsigned long long)v->mapped, (unsigned long long)v->unmapped,
            (unsigned long long)faults, (unsigned long long)v->events, (unsigned long long)lost,
            (unsigned long long)v->with_python, v->o.sample);
    if (v->tracked.ok)
        fprintf(f, "\"tracked\":{\"python_bytes\":%.0f,\"native_bytes\":%.0f,\"untracked_bytes\":%.0f,"
                   "\"report_time\":%.3f,\"session\":{\"id\":%u,\"mode\":\"%s\",\"state\":\"%s\"}},",
                v->tracked.python, v->tracked.native, (double)g->anon - v->tracked.python - v->tracked.native,
                v->tracked.time, v->tracked.session, v->tracked.mode, v->tracked.state);
    fputs("\"timeline\":[", f);
    for (int i = 0; i < v->ntl; i++) {
        fprintf(f, "%s{\"t\":%.3f,\"rss_bytes\":%llu", i ? "," : "", v->tl[i].t, (unsigned long long)v->tl[i].rss);
        if (v->o.rss_stat) fprintf(f, ",\"peak_bytes\":%llu", (unsigned long long)v->tl[i].peak);
        fputc('}', f);
    }
    fputs("],\"rows\":[", f);
    for (int i = 0; i < v->nrows && i < v->o.limit; i++) {
        const struct rss_row *r = &v->rows[i];
        fputs(i ? ",{" : "{", f);
        jstr(f, "file", r->file);
        fprintf(f, ",\"line\":%d,", r->line);
        jstr(f, "function", r->func);
        fputc(',', f);
        jstr(f, "native", r->native);
        fputc(',', f);
        jstr(f, "mapping", r->mapping);
        fprintf(f, ",\"faulted_bytes\":%llu,\"mapped_bytes\":%llu,\"unmapped_bytes\":%llu,",
                (unsigned long long)r->faulted, (unsigned long long)r->mapped, (unsigned long long)r->unmapped);
        if (v->tracked.ok && v->o.by == RSS_BY_LINE)
            fprintf(f, "\"tracked_bytes\":%.0f,", rss_tracked_at(&v->tracked, r->file, r->line));
        fputs("\"native_stack\":[", f);
        for (int k = 0; k < r->nstack; k++) {
            if (k) fputc(',', f);
            cli_json_str(f, r->stack[k]);
        }
        fputs("]}", f);
    }
    fputs("]}\n", f);
    fflush(f);
}

/* The session's tracked live heap beside RSS anon (two lines), or a dim note saying why there is none. */
static void print_tracked(struct rss_view *v, FILE *f)
{
    const struct rss_tracked *t = &v->tracked;
    double heap = t->python + t->native, rest = (double)v->now.anon - heap;
    int tty = isatty(fileno(f));
    char a[32], b[32], c[32], d[32], why[300];
    if (!t->ok) {
        fprintf(f, "%s%s: tracked heap not shown%s\n", tty ? "\033[2m" : "", cli_esc(t->why, why, sizeof why),
                tty ? "\033[0m" : "");
        return;
    }
    fprintf(f, "tracked heap %s = Python %s + native %s  (memprof session %u, %s, %s)\n", cli_bytes(heap, a, sizeof a),
            cli_bytes(t->python, b, sizeof b), cli_bytes(t->native, c, sizeof c), t->session, t->mode, t->state);
    if (rest >= 0)
        fprintf(f, "RSS anon %s - tracked %s = %s not tracked: allocator caches, fragmentation, untracked native%s\n",
                cli_bytes((double)v->now.anon, a, sizeof a), cli_bytes(heap, b, sizeof b), cli_bytes(rest, c, sizeof c),
                strcmp(t->mode, "native") ? " (attach --native to count C allocations)" : "");
    else
        fprintf(f, "RSS anon %s - tracked %s: %s tracked but not resident (allocated, never touched, or swapped out)\n",
                cli_bytes((double)v->now.anon, a, sizeof a), cli_bytes(heap, b, sizeof b), cli_bytes(-rest, d, sizeof d));
}

static void print_text(struct rss_view *v, FILE *f, double t, double dt, uint64_t faults, uint64_t lost, int final)
{
    char a[32], b[32], c[32], d[32], e[32], w[600], n[300];
    const struct figures *g = &v->now;
    int column = v->tracked.ok && v->o.by == RSS_BY_LINE; /* TRACKED: the session's live bytes at the row's line */
    fprintf(f, "memprof rss -- pid %d %s%s%s  %.1f s%s\n", v->o.pid, cli_esc(v->comm, n, sizeof n),
            v->o.version[0] ? " Python " : "", v->o.version, t,
            v->exited ? "  (the process has exited: last figures)" : final ? "  (final)" : "");
    fprintf(f, "RSS %s  anon %s  file %s  shmem %s", cli_bytes((double)g->vmrss, a, sizeof a),
            cli_bytes((double)g->anon, b, sizeof b), cli_bytes((double)g->file, c, sizeof c),
            cli_bytes((double)g->shmem, d, sizeof d));
    fprintf(f, "   (smaps_rollup: Pss %s, Swap %s, huge pages %s)\n", cli_bytes((double)g->pss, a, sizeof a),
            cli_bytes((double)g->swap, b, sizeof b), cli_bytes((double)g->huge, c, sizeof c));
    if (v->o.rss_stat && v->ntl)
        fprintf(f, "peak RSS since the last refresh %s, since the start %s (kmem:rss_stat)\n",
                cli_bytes((double)v->tl[v->ntl - 1].peak, a, sizeof a), cli_bytes((double)v->peak, b, sizeof b));
    fprintf(f, "last %.1f s: faulted in %s  mapped %s  unmapped %s   total: faulted in %s  mapped %s\n", dt,
            cli_bytes((double)v->iv_faulted, a, sizeof a), cli_bytes((double)v->iv_mapped, b, sizeof b),
            cli_bytes((double)v->iv_unmapped, c, sizeof c), cli_bytes((double)v->faulted, d, sizeof d),
            cli_bytes((double)v->mapped, e, sizeof e));
    fprintf(f, "page faults %llu (1 in about %u recorded, 4 KiB each; huge pages by smaps)  events %.0f/s  lost %llu  python line: %s\n",
            (unsigned long long)faults, v->o.sample, dt > 0 ? (double)v->iv_events / dt : 0.0,
            (unsigned long long)lost, v->o.abi ? "from the interpreter's frames" : cli_esc(v->o.no_python, w, 200));
    print_tracked(v, f);
    fprintf(f, "\n%10s %s%10s %10s  %s\n", "FAULTED", column ? "   TRACKED " : "", "MAPPED", "UNMAPPED",
            v->o.by == RSS_BY_MAPPING ? "MAPPING" : v->o.by == RSS_BY_NATIVE ? "NATIVE FUNCTION"
                                                                              : "PYTHON LINE / FUNCTION  [NATIVE]");
    for (int i = 0; i < v->nrows && i < v->o.limit; i++) {
        const struct rss_row *r = &v->rows[i];
        char where[700], tracked[40] = "";
        if (column && r->file[0]) snprintf(tracked, sizeof tracked, "%10s ",
                                           cli_bytes(rss_tracked_at(&v->tracked, r->file, r->line), e, sizeof e));
        else if (column) snprintf(tracked, sizeof tracked, "%10s ", "-");
        if (v->o.by == RSS_BY_MAPPING) snprintf(where, sizeof where, "%s", r->mapping);
        else if (v->o.by == RSS_BY_NATIVE || !r->file[0]) snprintf(where, sizeof where, "%s", r->native);
        else if (v->o.by == RSS_BY_FUNCTION)
            snprintf(where, sizeof where, "%s %s()  [%s]", r->file, r->func, r->native);
        else snprintf(where, sizeof where, "%s:%d %s()  [%s]", r->file, r->line, r->func, r->native);
        fprintf(f, "%10s %s%10s %10s  %s\n", cli_bytes((double)r->faulted, a, sizeof a), tracked,
                cli_bytes((double)r->mapped, b, sizeof b), cli_bytes((double)r->unmapped, c, sizeof c),
                cli_esc(where, w, sizeof w));
    }
    if (!v->nrows) fputs("(no page faults or mappings yet)\n", f);
    fflush(f);
}

void rss_view_tick(struct rss_view *v, int exited, int final)
{
    double now = mp_now(), t = now - v->start, dt = now - v->last_tick;
    uint64_t faults, lost, peak = 0;
    struct figures g = {0};
    if (exited) v->exited = 1;
    if (!v->exited) {
        read_status(v->o.pid, &g);
        if (v->o.rss_stat) peak = rss_trace_peak(v->trace); /* the same moment as VmRSS */
        read_rollup(v->o.pid, &g);
    }
    if (g.ok) {
        share_huge(v, v->now.huge, g.huge);
        if (peak < g.vmrss) peak = g.vmrss;
        if (peak > v->peak) v->peak = peak;
        v->now = g;
        if (v->ntl == v->tlcap) {
            struct point *p = realloc(v->tl, (size_t)(v->tlcap = v->tlcap ? 2 * v->tlcap : 64) * sizeof *p);
            if (p) v->tl = p;
            else v->tlcap = v->ntl;
        }
        if (v->ntl < v->tlcap) v->tl[v->ntl++] = (struct point){t, g.vmrss, peak, v->faulted};
    } else {
        v->exited = 1;
    }
    if (!(v->exited && v->tracked.ok)) /* gone: the last figures stand */
        rss_tracked_fetch(v->o.pid, v->exited, &v->tracked);
    rss_trace_counters(v->trace, &faults, &lost);
    rss_trace_reperiod(v->trace);
    qsort(v->rows, (size_t)v->nrows, sizeof *v->rows, by_faulted);
    memset(v->slots, 0, sizeof v->slots); /* rows moved: index again */
    for (int i = 0; i < v->nrows; i++) {
        uint32_t h = hash(v->rows[i].key) & (NSLOTS - 1);
        while (v->slots[h]) h = (h + 1) & (NSLOTS - 1);
        v->slots[h] = i + 1;
    }
    if (v->o.json) {
        print_json(v, t, dt, faults, lost, final);
    } else if (isatty(STDOUT_FILENO) && !v->o.once) {
        fputs("\033[H\033[2J", stdout);
        print_text(v, stdout, t, dt, faults, lost, final);
    } else if (final || !v->o.once) {
        print_text(v, stdout, t, dt, faults, lost, final);
        if (!final) fputc('\n', stdout);
    }
    v->iv_faulted = v->iv_mapped = v->iv_unmapped = v->iv_events = 0;
    for (int i = 0; i < v->nrows; i++) v->rows[i].iv_faulted = 0;
    v->last_tick = now;
}

/* A native frame named "function (module)" by rss_sym_native: its function and module parts. */
static void native_frame(Memprof__AllocFrame *fr, char *name)
{
    char *open = strrchr(name, '(');
    size_t n = strlen(name);
    fr->native = 1;
    fr->function = name;
    fr->module = fr->file = "";
    if (open && open > name + 1 && open[-1] == ' ' && n && name[n - 1] == ')') {
        open[-1] = 0;
        name[n - 1] = 0;
        fr->module = fr->file = open + 1;
    }
}

int rss_view_save(struct rss_view *v, const char *path, char *err)
{
    Memprof__Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AllocData d = MEMPROF__ALLOC_DATA__INIT;
    Memprof__SessionInfo si = MEMPROF__SESSION_INFO__INIT;
    size_t nf = 0, ns = 0, maxf = (size_t)v->nrows * ROW_STACK + 1, len;
    Memprof__AllocFrame *fa = NULL, **fp = NULL;
    Memprof__AllocStack *sa = NULL, **sp = NULL;
    Memprof__AllocStat *ta = NULL, **tp = NULL;
    Memprof__AllocPoint *ha = NULL, **hp = NULL;
    int ok = WIRE_ARRAYS(fa, fp, maxf) && WIRE_ARRAYS(sa, sp, (size_t)v->nrows) &&
             WIRE_ARRAYS(ta, tp, (size_t)v->nrows) && WIRE_ARRAYS(ha, hp, (size_t)v->ntl);
    uint32_t *ids = calloc(maxf, sizeof *ids);
    char **names = calloc(maxf, sizeof *names), note[256], *argv[64];
    uint8_t *buf = NULL;
    FILE *f;
    int rc = -1;

    if (!ok || !ids || !names) {
        mp_err(err, "out of memory");
        goto out;
    }
    si.pid = v->o.pid;
    si.python_version = v->o.version;
    si.state = v->exited ? MEMPROF__SESSION_INFO__STATE__EXITED : MEMPROF__SESSION_INFO__STATE__DETACHED;
    if (v->cmdlen > 0) {
        for (char *p = v->cmdline; p < v->cmdline + v->cmdlen && si.n_argv < 64; p += strlen(p) + 1)
            argv[si.n_argv++] = p;
        si.argv = argv;
    }
    snprintf(note, sizeof note, "memprof rss: values are bytes faulted in (page faults, 1 in about %u recorded, each "
             "counted as that many 4 KiB pages; huge pages by smaps), not heap allocations", v->o.sample);
    if (v->tracked.ok) { /* beside the session's tracked heap at the end */
        char a[32], b[32], c[32];
        size_t l = strlen(note);
        snprintf(note + l, sizeof note - l, "; memprof session %u tracked %s live (Python %s, native %s)",
                 v->tracked.session, cli_bytes(v->tracked.python + v->tracked.native, a, sizeof a),
                 cli_bytes(v->tracked.python, b, sizeof b), cli_bytes(v->tracked.native, c, sizeof c));
    }
    d.session = &si;
    d.rss_note = note;
    d.sample_rate = (uint64_t)v->o.sample * 4096;
    d.timestamp = v->wall_start + (v->last_tick - v->start);
    d.first_report = v->wall_start;
    d.rss_bytes = v->now.vmrss;
    for (int i = 0; i < v->nrows; i++) {
        const struct rss_row *r = &v->rows[i];
        Memprof__AllocStack *st = &sa[ns];
        Memprof__AllocStat *t = &ta[ns];
        size_t first = nf;
        if (!r->faulted) continue;
        memprof__alloc_stack__init(st);
        memprof__alloc_stat__init(t);
        if (r->file[0]) { /* the Python line: where the bytes were faulted in, no C frames under it */
            memprof__alloc_frame__init(&fa[nf]);
            fa[nf].file = r->file;
            fa[nf].function = r->func;
            fa[nf].line = r->line > 0 ? (uint32_t)r->line : 0;
            nf++;
        } else { /* native only: the row's C call chain, innermost first */
            for (int k = 0; k < r->nstack; k++) {
                memprof__alloc_frame__init(&fa[nf]);
                if (!(names[nf] = strdup(r->stack[k]))) continue;
                native_frame(&fa[nf], names[nf]);
                nf++;
            }
            if (nf == first) {
                memprof__alloc_frame__init(&fa[nf]);
                if ((names[nf] = strdup(r->native))) native_frame(&fa[nf], names[nf]), nf++;
            }
        }
        for (size_t k = first; k < nf; k++) fa[k].id = (uint32_t)k, ids[k] = (uint32_t)k, fp[k] = &fa[k];
        st->id = t->stack = (uint32_t)ns;
        st->frames = &ids[first];
        st->n_frames = nf - first;
        t->alloc_bytes = t->peak_live = (double)r->faulted;
        t->alloc_count = (double)r->faulted / 4096; /* pages */
        sp[ns] = st;
        tp[ns] = t;
        ns++;
        d.samples += r->faulted / d.sample_rate;
    }
    for (int i = 0; i < v->ntl; i++) {
        memprof__alloc_point__init(&ha[i]);
        ha[i].t = v->wall_start + v->tl[i].t;
        ha[i].rss_bytes = v->tl[i].rss;
        ha[i].live_bytes = ha[i].alloc_bytes = (double)v->tl[i].faulted;
        hp[i] = &ha[i];
        if (ha[i].live_bytes > d.peak_live) d.peak_live = ha[i].live_bytes;
    }
    d.frames = fp, d.n_frames = nf;
    d.stacks = sp, d.n_stacks = ns;
    d.stats = tp, d.n_stats = ns;
    d.history = hp, d.n_history = (size_t)v->ntl;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_DATA;
    env.alloc_data = &d;
    len = memprof__envelope__get_packed_size(&env);
    if (!(buf = malloc(len + 1))) {
        mp_err(err, "out of memory");
        goto out;
    }
    memprof__envelope__pack(&env, buf);
    if (!(f = fopen(path, "wb"))) {
        mp_err(err, "cannot write %s: %s", path, strerror(errno));
        goto out;
    }
    if (fwrite(buf, 1, len, f) != len || fclose(f) != 0) {
        mp_err(err, "cannot write %s: %s", path, strerror(errno));
        unlink(path);
        goto out;
    }
    rc = 0;
out:
    for (size_t k = 0; names && k < maxf; k++) free(names[k]);
    free(names), free(ids), free(buf);
    free(fa), free(fp), free(sa), free(sp), free(ta), free(tp), free(ha), free(hp);
    return rc;
}

void rss_view_free(struct rss_view *v)
{
    if (!v) return;
    for (int i = 0; i < v->nrows; i++) {
        struct rss_row *r = &v->rows[i];
        free(r->key), free(r->file), free(r->func), free(r->native), free(r->mapping);
        for (int k = 0; k < r->nstack; k++) free(r->stack[k]);
    }
    free(v->rows);
    free(v->tl);
    if (v->pagemap >= 0) close(v->pagemap);
    if (v->kpageflags >= 0) close(v->kpageflags);
    rss_sym_close(v->sym);
    rss_tracked_clear(&v->tracked);
    free(v);
}
#endif
