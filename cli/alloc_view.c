/* alloc_view.c -- the allocation data layer of the CLI (alloc_view.h), and `memprof growth`'s leak suspects. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/alloc_view.h"
#include "cli/commands.h"
#include "client/client.h"

const char *sort_names[SORT_N] = {"own live", "total live", "alloc rate", "allocations"};

void view_free(struct view *v)
{
    for (size_t i = 0; i < v->nframes; i++) {
        free(v->frames[i].file);
        free(v->frames[i].func);
    }
    for (size_t i = 0; i < v->nstacks; i++) free(v->stacks[i].frames);
    free(v->frames);
    free(v->stacks);
    memset(v, 0, sizeof *v);
}

int frame_slot(struct view *v, unsigned id)
{
    if (id >= 1u << 20) return -1;
    if (id >= v->nframes) {
        struct frame *f = realloc(v->frames, (id + 1) * sizeof *f);
        if (!f) return -1;
        memset(f + v->nframes, 0, (id + 1 - v->nframes) * sizeof *f);
        v->frames = f;
        v->nframes = id + 1;
    }
    return 0;
}

void frame_set(struct view *v, unsigned id, const char *file, const char *func, unsigned line, unsigned first)
{
    struct frame *f = &v->frames[id];
    if (f->used) {
        free(f->file);
        free(f->func);
    }
    *f = (struct frame){1, strdup(file), strdup(func), line, first, mp_is_library_file(file)};
}

void view_frames(struct view *v, const Memprof__AllocData *d)
{
    for (size_t i = 0; i < d->n_frames; i++) {
        const Memprof__AllocFrame *f = d->frames[i];
        if (frame_slot(v, f->id) < 0) continue;
        frame_set(v, f->id, f->file, f->function, f->line, f->first_line);
    }
}

int alloc_native_only;

void view_from_data(struct view *v, const Memprof__AllocData *d)
{
    memset(v, 0, sizeof *v);
    if (d->session) {
        v->pid = d->session->pid;
        cli_container(d->session->ns_pid, d->session->container, v->where, sizeof v->where);
        snprintf(v->state, sizeof v->state, "%s", wire_state_name(d->session->state));
        v->exited = d->session->state == MEMPROF__SESSION_INFO__STATE__EXITED;
        snprintf(v->python, sizeof v->python, "%s", d->session->python_version);
        snprintf(v->native_note, sizeof v->native_note, "%s", d->session->native_note ? d->session->native_note : "");
        snprintf(v->native_late, sizeof v->native_late, "%s",
                 d->session->native_late_note ? d->session->native_late_note : "");
        for (size_t i = 0; i < d->session->n_argv; i++) {
            size_t l = strlen(v->command);
            snprintf(v->command + l, sizeof v->command - l, "%s%s", i ? " " : "", d->session->argv[i]);
        }
    }
    v->exact = d->exact;
    snprintf(v->mode, sizeof v->mode, "%s", d->exact ? "exact" : "sampling");
    v->rss = (double)d->rss_bytes;
    v->samples_rate = d->samples_rate;
    v->alloc_rate = d->alloc_rate;
    v->overhead = d->overhead;
    v->ts = d->timestamp;
    v->first_ts = d->first_report;
    v->peak_live = d->peak_live;
    v->samples = (double)d->samples;
    v->dropped = (double)d->dropped;
    v->rate_bytes = (double)d->sample_rate;
    view_frames(v, d);
    v->stacks = calloc(d->n_stacks + 1, sizeof *v->stacks);
    for (size_t i = 0; v->stacks && i < d->n_stacks; i++) {
        const Memprof__AllocStack *s = d->stacks[i];
        const Memprof__AllocStat *t = NULL;
        struct stack *st = &v->stacks[v->nstacks];
        for (size_t k = 0; k < d->n_stats && !t; k++)
            if (d->stats[k]->stack == s->id) t = d->stats[k];
        if (!t) continue;
        st->frames = malloc((s->n_frames + 1) * sizeof *st->frames);
        if (!st->frames) continue;
        for (size_t k = 0; k < s->n_frames; k++)
            if (s->frames[k] < v->nframes && v->frames[s->frames[k]].used) st->frames[st->n++] = s->frames[k];
        st->ab = t->alloc_bytes, st->ac = t->alloc_count, st->fb = t->free_bytes, st->fc = t->free_count;
        st->live = t->alloc_bytes - t->free_bytes;
        st->native = s->native;
        *(s->native ? &v->live_native : &v->live_python) += st->live;
        v->has_native |= s->native;
        if (alloc_native_only && !s->native) {
            free(st->frames);
            st->frames = NULL;
            st->n = 0;
            continue;
        }
        st->rate = t->alloc_rate;
        st->peak = t->peak_live;
        if (st->n) v->nstacks++;
        else free(st->frames);
    }
}

double view_live(const struct view *v)
{
    double live = 0;
    for (size_t i = 0; i < v->nstacks; i++) live += v->stacks[i].live;
    return live;
}

int alloc_fetch(int pid, unsigned session_id, int history, Envelope **reply, char *err)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AllocQuery q = MEMPROF__ALLOC_QUERY__INIT;
    int fd = client_connect(client_socket_opt, 0, err);
    *reply = NULL;
    if (fd < 0) return -1;
    q.pid = pid;
    q.session_id = session_id;
    q.history = history;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_QUERY;
    env.alloc_query = &q;
    if (client_call(fd, &env, reply, 30000, err) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    if ((*reply)->msg_case != MEMPROF__ENVELOPE__MSG_ALLOC_DATA) {
        wire_free(*reply);
        *reply = NULL;
        mp_err(err, "unexpected reply from memprofd (is it older than this memprof?)");
        return -1;
    }
    if (client_reply_error((*reply)->alloc_data->error, (*reply)->alloc_data->code, err) < 0) {
        wire_free(*reply);
        *reply = NULL;
        return -1;
    }
    return 0;
}

int alloc_load(const char *path, Envelope **reply, char *err)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;
    *reply = NULL;
    if (!f) return mp_errno(err, "cannot read %s", path), -1;
    do {
        uint8_t *nb = len == cap ? realloc(buf, cap = cap ? 2 * cap : 1 << 16) : buf;
        if (!nb) break;
        buf = nb;
        len += n = fread(buf + len, 1, cap - len, f);
    } while (n > 0);
    fclose(f);
    if (buf) *reply = memprof__envelope__unpack(NULL, len, buf);
    free(buf);
    if (!*reply || (*reply)->msg_case != MEMPROF__ENVELOPE__MSG_ALLOC_DATA || !(*reply)->alloc_data->rss_note[0]) {
        wire_free(*reply);
        *reply = NULL;
        mp_err(err, "%s: not a file written by memprof rss --save", path);
        return -1;
    }
    return 0;
}

/* Ask the daemon for pid's allocation data: 0, or -1 with err set. */
static int view_fetch(int pid, struct view *v, char *err)
{
    Envelope *reply;
    if (alloc_fetch(pid, 0, 0, &reply, err) < 0) return -1;
    view_from_data(v, reply->alloc_data);
    wire_free(reply);
    return 0;
}

int view_get(int pid, struct view *v)
{
    char err[MP_ERRLEN];
    if (view_fetch(pid, v, err) < 0) return cli_fail_call(err);
    return 0;
}

/* ------------------------------------------------------------ rows */

static void row_key(const struct view *v, unsigned fid, enum by by, char *key, size_t len)
{
    const struct frame *f = &v->frames[fid];
    if (by == BY_LINE) snprintf(key, len, "%s\t%u", f->file, f->line); /* <listcomp> and its caller: one line */
    else snprintf(key, len, "%s\t%s\t%u", f->file, f->func, f->first);
}

static struct alloc_row *row_get(struct alloc_row **rows, size_t *n, size_t *cap, const char *key, unsigned fid)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*rows)[i].key, key)) return &(*rows)[i];
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        struct alloc_row *r = realloc(*rows, nc * sizeof *r);
        if (!r) return NULL;
        *rows = r;
        *cap = nc;
    }
    (*rows)[*n] = (struct alloc_row){strdup(key), fid, 0, 0, 0, 0, (size_t)-1, 0};
    return &(*rows)[(*n)++];
}

static enum sort g_sort;
static int row_cmp(const void *a, const void *b)
{
    const struct alloc_row *x = a, *y = b;
    double kx = g_sort == SORT_OWN ? x->own : g_sort == SORT_TOTAL ? x->total : g_sort == SORT_RATE ? x->rate : x->allocs;
    double ky = g_sort == SORT_OWN ? y->own : g_sort == SORT_TOTAL ? y->total : g_sort == SORT_RATE ? y->rate : y->allocs;
    return kx < ky ? 1 : kx > ky ? -1 : strcmp(x->key, y->key);
}

int alloc_name_match(const char *have, const char *want)
{
    size_t lh = strlen(have), lw = strlen(want);
    const char *last = strrchr(want, '.');
    if (!strcmp(have, want)) return 2;
    if (lw && lh > lw && have[lh - lw - 1] == '.' && !strcmp(have + lh - lw, want)) return 1;
    if (last && last[1] && !strchr(have, '.') && !strcmp(have, last + 1)) return 1;
    return 0;
}

int alloc_fold_ctors = 1;
int alloc_show_libraries;

/* A qualified name's last part: "__init__" of "UserProfile.__init__". */
static const char *last_part(const char *f)
{
    const char *d = strrchr(f, '.');
    return d ? d + 1 : f;
}

static int is_ctor(const struct view *v, unsigned fid)
{
    const char *f = last_part(v->frames[fid].func);
    return !strcmp(f, "__init__") || !strcmp(f, "__new__") || !strcmp(f, "__post_init__");
}

/* A comprehension's or generator expression's own frame (before 3.12 list,
 * dict and set comprehensions have one; 3.12+ inline them into the function). */
static int is_comprehension(const struct view *v, unsigned fid)
{
    const char *f = last_part(v->frames[fid].func);
    return !strcmp(f, "<listcomp>") || !strcmp(f, "<dictcomp>") || !strcmp(f, "<setcomp>") || !strcmp(f, "<genexpr>");
}

size_t rows_build(const struct view *v, enum by by, enum sort sort, struct alloc_row **out)
{
    struct alloc_row *rows = NULL;
    size_t n = 0, cap = 0;
    char key[1024];
    for (size_t i = 0; i < v->nstacks; i++) {
        const struct stack *s = &v->stacks[i];
        size_t own = 0;
        /* what library code allocates is the user's line's that called it (when one did) */
        while (!alloc_show_libraries && own < s->n && v->frames[s->frames[own]].lib) own++;
        if (own == s->n) own = 0;
        /* what a comprehension allocates is the line's that wrote it, whatever the version
         * (3.12+ inline them); with folding, what a constructor allocates the creator's */
        while (own + 1 < s->n && (is_comprehension(v, s->frames[own]) || (alloc_fold_ctors && is_ctor(v, s->frames[own]))))
            own++;
        for (size_t k = own; k < s->n; k++) {
            struct alloc_row *r;
            if (k > own && !alloc_show_libraries && v->frames[s->frames[k]].lib) continue; /* user code's rows only */
            row_key(v, s->frames[k], by, key, sizeof key);
            if (!(r = row_get(&rows, &n, &cap, key, s->frames[k]))) continue;
            if (k == own) {
                r->own += s->live;
                if (s->native) r->own_native += s->live;
                r->rate += s->rate;
                r->allocs += s->ac;
            }
            if (r->last_stack != i) {
                r->total += s->live;
                r->last_stack = i;
            }
        }
    }
    g_sort = sort;
    if (n) qsort(rows, n, sizeof *rows, row_cmp);
    *out = rows;
    return n;
}

void rows_free(struct alloc_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) free(rows[i].key);
    free(rows);
}

void location(const struct view *v, const struct alloc_row *r, enum by by, char *out, size_t len)
{
    const struct frame *f = &v->frames[r->frame];
    char raw[2048];
    if (f->line == 0 && f->first == 0) snprintf(raw, sizeof raw, "%s", f->func); /* <other>, <unknown ...> */
    else if (by == BY_LINE) snprintf(raw, sizeof raw, "%s:%u (%s)", f->file, f->line, f->func);
    else snprintf(raw, sizeof raw, "%s (%s:%u)", f->func, f->file, f->first);
    cli_esc(raw, out, len); /* for tables only: one row whatever the names hold */
}


int cli_set_session(const char *arg, void *dest)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(arg, &end, 10);
    if (!*arg || *end || errno || v == 0 || v > 0xffffffffUL || arg[0] == '-') return -1;
    *(unsigned *)dest = (unsigned)v;
    return 0;
}

void cli_who(int pid, unsigned session_id, char *out, size_t len)
{
    if (session_id) snprintf(out, len, "session %u", session_id);
    else snprintf(out, len, "pid %d", pid);
}

/* ------------------------------------------------------------ leak suspects */

/* One line's own live bytes followed across the censuses of `memprof growth`. */
struct suspect {
    char *key;
    char where[600];
    double first, last;
    unsigned grew, seen;
};
static struct suspect *suspects;
static size_t nsuspects;
static unsigned suspect_rounds;

static int suspect_cmp(const void *a, const void *b)
{
    const struct suspect *x = a, *y = b;
    /* Steadiest growth first, then the most growth. */
    double sx = x->seen ? (double)x->grew / x->seen : 0, sy = y->seen ? (double)y->grew / y->seen : 0;
    if (sx != sy) return sx < sy ? 1 : -1;
    return (x->last - x->first) < (y->last - y->first) ? 1 : -1;
}

void alloc_leak_suspects(int pid, int limit, FILE *out)
{
    struct view v;
    struct alloc_row *rows;
    size_t n, shown = 0;
    char err[MP_ERRLEN], g[32], l[32];
    memset(&v, 0, sizeof v);
    if (view_fetch(pid, &v, err) < 0) return; /* no tracking: nothing to rank */
    n = rows_build(&v, BY_LINE, SORT_OWN, &rows);
    for (size_t i = 0; i < n; i++) {
        struct suspect *s = NULL;
        for (size_t k = 0; k < nsuspects && !s; k++)
            if (!strcmp(suspects[k].key, rows[i].key)) s = &suspects[k];
        if (!s) {
            struct suspect *ns = realloc(suspects, (nsuspects + 1) * sizeof *ns);
            if (!ns) break;
            suspects = ns;
            s = &suspects[nsuspects++];
            memset(s, 0, sizeof *s);
            s->key = strdup(rows[i].key);
            s->first = s->last = suspect_rounds ? 0 : rows[i].own; /* new since baseline: grew from 0 */
            location(&v, &rows[i], BY_LINE, s->where, sizeof s->where);
        }
        if (suspect_rounds) {
            s->seen = suspect_rounds;
            if (rows[i].own > s->last) s->grew++;
        }
        s->last = rows[i].own;
    }
    rows_free(rows, n);
    view_free(&v);
    if (suspect_rounds++ == 0) return; /* the baseline */
    if (nsuspects) qsort(suspects, nsuspects, sizeof *suspects, suspect_cmp); /* none yet: suspects is NULL */
    for (size_t k = 0; k < nsuspects && (!limit || (int)shown < limit); k++) {
        struct suspect *s = &suspects[k];
        if (s->last - s->first < 1.0 || !s->grew) continue; /* under a byte: sampling noise */
        if (!shown++)
            fprintf(out, "leak suspects (allocation sites whose live memory grew, steadiest first):\n"
                         "  %10s %11s  %6s  %s\n", "GROWTH", "LIVE NOW", "STEADY", "LOCATION");
        g[0] = '+';
        cli_bytes(s->last - s->first, g + 1, sizeof g - 1);
        fprintf(out, "  %10s %11s  %2u/%-3u  %s\n", g, cli_bytes(s->last, l, sizeof l), s->grew, s->seen, s->where);
    }
    fflush(out);
}
