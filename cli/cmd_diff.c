/* cmd_diff.c -- `memprof snapshot` and `memprof diff`: what grew between two snapshots or over the last seconds. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/alloc_view.h"
#include "cli/commands.h"
#include "client/client.h"

static const char *about_snapshot =
    "Save the allocation data of an attached (or exited) process to FILE, for\n"
    "`memprof diff`. The format is text: a header, then one line per frame\n"
    "(frame ID LINE FIRST FILE FUNCTION, tab-separated) and per stack\n"
    "(stack LIVE ALLOC_BYTES ALLOCS FREE_BYTES FREES RATE FRAME_IDS...), then\n"
    "end FRAMES STACKS, so that a file cut short is refused, not diffed.\n";

static const char *example_snapshot =
    "example:\n"
    "  $ memprof snapshot --pid 4242 -o before.mps\n"
    "  wrote before.mps: 212 stacks, 9.8 MiB live (sampling)\n";

static const char *about_diff =
    "What grew (and shrank) in live memory, by line and by function, largest\n"
    "growth first: between two snapshot files A and B (memprof snapshot), or over\n"
    "the last SECONDS of an attached or exited process, from the daemon's history\n"
    "(one point a second for ten minutes, the 256 largest sites of each point).\n"
    "--session ID picks one of the daemon's sessions (memprof status), e.g. an\n"
    "ended one whose pid was reused.\n";

static const char *example_diff =
    "examples:\n"
    "  $ memprof diff before.mps after.mps\n"
    "  live: 9.8 MiB -> 15.9 MiB (+6.1 MiB) over 60.0 s\n"
    "  by line:\n"
    "      +6.1 MiB   6.1 MiB -> 12.2 MiB  service.py:36 (handle)\n"
    "  $ memprof diff --pid 4242 --window 30\n"
    "  live: 1.2 MiB -> 2.0 MiB (+820.3 KiB) over 30.0 s\n"
    "  by line:\n"
    "    +806.7 KiB   1.2 MiB -> 2.0 MiB   service.py:36 (handle)\n";

/* Version 2 ends with "end FRAMES STACKS"; version 1 (no trailer) is still read, but its last line must be whole. */
#define SNAPSHOT_VERSION 2

static void tabfree(char *s)
{
    for (; *s; s++)
        if (*s == '\t' || *s == '\n') *s = ' ';
}

int cmd_snapshot(int argc, char **argv)
{
    int pid = 0, rc;
    const char *out = NULL;
    struct view v;
    FILE *f;
    char b[32];
    size_t nframes = 0;
    const struct opt opts[] = {
        CLI_PID_OPT(&pid),
        {"output", 'o', OPT_STRING, &out, "FILE", "the snapshot file to write", .required = 1},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof snapshot", opts, .about = about_snapshot, .more = example_snapshot};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if ((rc = view_get(pid, &v))) return rc;
    if (!(f = fopen(out, "w"))) return cli_fail("%s: %s", out, strerror(errno));
    tabfree(v.command);
    fprintf(f, "memprof-snapshot %d\npid %d\ntime %.3f\nmode %s\nrss %.0f\npython %s\ncommand %s\n", SNAPSHOT_VERSION,
            v.pid, v.ts, v.mode, v.rss, v.python, v.command);
    for (size_t i = 0; i < v.nframes; i++) {
        if (!v.frames[i].used) continue;
        nframes++;
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
    fprintf(f, "end\t%zu\t%zu\n", nframes, v.nstacks); /* the trailer: a file cut short has none */
    if (fclose(f) != 0) return cli_fail("%s: %s", out, strerror(errno));
    printf("wrote %s: %zu stacks, %s live (%s)\n", out, v.nstacks, cli_bytes(view_live(&v), b, sizeof b), v.mode);
    view_free(&v);
    return 0;
}

static int load_snapshot(const char *path, struct view *v)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0, scap = 0, nframes = 0, nstacks = 0;
    ssize_t r;
    int first = 1, version = 0, whole = 1, ended = 0, bad_end = 0;
    memset(v, 0, sizeof *v);
    if (!f) return cli_fail("%s: %s", path, strerror(errno));
    while ((r = getline(&line, &cap, f)) >= 0) {
        char *save = NULL, *tok;
        whole = r && line[r - 1] == '\n';
        if (whole) line[--r] = 0;
        if (first) {
            first = 0;
            if (strncmp(line, "memprof-snapshot ", 17) || (version = atoi(line + 17)) < 1) {
                free(line);
                fclose(f);
                view_free(v);
                return cli_fail("%s: not a memprof snapshot (make one with memprof snapshot)", path);
            }
            if (version > SNAPSHOT_VERSION) {
                free(line);
                fclose(f);
                view_free(v);
                return cli_fail("%s: a version %d snapshot, newer than this memprof reads (%d)", path, version,
                                SNAPSHOT_VERSION);
            }
            continue;
        }
        if (ended) { /* nothing follows the trailer */
            bad_end = 1;
            break;
        }
        if (!strncmp(line, "end\t", 4)) {
            char *end;
            unsigned long fr = strtoul(line + 4, &end, 10), st = *end == '\t' ? strtoul(end + 1, &end, 10) : 0;
            ended = 1;
            bad_end = *end || fr != nframes || st != nstacks;
            continue;
        }
        if (!strncmp(line, "frame\t", 6)) nframes++;
        else if (!strncmp(line, "stack\t", 6)) nstacks++;
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
    if (!whole || (version >= 2 && (!ended || bad_end))) {
        view_free(v);
        if (bad_end) return cli_fail("%s: damaged snapshot (its end line does not match its contents)", path);
        return cli_fail("%s: truncated snapshot (the file stops before its end line): take the snapshot again", path);
    }
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
    struct alloc_row *ra, *rb;
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
    if (alloc_fetch(pid, session_id, 1, &reply, err) < 0) return cli_fail_call(err);
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
        return MP_EXIT_FAIL;
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
    int limit = 20, pid = 0, i, rc;
    unsigned session_id = 0;
    double window = 0;
    struct view a, b;
    char x[32], y[32], z[32];
    double la, lb;
    const struct opt opts[] = {
        {"pid", 0, OPT_PID, &pid, "PID", "compare the last SECONDS of this process's history"},
        CLI_SESSION_OPT(&session_id),
        {"window", 0, OPT_SECONDS, &window, "SECONDS", "how far back to compare (with --pid or --session)"},
        {"limit", 0, OPT_INT, &limit, "N", "at most N rows per table (default 20)", 0, 1000000},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof diff", opts,
                                .synopsis = "A B [--limit N] [--socket PATH]\n"
                                            "       memprof diff --pid PID --window SECONDS [--session ID] [--limit N]"
                                            " [--socket PATH]",
                                .args = "A B", .max_args = 2, .about = about_diff, .more = example_diff};
    if ((i = opts_parse(&cmd, argc, argv, &rc)) < 0) return rc;
    if (pid || session_id || window > 0) {
        if (i < argc)
            return opts_usage_error(&cmd, "unexpected argument '%s' (two snapshot files, or --pid with --window)",
                                    argv[i]);
        if (!pid && !session_id) return opts_usage_error(&cmd, "--window needs --pid PID (or --session ID)");
        if (!(window > 0)) return opts_usage_error(&cmd, "--pid needs --window SECONDS: how far back to compare");
        return diff_window(pid, session_id, window, limit);
    }
    if (argc - i != 2) return opts_usage_error(&cmd, "expected two snapshot files, or --pid PID --window SECONDS");
    if (load_snapshot(argv[i], &a)) return MP_EXIT_FAIL;
    if (load_snapshot(argv[i + 1], &b)) {
        view_free(&a);
        return MP_EXIT_FAIL;
    }
    if (b.ts < a.ts) { /* newer first: compare in time order, and say so, not "over -15.1 s" */
        struct view t = a;
        a = b, b = t;
        printf("(%s is the older snapshot, by %.1f s: showing %s -> %s)\n", argv[i + 1], b.ts - a.ts,
               argv[i + 1], argv[i]);
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
