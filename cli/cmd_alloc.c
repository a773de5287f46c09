/* cmd_alloc.c -- `memprof top`, `lines`, `snapshot` and `diff`: where a live
 * process allocates and what it holds, by line and by function. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "commands.h"

/* ------------------------------------------------------------ the data */

enum by { BY_LINE, BY_FUNCTION };
enum sort { SORT_OWN, SORT_TOTAL, SORT_RATE, SORT_ALLOCS, SORT_N };
static const char *sort_names[SORT_N] = {"own live", "total live", "alloc rate", "allocations"};

struct frame {
    int used;
    char *file, *func;
    unsigned line, first;
};

/* One stack with its figures, frames as indexes into the frame table. */
struct stack {
    unsigned *frames;
    size_t n;
    double live, ab, ac, fb, fc, rate, peak;
    int native; /* allocations by C code under these frames (memprofd attach --native) */
};

/* A snapshot: from the daemon (AllocData) or from a snapshot file. */
struct view {
    int pid;
    char state[16], mode[16], python[32], command[512], where[128]; /* where: cli_container */
    int exited, exact; /* the session ended with its process; exact mode (else sampling) */
    double rss, samples_rate, alloc_rate, overhead, ts, first_ts, peak_live;
    double samples, dropped, rate_bytes;
    double live_python, live_native; /* tracked live split, before any --native-only */
    int has_native;
    struct frame *frames;
    size_t nframes;
    struct stack *stacks;
    size_t nstacks;
};

/* A row: one line or one function, summed. */
struct row {
    char *key; /* "file\tline" or "file\tfunc\tfirst" */
    unsigned frame;
    double own, total, rate, allocs;
    size_t last_stack; /* to count a stack once in total */
    double own_native;  /* the part of own allocated by C code */
};

static void view_free(struct view *v)
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

static int frame_slot(struct view *v, unsigned id)
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

/* Frame id's text (a file or a message may define an id twice: the last one stands). */
static void frame_set(struct view *v, unsigned id, const char *file, const char *func, unsigned line, unsigned first)
{
    struct frame *f = &v->frames[id];
    if (f->used) {
        free(f->file);
        free(f->func);
    }
    *f = (struct frame){1, strdup(file), strdup(func), line, first};
}

static void view_frames(struct view *v, const Memprof__AllocData *d)
{
    for (size_t i = 0; i < d->n_frames; i++) {
        const Memprof__AllocFrame *f = d->frames[i];
        if (frame_slot(v, f->id) < 0) continue;
        frame_set(v, f->id, f->file, f->function, f->line, f->first_line);
    }
}

/* --native-only (top, lines): only what C code allocated (memprofd attach --native) */
static int native_only;

static void view_from_data(struct view *v, const Memprof__AllocData *d)
{
    memset(v, 0, sizeof *v);
    if (d->session) {
        v->pid = d->session->pid;
        cli_container(d->session->ns_pid, d->session->container, v->where, sizeof v->where);
        snprintf(v->state, sizeof v->state, "%s", wire_state_name(d->session->state));
        v->exited = d->session->state == MEMPROF__SESSION_INFO__STATE__EXITED;
        snprintf(v->python, sizeof v->python, "%s", d->session->python_version);
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
        if (native_only && !s->native) {
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

static double view_live(const struct view *v)
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
    if ((*reply)->alloc_data->error && (*reply)->alloc_data->error[0]) {
        mp_err(err, "%s", (*reply)->alloc_data->error);
        wire_free(*reply);
        *reply = NULL;
        return -1;
    }
    return 0;
}

/* Ask the daemon for pid's allocation data: 0, or -1 with err set. */
static int fetch_data(int pid, struct view *v, char *err)
{
    Envelope *reply;
    if (alloc_fetch(pid, 0, 0, &reply, err) < 0) return -1;
    view_from_data(v, reply->alloc_data);
    wire_free(reply);
    return 0;
}

/* Ask the daemon. 0, or 1 after printing the error. */
static int fetch(int pid, struct view *v)
{
    char err[MP_ERRLEN];
    if (fetch_data(pid, v, err) < 0) return cli_fail("%s", err);
    return 0;
}

/* ------------------------------------------------------------ rows */

static void row_key(const struct view *v, unsigned fid, enum by by, char *key, size_t len)
{
    const struct frame *f = &v->frames[fid];
    if (by == BY_LINE) snprintf(key, len, "%s\t%u", f->file, f->line); /* <listcomp> and its caller: one line */
    else snprintf(key, len, "%s\t%s\t%u", f->file, f->func, f->first);
}

static struct row *row_get(struct row **rows, size_t *n, size_t *cap, const char *key, unsigned fid)
{
    for (size_t i = 0; i < *n; i++)
        if (!strcmp((*rows)[i].key, key)) return &(*rows)[i];
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        struct row *r = realloc(*rows, nc * sizeof *r);
        if (!r) return NULL;
        *rows = r;
        *cap = nc;
    }
    (*rows)[*n] = (struct row){strdup(key), fid, 0, 0, 0, 0, (size_t)-1, 0};
    return &(*rows)[(*n)++];
}

static enum sort g_sort;
static int row_cmp(const void *a, const void *b)
{
    const struct row *x = a, *y = b;
    double kx = g_sort == SORT_OWN ? x->own : g_sort == SORT_TOTAL ? x->total : g_sort == SORT_RATE ? x->rate : x->allocs;
    double ky = g_sort == SORT_OWN ? y->own : g_sort == SORT_TOTAL ? y->total : g_sort == SORT_RATE ? y->rate : y->allocs;
    return kx < ky ? 1 : kx > ky ? -1 : strcmp(x->key, y->key);
}

/* Fold constructors: what __init__/__new__ allocate is shown at the line that
 * created the object, since whoever keeps the object holds that memory. */
static int fold_ctors = 1;

static int is_ctor(const struct view *v, unsigned fid)
{
    const char *f = v->frames[fid].func;
    return !strcmp(f, "__init__") || !strcmp(f, "__new__") || !strcmp(f, "__post_init__");
}

static size_t rows_build(const struct view *v, enum by by, enum sort sort, struct row **out)
{
    struct row *rows = NULL;
    size_t n = 0, cap = 0;
    char key[1024];
    for (size_t i = 0; i < v->nstacks; i++) {
        const struct stack *s = &v->stacks[i];
        size_t own = 0;
        while (fold_ctors && own + 1 < s->n && is_ctor(v, s->frames[own])) own++;
        for (size_t k = own; k < s->n; k++) {
            struct row *r;
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

static void rows_free(struct row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) free(rows[i].key);
    free(rows);
}

static void location(const struct view *v, const struct row *r, enum by by, char *out, size_t len)
{
    const struct frame *f = &v->frames[r->frame];
    char raw[2048];
    if (f->line == 0 && f->first == 0) snprintf(raw, sizeof raw, "%s", f->func); /* <other>, <unknown ...> */
    else if (by == BY_LINE) snprintf(raw, sizeof raw, "%s:%u (%s)", f->file, f->line, f->func);
    else snprintf(raw, sizeof raw, "%s (%s:%u)", f->func, f->file, f->first);
    cli_esc(raw, out, len); /* for tables only: one row whatever the names hold */
}

/* ------------------------------------------------------------ top */

static const char *usage_top =
    "usage: memprof top --pid PID [--by function|line] [--once] [--json] [--limit N]\n"
    "                   [--interval SECONDS] [--no-fold] [--native-only] [--socket PATH]\n"
    "\n"
    "Live view of where an attached process allocates and what it holds, like\n"
    "py-spy top. Rows are lines or functions; OWN LIVE is memory still held that\n"
    "was allocated directly there, TOTAL LIVE includes what its callees allocated.\n"
    "In sampling mode figures are unbiased estimates (Poisson sampling by bytes).\n"
    "What __init__/__new__ allocate is shown at the line that created the object\n"
    "(whoever keeps the object holds it); --no-fold shows it inside __init__.\n"
    "Sessions attached with --native also count what C code (numpy, extensions)\n"
    "allocates with malloc/mmap: the header splits tracked live into Python and\n"
    "native, NATIVE is the share of OWN LIVE allocated by C code, and\n"
    "--native-only shows only native allocations.\n"
    "On a terminal it refreshes in place; keys: q quit, l by line, f by function,\n"
    "s cycle the sort column, p pause. With --once or when stdout is not a\n"
    "terminal it prints one snapshot. --json prints machine-readable snapshots.\n"
    "\n"
    "example:\n"
    "  $ memprof top --pid 4242 --once --by line\n"
    "  pid 4242  python3 service.py  Python 3.11.7  attached\n"
    "  RSS 41.2 MiB  tracked live 9.8 MiB  alloc 61.0 MiB/s  samples/s 122  mode sampling  overhead ~0.4%\n"
    "    OWN LIVE  TOTAL LIVE  %LIVE     ALLOC/S     ALLOCS  LOCATION\n"
    "     6.1 MiB     6.1 MiB  62.2%   210.5 KiB      2.9k  service.py:36 (handle)\n";

static struct termios saved_tio;
static int tio_saved;

static void tty_restore(void)
{
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
        tio_saved = 0;
        fputs("\033[?25h", stdout);
        fflush(stdout);
    }
}

static void on_signal(int sig)
{
    if (tio_saved) {
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_tio);
        (void)!write(STDOUT_FILENO, "\033[?25h\n", 7);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void tty_raw(void)
{
    struct termios t;
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_tio) < 0) return;
    t = saved_tio;
    t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    t.c_cc[VMIN] = 0;
    t.c_cc[VTIME] = 0;
    tio_saved = tcsetattr(STDIN_FILENO, TCSANOW, &t) == 0;
    atexit(tty_restore);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    signal(SIGQUIT, on_signal);
}

static const char *human_count(double n, char *buf, size_t len)
{
    if (n >= 1e9) snprintf(buf, len, "%.1fG", n / 1e9);
    else if (n >= 1e6) snprintf(buf, len, "%.1fM", n / 1e6);
    else if (n >= 1e4) snprintf(buf, len, "%.1fk", n / 1e3);
    else snprintf(buf, len, "%.0f", n);
    return buf;
}

static void print_top(FILE *o, const struct view *v, enum by by, enum sort sort, int limit, int json, int paused)
{
    struct row *rows;
    size_t n = rows_build(v, by, sort, &rows);
    double live = view_live(v);
    char a[32], b[32], c[32], d[32], loc[1200];
    int exited = v->exited;
    if (json) {
        fprintf(o, "{\"pid\": %d, \"state\": \"%s\", \"python\": ", v->pid, v->state);
        cli_json_str(o, v->python);
        fprintf(o, ", \"command\": ");
        cli_json_str(o, v->command);
        fprintf(o,
                ", \"mode\": \"%s\", \"sample_rate\": %.0f, \"rss\": %.0f, \"live\": %.0f, \"peak_live\": %.0f, "
                "\"alloc_rate\": %.1f, \"samples_per_s\": %.2f, \"samples\": %.0f, \"dropped\": %.0f, "
                "\"overhead\": %.5f, \"timestamp\": %.3f, \"by\": \"%s\", \"live_python\": %.0f, \"live_native\": %.0f, "
                "\"native_only\": %s, \"rows\": [",
                v->mode, v->rate_bytes, v->rss, live, v->peak_live, v->alloc_rate, v->samples_rate, v->samples,
                v->dropped, v->overhead, v->ts, by == BY_LINE ? "line" : "function", v->live_python, v->live_native,
                native_only ? "true" : "false");
        for (size_t i = 0; i < n && (limit <= 0 || (int)i < limit); i++) {
            const struct frame *f = &v->frames[rows[i].frame];
            fprintf(o, "%s{\"file\": ", i ? ", " : "");
            cli_json_str(o, f->file);
            fprintf(o, ", \"function\": ");
            cli_json_str(o, f->func);
            fprintf(o, ", \"line\": %u, \"first_line\": %u, \"own_live\": %.0f, \"total_live\": %.0f, "
                       "\"pct_live\": %.2f, \"alloc_rate\": %.1f, \"allocations\": %.0f, \"own_native\": %.0f}",
                    by == BY_LINE ? f->line : f->first, f->first, rows[i].own, rows[i].total,
                    live > 0 ? 100 * rows[i].own / live : 0, rows[i].rate, rows[i].allocs, rows[i].own_native);
        }
        fprintf(o, "]}\n");
        rows_free(rows, n);
        return;
    }
    char cmd[121], ver[64], where[512];
    fprintf(o, "pid %d  %s%s  Python %s  %s%s\n", v->pid, cli_esc(v->where, where, sizeof where),
            cli_esc(v->command, cmd, sizeof cmd), cli_esc(v->python, ver, sizeof ver), v->state,
            paused ? "  [paused]" : "");
    if (exited) fprintf(o, "the process has exited: final figures\n");
    fprintf(o, "RSS %s  tracked live %s (peak %s)", cli_bytes(v->rss, a, sizeof a), cli_bytes(live, b, sizeof b),
            cli_bytes(v->peak_live, c, sizeof c));
    if (v->has_native)
        fprintf(o, " = Python %s + native %s%s", cli_bytes(v->live_python, a, sizeof a),
                cli_bytes(v->live_native, b, sizeof b), native_only ? " [native only]" : "");
    fprintf(o, "  alloc %s/s  samples/s %.1f  mode %s", cli_bytes(v->alloc_rate, d, sizeof d), v->samples_rate, v->mode);
    if (!v->exact) fprintf(o, " (1 per %s)", cli_bytes(v->rate_bytes, a, sizeof a));
    fprintf(o, "  agent overhead ~%.1f%%", 100 * v->overhead);
    if (v->dropped > 0) fprintf(o, "  dropped %.0f", v->dropped);
    fprintf(o, "\n%12s %12s %6s%s %12s %10s  %s   [by %s, sorted by %s]\n", "OWN LIVE", "TOTAL LIVE", "%LIVE",
            v->has_native ? " NATIVE" : "", "ALLOC/S", "ALLOCS", "LOCATION", by == BY_LINE ? "line" : "function",
            sort_names[sort]);
    for (size_t i = 0; i < n && (limit <= 0 || (int)i < limit); i++) {
        char nat[16] = "";
        location(v, &rows[i], by, loc, sizeof loc);
        /* NATIVE: the share of OWN LIVE that C code allocated */
        if (v->has_native)
            snprintf(nat, sizeof nat, " %5.0f%%",
                     rows[i].own > 0 ? fmax(0, fmin(100, 100 * rows[i].own_native / rows[i].own)) : 0.0);
        fprintf(o, "%12s %12s %5.1f%%%s %10s/s %10s  %s\n", cli_bytes(rows[i].own, a, sizeof a),
                cli_bytes(rows[i].total, b, sizeof b), live > 0 ? 100 * rows[i].own / live : 0.0, nat,
                cli_bytes(rows[i].rate, c, sizeof c), human_count(rows[i].allocs, d, sizeof d), loc);
    }
    if (!n) fprintf(o, "(no allocations recorded yet)\n");
    rows_free(rows, n);
}

int cmd_top(int argc, char **argv)
{
    static struct option opts[] = {{"pid", required_argument, 0, 'p'},     {"by", required_argument, 0, 'b'},
                                   {"once", no_argument, 0, 'o'},          {"json", no_argument, 0, 'j'},
                                   {"limit", required_argument, 0, 'l'},   {"interval", required_argument, 0, 'i'},
                                   {"socket", required_argument, 0, 's'},  {"no-fold", no_argument, 0, 'n'},
                                   {"native-only", no_argument, 0, 'N'},   {0}};
    int pid = 0, once = 0, json = 0, limit = 20, c, paused = 0;
    double interval = 1.0;
    enum by by = BY_LINE;
    enum sort sort = SORT_OWN;
    struct view v;
    if (cli_wants_help(argc, argv)) {
        fputs(usage_top, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (cli_parse_pid(optarg, &pid) < 0) return cli_fail("--pid: '%s' is not a pid", optarg);
            break;
        case 'b':
            if (!strcmp(optarg, "line")) by = BY_LINE;
            else if (!strcmp(optarg, "function")) by = BY_FUNCTION;
            else return cli_fail("--by: expected line or function, not '%s'", optarg);
            break;
        case 'o': once = 1; break;
        case 'n': fold_ctors = 0; break;
        case 'N': native_only = 1; break;
        case 'j': json = 1; break;
        case 'l': limit = atoi(optarg); break;
        case 'i':
            interval = atof(optarg);
            if (!(interval >= 0.1)) return cli_fail("--interval: at least 0.1 seconds");
            break;
        case 's': client_socket_opt = optarg; break;
        default: fputs(usage_top, stderr); return 3;
        }
    }
    if (!pid) {
        fputs(usage_top, stderr);
        return cli_fail("--pid is required");
    }
    if (once || !isatty(STDOUT_FILENO)) {
        if (fetch(pid, &v)) return 1;
        print_top(stdout, &v, by, sort, limit, json, 0);
        view_free(&v);
        return 0;
    }
    tty_raw();
    fputs("\033[?25l", stdout);
    for (;;) {
        double deadline;
        if (!paused) {
            char *buf = NULL;
            size_t len = 0;
            FILE *mem = open_memstream(&buf, &len);
            if (fetch(pid, &v)) {
                if (mem) fclose(mem);
                free(buf);
                return 1;
            }
            if (!mem) return cli_fail("out of memory");
            print_top(mem, &v, by, sort, limit, json, paused);
            fclose(mem);
            if (!json) fputs("\033[H\033[2J", stdout);
            fwrite(buf, 1, len, stdout);
            fflush(stdout);
            free(buf);
            view_free(&v);
        }
        deadline = mp_now() + interval;
        while (mp_now() < deadline) {
            struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
            char ch;
            int ms = (int)((deadline - mp_now()) * 1000) + 1;
            if (poll(&p, 1, ms) <= 0) continue;
            if (read(STDIN_FILENO, &ch, 1) != 1) {
                sleep(1); /* stdin closed: keep refreshing */
                continue;
            }
            if (ch == 'q' || ch == 'Q') {
                tty_restore();
                return 0;
            }
            if (ch == 'l') by = BY_LINE;
            else if (ch == 'f') by = BY_FUNCTION;
            else if (ch == 's') sort = (sort + 1) % SORT_N;
            else if (ch == 'p') paused = !paused;
            else continue;
            break; /* redraw now */
        }
    }
}

/* ------------------------------------------------------------ lines */

static const char *usage_lines =
    "usage: memprof lines --pid PID --function NAME [--file FILE] [--native-only] [--socket PATH]\n"
    "\n"
    "memory_profiler's line-by-line report for one function of an attached\n"
    "process, without a decorator or a restart. Increment is the net memory\n"
    "allocated by the line since attach and still held (including what the\n"
    "functions it calls allocated); Mem usage is the running sum of increments\n"
    "down the function; Occurrences counts allocations made at the line.\n"
    "Sampling mode estimates these; exact mode (memprofd attach --exact) counts.\n"
    "With memprofd attach --native, C code's allocations count too; --native-only\n"
    "counts only them.\n"
    "The source is read through /proc/PID/root.\n"
    "\n"
    "example:\n"
    "  $ memprof lines --pid 4242 --function handle\n"
    "  Filename: /srv/service.py  (function handle, pid 4242, sampling mode: estimates)\n"
    "\n"
    "  Line #    Mem usage    Increment  Occurrences   Line Contents\n"
    "  =============================================================\n"
    "      27      0.0 MiB      0.0 MiB            0   def handle(i):\n"
    "      36      6.1 MiB      6.1 MiB         2930       _sessions[digest] = Session(digest)\n";

static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int row[256];
    if (la > 250 || lb > 250) return 1000;
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int prev = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cur = row[j];
            int sub = prev + (tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]));
            int del = row[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            prev = cur;
        }
    }
    return row[lb];
}

static void near_matches(const struct view *v, const char *name, char *out, size_t len)
{
    struct cand {
        const char *name;
        int score;
    } c[8];
    int nc = 0;
    out[0] = 0;
    for (size_t i = 0; i < v->nframes; i++) {
        const char *f = v->frames[i].func;
        int dup = 0, score;
        if (!v->frames[i].used || f[0] == '<') continue;
        for (int k = 0; k < nc; k++) dup |= !strcmp(c[k].name, f);
        if (dup) continue;
        score = edit_distance(name, f);
        if (strstr(f, name) || strstr(name, f)) score = score < 2 ? score : 2;
        if (score > 3 + (int)strlen(name) / 3) continue;
        if (nc < 8) c[nc++] = (struct cand){f, score};
        else {
            int worst = 0;
            for (int k = 1; k < nc; k++)
                if (c[k].score > c[worst].score) worst = k;
            if (score < c[worst].score) c[worst] = (struct cand){f, score};
        }
    }
    for (int i = 0; i < nc; i++)
        for (int k = i + 1; k < nc; k++)
            if (c[k].score < c[i].score) {
                struct cand t = c[i];
                c[i] = c[k];
                c[k] = t;
            }
    for (int i = 0; i < nc && i < 5; i++) {
        size_t l = strlen(out);
        snprintf(out + l, len - l, "%s%s", i ? ", " : "", c[i].name);
    }
}

/* Source lines of a file of the target: through /proc/PID/root, else as is. */
static char **read_source(int pid, const char *file, size_t *nlines)
{
    char path[4200];
    FILE *f;
    char **lines = NULL, *line = NULL;
    size_t cap = 0, n = 0, lcap = 0;
    ssize_t r;
    snprintf(path, sizeof path, "/proc/%d/root%s", pid, file);
    if (file[0] != '/' || !(f = fopen(path, "r"))) f = fopen(file, "r");
    *nlines = 0;
    if (!f) return NULL;
    while ((r = getline(&line, &lcap, f)) >= 0) {
        if (n == cap) {
            char **nl = realloc(lines, (cap = cap ? cap * 2 : 256) * sizeof *nl);
            if (!nl) break;
            lines = nl;
        }
        while (r > 0 && (line[r - 1] == '\n' || line[r - 1] == '\r')) line[--r] = 0;
        lines[n++] = strdup(line);
    }
    free(line);
    fclose(f);
    *nlines = n;
    return lines;
}

static int indent_of(const char *s)
{
    int n = 0;
    for (; *s == ' ' || *s == '\t'; s++) n += *s == '\t' ? 8 : 1;
    return *s && *s != '#' ? n : -1; /* -1: blank or comment */
}

/* memory_profiler's report of function func (in a file matching file, with
 * def line first when non-zero) to o. Attach mode: Increment is what the line
 * allocated since attach and still holds. Run mode (memprof run): Increment is
 * the line's peak (the most its allocations held at once), like the RSS
 * increase memory_profiler sees while the line runs. 0, or 1 after an error. */
static int lines_print(FILE *o, struct view *v, const char *func, const char *file, unsigned first, int run_mode)
{
    const char *chosen = NULL;
    unsigned maxline = 0, start, end;
    char near[512];
    double *inc = NULL, *occ = NULL, best = -1;
    char **src;
    size_t nsrc;
    int pid = v->pid, exact = v->exact;
    /* the (file, def line) of NAME holding the most memory */
    for (size_t i = 0; i < v->nframes; i++) {
        struct frame *f = &v->frames[i];
        double held = 0;
        if (!f->used || strcmp(f->func, func) || (file && (first ? strcmp(f->file, file) : !strstr(f->file, file))) ||
            (first && f->first != first))
            continue;
        for (size_t s = 0; s < v->nstacks; s++)
            for (size_t k = 0; k < v->stacks[s].n; k++)
                if (v->stacks[s].frames[k] == i) held += fabs(v->stacks[s].live) + v->stacks[s].ac;
        if (held > best) best = held, chosen = f->file, first = f->first;
    }
    if (!chosen && first && file) {
        chosen = file; /* memprof run's @profile: known, nothing sampled in it */
    } else if (!chosen) {
        near_matches(v, func, near, sizeof near);
        return cli_fail("pid %d: no function '%s'%s%s has allocated since %s%s%s", pid, func, file ? " in " : "",
                        file ? file : "", run_mode ? "the start" : "attach", near[0] ? "; near matches: " : "", near);
    }
    for (size_t i = 0; i < v->nframes; i++) {
        struct frame *f = &v->frames[i];
        if (f->used && !strcmp(f->func, func) && !strcmp(f->file, chosen) && f->first == first && f->line > maxline)
            maxline = f->line;
    }
    inc = calloc(maxline + 2, sizeof *inc);
    occ = calloc(maxline + 2, sizeof *occ);
    if (!inc || !occ) {
        free(inc);
        free(occ);
        return cli_fail("out of memory");
    }
    /* a stack counts at the innermost frame of this function (inclusive of callees) */
    for (size_t s = 0; s < v->nstacks; s++)
        for (size_t k = 0; k < v->stacks[s].n; k++) {
            struct frame *f = &v->frames[v->stacks[s].frames[k]];
            if (strcmp(f->func, func) || strcmp(f->file, chosen) || f->first != first) continue;
            if (f->line <= maxline) {
                inc[f->line] += run_mode ? v->stacks[s].peak : v->stacks[s].live;
                occ[f->line] += v->stacks[s].ac;
            }
            break;
        }
    src = read_source(pid, chosen, &nsrc);
    start = first ? first : 1;
    end = maxline;
    if (src && start <= nsrc) {
        /* the function ends before the first line indented no deeper than its def */
        int def_indent = indent_of(src[start - 1]);
        unsigned l = start;
        while (l < nsrc && (src[l - 1][0] == '@' || !strchr(src[l - 1], ':'))) l++; /* decorators, def line */
        for (end = l; end < nsrc; end++) {
            int ind = indent_of(src[end]);
            if (ind >= 0 && ind <= def_indent) break;
        }
        while (end > l && indent_of(src[end - 1]) < 0) end--; /* trailing blank lines */
        if (end < maxline) end = maxline;
    }
    char efile[1024], efunc[512];
    cli_esc(chosen, efile, sizeof efile);
    cli_esc(func, efunc, sizeof efunc);
    if (run_mode)
        fprintf(o, "Filename: %s  (function %s, pid %d, %s mode: %s)\n\n", efile, efunc, pid, v->mode,
                exact ? "exact counts; Increment = the line's peak held memory"
                      : "sampled estimates; Increment = the line's peak held memory");
    else
        fprintf(o, "Filename: %s  (function %s, pid %d, %s mode: %s)\n\n", efile, efunc, pid, v->mode,
                exact ? "exact counts of allocations since attach" : "estimates from sampled allocations since attach");
    fprintf(o, "Line #    Mem usage    Increment  Occurrences   Line Contents\n");
    fprintf(o, "=============================================================\n");
    double run = 0;
    for (unsigned l = start; l <= end; l++) {
        const char *text = src && l <= nsrc ? src[l - 1] : "";
        int has = l <= maxline && (occ[l] > 0 || inc[l] != 0);
        if (has) {
            run += inc[l];
            fprintf(o, "%6u %9.1f MiB %9.1f MiB %12.0f   %s\n", l, run / 1048576.0, inc[l] / 1048576.0, occ[l], text);
        } else {
            fprintf(o, "%6u %12s %12s %12s   %s\n", l, "", "", "", text);
        }
    }
    if (!src) fprintf(o, "\n(source not readable at /proc/%d/root%s nor %s)\n", pid, efile, efile);
    else if (!maxline) fprintf(o, "\n(no allocations recorded in %s%s)\n", efunc, exact ? "" : " at this sample rate");
    for (size_t i = 0; src && i < nsrc; i++) free(src[i]);
    free(src);
    free(inc);
    free(occ);
    return 0;
}

int cmd_lines(int argc, char **argv)
{
    static struct option opts[] = {{"pid", required_argument, 0, 'p'},
                                   {"function", required_argument, 0, 'f'},
                                   {"file", required_argument, 0, 'F'},
                                   {"socket", required_argument, 0, 's'},
                                   {"native-only", no_argument, 0, 'N'},
                                   {0}};
    int pid = 0, c;
    const char *func = NULL, *file = NULL;
    struct view v;
    if (cli_wants_help(argc, argv)) {
        fputs(usage_lines, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (cli_parse_pid(optarg, &pid) < 0) return cli_fail("--pid: '%s' is not a pid", optarg);
            break;
        case 'f': func = optarg; break;
        case 'F': file = optarg; break;
        case 'N': native_only = 1; break;
        case 's': client_socket_opt = optarg; break;
        default: fputs(usage_lines, stderr); return 3;
        }
    }
    if (!pid || !func) {
        fputs(usage_lines, stderr);
        return cli_fail("--pid and --function are required");
    }
    if (fetch(pid, &v)) return 1;
    c = lines_print(stdout, &v, func, file, 0, 0);
    view_free(&v);
    return c;
}

/* memprof run: the report of one function of a finished (or running) session. */
int alloc_lines_report(FILE *o, const Memprof__AllocData *d, const char *func, const char *file, unsigned first)
{
    struct view v;
    int rc;
    view_from_data(&v, d);
    rc = lines_print(o, &v, func, file, first, 1);
    view_free(&v);
    return rc;
}

/* ------------------------------------------------------------ snapshot / diff */

static const char *usage_snapshot =
    "usage: memprof snapshot --pid PID -o FILE [--socket PATH]\n"
    "\n"
    "Save the allocation data of an attached (or exited) process to FILE, for\n"
    "`memprof diff`. The format is text: a header, then one line per frame\n"
    "(frame ID LINE FIRST FILE FUNCTION, tab-separated) and per stack\n"
    "(stack LIVE ALLOC_BYTES ALLOCS FREE_BYTES FREES RATE FRAME_IDS...).\n"
    "\n"
    "example:\n"
    "  $ memprof snapshot --pid 4242 -o before.mps\n"
    "  wrote before.mps: 212 stacks, 9.8 MiB live (sampling)\n";

static const char *usage_diff =
    "usage: memprof diff A B [--limit N] [--socket PATH]\n"
    "       memprof diff --pid PID --window SECONDS [--session ID] [--limit N] [--socket PATH]\n"
    "\n"
    "What grew (and shrank) in live memory, by line and by function, largest\n"
    "growth first: between two snapshot files (memprof snapshot), or over the\n"
    "last SECONDS of an attached or exited process, from the daemon's history\n"
    "(one point a second for ten minutes, the 256 largest sites of each point).\n"
    "--session ID picks one of the daemon's sessions (memprof status), e.g. an\n"
    "ended one whose pid was reused.\n"
    "\n"
    "examples:\n"
    "  $ memprof diff before.mps after.mps\n"
    "  live: 9.8 MiB -> 15.9 MiB (+6.1 MiB) over 60.0 s\n"
    "  by line:\n"
    "      +6.1 MiB   6.1 MiB -> 12.2 MiB  service.py:36 (handle)\n"
    "  $ memprof diff --pid 4242 --window 30\n"
    "  live: 1.2 MiB -> 2.0 MiB (+820.3 KiB) over 30.0 s\n"
    "  by line:\n"
    "    +806.7 KiB   1.2 MiB -> 2.0 MiB   service.py:36 (handle)\n";

static void tabfree(char *s)
{
    for (; *s; s++)
        if (*s == '\t' || *s == '\n') *s = ' ';
}

int cmd_snapshot(int argc, char **argv)
{
    static struct option opts[] = {{"pid", required_argument, 0, 'p'},
                                   {"output", required_argument, 0, 'o'},
                                   {"socket", required_argument, 0, 's'},
                                   {0}};
    int pid = 0, c;
    const char *out = NULL;
    struct view v;
    FILE *f;
    char b[32];
    if (cli_wants_help(argc, argv)) {
        fputs(usage_snapshot, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (cli_parse_pid(optarg, &pid) < 0) return cli_fail("--pid: '%s' is not a pid", optarg);
            break;
        case 'o': out = optarg; break;
        case 's': client_socket_opt = optarg; break;
        default: fputs(usage_snapshot, stderr); return 3;
        }
    }
    if (!pid || !out) {
        fputs(usage_snapshot, stderr);
        return cli_fail("--pid and -o FILE are required");
    }
    if (fetch(pid, &v)) return 1;
    if (!(f = fopen(out, "w"))) return cli_fail("%s: %s", out, strerror(errno));
    tabfree(v.command);
    fprintf(f, "memprof-snapshot 1\npid %d\ntime %.3f\nmode %s\nrss %.0f\npython %s\ncommand %s\n", v.pid, v.ts, v.mode,
            v.rss, v.python, v.command);
    for (size_t i = 0; i < v.nframes; i++) {
        if (!v.frames[i].used) continue;
        tabfree(v.frames[i].file);
        tabfree(v.frames[i].func);
        fprintf(f, "frame\t%zu\t%u\t%u\t%s\t%s\n", i, v.frames[i].line, v.frames[i].first, v.frames[i].file,
                v.frames[i].func);
    }
    for (size_t i = 0; i < v.nstacks; i++) {
        struct stack *s = &v.stacks[i];
        fprintf(f, "stack\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f", s->live, s->ab, s->ac, s->fb, s->fc, s->rate);
        for (size_t k = 0; k < s->n; k++) fprintf(f, "\t%u", s->frames[k]);
        fputc('\n', f);
    }
    if (fclose(f) != 0) return cli_fail("%s: %s", out, strerror(errno));
    printf("wrote %s: %zu stacks, %s live (%s)\n", out, v.nstacks, cli_bytes(view_live(&v), b, sizeof b), v.mode);
    view_free(&v);
    return 0;
}

static int load_snapshot(const char *path, struct view *v)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, scap = 0;
    ssize_t r;
    int first = 1;
    memset(v, 0, sizeof *v);
    if (!f) return cli_fail("%s: %s", path, strerror(errno));
    while ((r = getline(&line, &cap, f)) >= 0) {
        char *save = NULL, *tok;
        if (r && line[r - 1] == '\n') line[--r] = 0;
        if (first) {
            first = 0;
            if (strncmp(line, "memprof-snapshot ", 17)) {
                free(line);
                fclose(f);
                view_free(v);
                return cli_fail("%s: not a memprof snapshot (make one with memprof snapshot)", path);
            }
            continue;
        }
        if (!strncmp(line, "pid ", 4)) v->pid = atoi(line + 4);
        else if (!strncmp(line, "time ", 5)) v->ts = atof(line + 5);
        else if (!strncmp(line, "mode ", 5)) {
            snprintf(v->mode, sizeof v->mode, "%s", line + 5);
            v->exact = !strcmp(v->mode, "exact"); /* the file's text, not the wire's */
        }
        else if (!strncmp(line, "frame\t", 6)) {
            unsigned id, ln, fl;
            char *file, *func;
            strtok_r(line, "\t", &save);
            id = (unsigned)atoi(strtok_r(NULL, "\t", &save) ?: "0");
            ln = (unsigned)atoi(strtok_r(NULL, "\t", &save) ?: "0");
            fl = (unsigned)atoi(strtok_r(NULL, "\t", &save) ?: "0");
            file = strtok_r(NULL, "\t", &save);
            func = strtok_r(NULL, "\t", &save);
            if (!file || !func || frame_slot(v, id) < 0) continue;
            frame_set(v, id, file, func, ln, fl);
        } else if (!strncmp(line, "stack\t", 6)) {
            struct stack s = {0};
            double vals[6];
            strtok_r(line, "\t", &save);
            for (int i = 0; i < 6; i++) vals[i] = atof(strtok_r(NULL, "\t", &save) ?: "0");
            s.live = vals[0], s.ab = vals[1], s.ac = vals[2], s.fb = vals[3], s.fc = vals[4], s.rate = vals[5];
            s.frames = malloc(64 * sizeof *s.frames);
            size_t fcap = 64;
            while (s.frames && (tok = strtok_r(NULL, "\t", &save))) {
                unsigned id = (unsigned)atoi(tok);
                if (id >= v->nframes || !v->frames[id].used) continue;
                if (s.n == fcap) {
                    unsigned *nf = realloc(s.frames, (fcap *= 2) * sizeof *nf);
                    if (!nf) break;
                    s.frames = nf;
                }
                s.frames[s.n++] = id;
            }
            if (!s.n) {
                free(s.frames);
                continue;
            }
            if (v->nstacks == scap) {
                struct stack *ns = realloc(v->stacks, (scap = scap ? scap * 2 : 256) * sizeof *ns);
                if (!ns) break;
                v->stacks = ns;
            }
            v->stacks[v->nstacks++] = s;
        }
    }
    free(line);
    fclose(f);
    if (first) return cli_fail("%s: empty file", path);
    return 0;
}

struct growth {
    const char *key;
    char loc[1200];
    double a, b;
};

static int growth_cmp(const void *x, const void *y)
{
    const struct growth *p = x, *q = y;
    double dp = p->b - p->a, dq = q->b - q->a;
    return dp < dq ? 1 : dp > dq ? -1 : strcmp(p->loc, q->loc);
}

static void diff_by(const struct view *a, const struct view *b, enum by by, int limit)
{
    struct row *ra, *rb;
    size_t na = rows_build(a, by, SORT_OWN, &ra), nb = rows_build(b, by, SORT_OWN, &rb), n = 0;
    struct growth *g = calloc(na + nb + 1, sizeof *g);
    char x[32], y[32], z[32];
    if (!g) return;
    for (size_t i = 0; i < nb; i++) {
        g[n].key = rb[i].key;
        g[n].b = rb[i].own;
        location(b, &rb[i], by, g[n].loc, sizeof g[n].loc);
        for (size_t k = 0; k < na; k++)
            if (!strcmp(ra[k].key, rb[i].key)) g[n].a = ra[k].own;
        n++;
    }
    for (size_t k = 0; k < na; k++) {
        int found = 0;
        for (size_t i = 0; i < nb && !found; i++) found = !strcmp(ra[k].key, rb[i].key);
        if (found) continue;
        g[n].key = ra[k].key;
        g[n].a = ra[k].own;
        location(a, &ra[k], by, g[n].loc, sizeof g[n].loc);
        n++;
    }
    qsort(g, n, sizeof *g, growth_cmp);
    printf("by %s:\n", by == BY_LINE ? "line" : "function");
    for (size_t i = 0, shown = 0; i < n && (int)shown < limit; i++) {
        double d = g[i].b - g[i].a;
        if (fabs(d) < 1) continue;
        printf("  %s%10s  %10s -> %-10s  %s\n", d >= 0 ? "+" : "-", cli_bytes(fabs(d), x, sizeof x),
               cli_bytes(g[i].a, y, sizeof y), cli_bytes(g[i].b, z, sizeof z), g[i].loc);
        shown++;
    }
    free(g);
    rows_free(ra, na);
    rows_free(rb, nb);
}

int cli_parse_pid(const char *s, int *pid)
{
    pid_t p = mp_parse_pid(s);
    if (p <= 0) return -1;
    *pid = (int)p;
    return 0;
}

int cli_parse_session(const char *s, unsigned *id)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (!*s || *end || errno || v == 0 || v > 0xffffffffUL || s[0] == '-') return -1;
    *id = (unsigned)v;
    return 0;
}

void cli_who(int pid, unsigned session_id, char *out, size_t len)
{
    if (session_id) snprintf(out, len, "session %u", session_id);
    else snprintf(out, len, "pid %d", pid);
}

/* One history point as a view: one single-frame stack per site. */
static void view_from_point(struct view *v, const Memprof__AllocData *d, const Memprof__AllocPoint *p)
{
    memset(v, 0, sizeof *v);
    v->pid = d->session ? d->session->pid : 0;
    v->ts = p->t;
    view_frames(v, d);
    v->stacks = calloc(p->n_sites + 1, sizeof *v->stacks);
    for (size_t i = 0; v->stacks && i < p->n_sites; i++) {
        unsigned f = p->sites[i]->frame;
        struct stack *st = &v->stacks[v->nstacks];
        if (f >= v->nframes || !v->frames[f].used || !(st->frames = malloc(sizeof *st->frames))) continue;
        st->frames[0] = f;
        st->n = 1;
        st->live = p->sites[i]->live_bytes;
        v->nstacks++;
    }
}

#define WINDOW_SLACK 0.5 /* history points are a second apart: take one within half a second */

static int diff_window(int pid, unsigned session_id, double window, int limit)
{
    char err[MP_ERRLEN], who[48], x[32], y[32], z[32];
    Envelope *reply;
    const Memprof__AllocData *d;
    const Memprof__AllocPoint *p0 = NULL, *p1;
    struct view a, b;
    double span;
    cli_who(pid, session_id, who, sizeof who);
    if (alloc_fetch(pid, session_id, 1, &reply, err) < 0) return cli_fail("%s", err);
    d = reply->alloc_data;
    if (d->n_history < 2) {
        wire_free(reply);
        return cli_fail("%s: no history yet (one point a second from the first report): try again in a moment", who);
    }
    p1 = d->history[d->n_history - 1];
    for (size_t i = d->n_history; i-- > 0 && !p0;)
        if (d->history[i]->t <= p1->t - window + WINDOW_SLACK) p0 = d->history[i];
    span = p1->t - d->history[0]->t;
    if (!p0 || p0 == p1) {
        cli_fail("%s: the history reaches back %.1f s only, not %g s (it starts at the first report after attach; "
                 "an attached session keeps the last ten minutes)", who, span, window);
        wire_free(reply);
        return 1;
    }
    if (!p1->n_sites && p1->live_bytes >= 1) {
        wire_free(reply);
        return cli_fail("memprofd keeps no per-line history: it is older than this memprof (restart it: memprofd stop)");
    }
    view_from_point(&a, d, p0);
    view_from_point(&b, d, p1);
    printf("live: %s -> %s (%s%s) over %.1f s\n", cli_bytes(p0->live_bytes, x, sizeof x),
           cli_bytes(p1->live_bytes, y, sizeof y), p1->live_bytes >= p0->live_bytes ? "+" : "-",
           cli_bytes(fabs(p1->live_bytes - p0->live_bytes), z, sizeof z), p1->t - p0->t);
    diff_by(&a, &b, BY_LINE, limit);
    diff_by(&a, &b, BY_FUNCTION, limit);
    if (p0->other_live_bytes >= 1024 || p1->other_live_bytes >= 1024)
        printf("(not itemized: %s then %s held by sites smaller than the 256 largest)\n",
               cli_bytes(p0->other_live_bytes, x, sizeof x), cli_bytes(p1->other_live_bytes, y, sizeof y));
    view_free(&a);
    view_free(&b);
    wire_free(reply);
    return 0;
}

int cmd_diff(int argc, char **argv)
{
    static struct option opts[] = {{"limit", required_argument, 0, 'l'},  {"socket", required_argument, 0, 's'},
                                   {"pid", required_argument, 0, 'p'},    {"window", required_argument, 0, 'w'},
                                   {"session", required_argument, 0, 'S'}, {0}};
    int c, limit = 20, pid = 0;
    unsigned session_id = 0;
    double window = 0;
    char *end;
    struct view a, b;
    char x[32], y[32], z[32];
    double la, lb;
    if (cli_wants_help(argc, argv)) {
        fputs(usage_diff, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'l': limit = atoi(optarg); break;
        case 's': client_socket_opt = optarg; break;
        case 'p':
            if (cli_parse_pid(optarg, &pid) < 0) return cli_fail("--pid: '%s' is not a pid", optarg);
            break;
        case 'S':
            if (cli_parse_session(optarg, &session_id) < 0) return cli_fail("--session: '%s' is not a session id", optarg);
            break;
        case 'w':
            window = strtod(optarg, &end);
            if (end == optarg || *end || !(window > 0) || !isfinite(window))
                return cli_fail("--window: expected a number of seconds above 0, not '%s'", optarg);
            break;
        default: fputs(usage_diff, stderr); return 3;
        }
    }
    if (pid || session_id || window > 0) {
        if (optind < argc) return cli_fail("unexpected argument '%s' (two snapshot files, or --pid with --window)",
                                           argv[optind]);
        if (!pid && !session_id) return cli_fail("--window needs --pid PID (or --session ID)");
        if (!(window > 0)) return cli_fail("--pid needs --window SECONDS: how far back to compare");
        return diff_window(pid, session_id, window, limit);
    }
    if (argc - optind != 2) {
        fputs(usage_diff, stderr);
        return cli_fail("expected two snapshot files, or --pid PID --window SECONDS");
    }
    if (load_snapshot(argv[optind], &a)) return 1;
    if (load_snapshot(argv[optind + 1], &b)) {
        view_free(&a);
        return 1;
    }
    la = view_live(&a), lb = view_live(&b);
    printf("live: %s -> %s (%s%s) over %.1f s\n", cli_bytes(la, x, sizeof x), cli_bytes(lb, y, sizeof y),
           lb >= la ? "+" : "-", cli_bytes(fabs(lb - la), z, sizeof z), b.ts - a.ts);
    if (a.pid != b.pid) printf("(snapshots of different pids: %d and %d)\n", a.pid, b.pid);
    diff_by(&a, &b, BY_LINE, limit);
    diff_by(&a, &b, BY_FUNCTION, limit);
    view_free(&a);
    view_free(&b);
    return 0;
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
    struct row *rows;
    size_t n, shown = 0;
    char err[MP_ERRLEN], g[32], l[32];
    memset(&v, 0, sizeof v);
    if (fetch_data(pid, &v, err) < 0) return; /* no tracking: nothing to rank */
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
    qsort(suspects, nsuspects, sizeof *suspects, suspect_cmp);
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
