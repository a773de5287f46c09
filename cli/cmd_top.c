/* cmd_top.c -- `memprof top`: a live view of where an attached process allocates and what it holds. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "cli/alloc_view.h"
#include "cli/commands.h"
#include "client/client.h"

static const char *about_top =
    "Live view of where an attached process allocates and what it holds, like\n"
    "py-spy top. Rows are lines or functions; OWN LIVE is memory still held that\n"
    "was allocated directly there, TOTAL LIVE includes what its callees allocated.\n"
    "In sampling mode figures are unbiased estimates (Poisson sampling by bytes).\n"
    "What __init__/__new__ allocate is shown at the line that created the object\n"
    "(whoever keeps the object holds it); --no-fold shows it inside __init__.\n"
    "What library code (the standard library, site-/dist-packages) allocates is\n"
    "shown at the line of your code that called it, where one did, and library\n"
    "lines get no rows; --libraries shows them, with what they allocated.\n"
    "Sessions attached with --native also count what C code (numpy, extensions)\n"
    "allocates with malloc/mmap: the header splits tracked live into Python and\n"
    "native, NATIVE is the share of OWN LIVE allocated by C code, and\n"
    "--native-only shows only native allocations.\n"
    "On a terminal it refreshes in place, fitted to the window (long locations\n"
    "elided, as many rows as fit); keys: q quit, l by line, f by function, s cycle\n"
    "the sort column, p pause, ? or h help. Rows whose every figure is zero come\n"
    "last. With --once or when stdout is not a terminal it prints one snapshot.\n"
    "--json prints machine-readable snapshots.\n";

static const char *example_top =
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

/* The terminal the view is drawn on: its size (cols 0: not a terminal, nothing is fitted) and what it shows. */
struct screen {
    int cols, lines;
    int paused, help;
};

static double sort_key(const struct alloc_row *r, enum sort sort)
{
    return sort == SORT_OWN ? r->own : sort == SORT_TOTAL ? r->total : sort == SORT_RATE ? r->rate : r->allocs;
}

/* Every figure of the row reads 0 (a caller of what was freed): nothing to look at. */
static int row_zero(const struct alloc_row *r)
{
    return r->own < 0.5 && r->total < 0.5 && r->rate < 0.5 && r->allocs < 0.5;
}

static int tail_cmp(const void *a, const void *b)
{
    const struct alloc_row *x = a, *y = b;
    if (row_zero(x) != row_zero(y)) return row_zero(x) - row_zero(y);
    if (x->rate != y->rate) return x->rate < y->rate ? 1 : -1;
    if (x->allocs != y->allocs) return x->allocs < y->allocs ? 1 : -1;
    if (x->total != y->total) return x->total < y->total ? 1 : -1;
    return strcmp(x->key, y->key);
}

/* Rows tied at 0 in the sort column (the sort column's tail) ordered by what they still show: a line allocating
 * 14 MiB/s that holds nothing comes before the dozens of its callers whose every figure is zero, which go last. */
static void zero_rows_last(struct alloc_row *rows, size_t n, enum sort sort)
{
    size_t k = n;
    while (k > 0 && sort_key(&rows[k - 1], sort) <= 0) k--;
    if (n - k > 1) qsort(rows + k, n - k, sizeof *rows, tail_cmp);
}

/* Columns s takes on a UTF-8 terminal (continuation bytes take none). */
static size_t text_cols(const char *s)
{
    size_t n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

/* s cut to at most cols columns, on a character boundary. */
static char *cut_cols(char *s, size_t cols)
{
    size_t n = 0;
    for (char *p = s; *p; p++)
        if (((unsigned char)*p & 0xc0) != 0x80 && n++ == cols) {
            *p = 0;
            break;
        }
    return s;
}

/* A location fitted to cols columns: leading directories give way first ("/srv/app/pkg/m.py:3 (f)" becomes
 * ".../pkg/m.py:3 (f)"), so that the file, line and function stay; if that is not enough, the middle. */
static void elide(char *loc, size_t cols)
{
    char out[1200];
    size_t n = text_cols(loc);
    char *first = strchr(loc, '/');
    if (n <= cols) return;
    for (char *p = first ? strchr(first + 1, '/') : NULL; p; p = strchr(p + 1, '/')) {
        if ((size_t)(first - loc) + 3 + text_cols(p) > cols) continue;
        snprintf(out, sizeof out, "%.*s...%s", (int)(first - loc), loc, p);
        strcpy(loc, out);
        return;
    }
    if (cols < 8) {
        cut_cols(loc, cols);
        return;
    }
    {
        size_t head = (cols - 3) / 3, tail = cols - 3 - head, got;
        char *h = loc, *t = loc + strlen(loc);
        for (got = 0; *h; h++)
            if (((unsigned char)*h & 0xc0) != 0x80 && got++ == head) break;
        for (got = 0; t > h && got < tail;)
            if (((unsigned char)*--t & 0xc0) != 0x80) got++;
        snprintf(out, sizeof out, "%.*s...%s", (int)(h - loc), loc, t);
        strcpy(loc, out);
    }
}

/* The figures under the title, each a field: one line off a terminal ("  " between), packed into its width on one. */
static int figures(const struct view *v, double live, char f[8][200])
{
    char a[32], b[32], c[32], d[32];
    int n = 0;
    snprintf(f[n++], 200, "RSS %s", cli_bytes(v->rss, a, sizeof a));
    if (v->has_native)
        snprintf(f[n++], 200, "tracked live %s (peak %s) = Python %s + native %s%s", cli_bytes(live, a, sizeof a),
                 cli_bytes(v->peak_live, b, sizeof b), cli_bytes(v->live_python, c, sizeof c),
                 cli_bytes(v->live_native, d, sizeof d), alloc_native_only ? " [native only]" : "");
    else
        snprintf(f[n++], 200, "tracked live %s (peak %s)", cli_bytes(live, a, sizeof a),
                 cli_bytes(v->peak_live, b, sizeof b));
    snprintf(f[n++], 200, "alloc %s/s", cli_bytes(v->alloc_rate, a, sizeof a));
    snprintf(f[n++], 200, "samples/s %.1f", v->samples_rate);
    if (!v->exact) snprintf(f[n++], 200, "mode %s (1 per %s)", v->mode, cli_bytes(v->rate_bytes, a, sizeof a));
    else snprintf(f[n++], 200, "mode %s", v->mode);
    snprintf(f[n++], 200, "agent overhead ~%.1f%%", 100 * v->overhead);
    if (v->dropped > 0) snprintf(f[n++], 200, "dropped %.0f", v->dropped);
    return n;
}

/* Tracked live counts bytes asked for; RSS, pages touched: memory allocated and never written (bytes(n), calloc,
 * numpy.zeros) is not resident, so RSS can be well below tracked live. Said when it is, lest it read as a fault. */
static const char *rss_note(const struct view *v, double live)
{
    if (v->rss > 0 && live > 1.1 * v->rss && live - v->rss >= 1048576)
        return "(RSS is below tracked live: memory allocated but not yet written, such as bytes(n) or calloc's, "
               "is not resident)";
    return NULL;
}

/* NATIVE: the share of OWN LIVE that C code allocated ("" when the session does not track native allocations) */
static void native_share(const struct view *v, const struct alloc_row *r, char *out, size_t len)
{
    out[0] = 0;
    if (v->has_native)
        snprintf(out, len, " %5.0f%%", r->own > 0 ? fmax(0, fmin(100, 100 * r->own_native / r->own)) : 0.0);
}

static const char *help_text[] = {
    "keys",
    "  q        quit",
    "  l / f    rows by line / by function",
    "  s        next sort column: own live, total live, alloc rate, allocations",
    "  p        pause (the figures stay as they are; p again resumes)",
    "  ? / h    this help (again: back to the table)",
    "columns",
    "  OWN LIVE    held now, allocated at this line (function) itself",
    "  TOTAL LIVE  held now, allocated here or in what it called",
    "  %LIVE       OWN LIVE as a share of tracked live",
    "  NATIVE      the share of OWN LIVE allocated by C code (--native)",
    "  ALLOC/S     bytes allocated here per second, lately",
    "  ALLOCS      allocations here since tracking began (sampled: estimates)",
    "Rows whose every figure is zero come last. Long locations lose their",
    "leading directories (...) to fit the window.",
    NULL};

/* One line of the screen: cut to its width; the last line has no newline, so that the screen never scrolls. */
static void screen_line(FILE *o, const struct screen *scr, int *used, const char *text)
{
    char line[2048];
    if (*used >= scr->lines) return;
    snprintf(line, sizeof line, "%s", text);
    cut_cols(line, (size_t)scr->cols);
    fprintf(o, "%s%s", line, ++*used < scr->lines ? "\n" : "");
}

/* The view on a terminal: the title and figures packed into its width, as many rows as fit between them and the
 * key legend on the last line, each location elided to the width; or the help in place of the rows. */
static void draw_top(FILE *o, const struct view *v, const struct alloc_row *rows, size_t n, enum by by, enum sort sort,
                     int limit, const struct screen *scr)
{
    char line[2048], loc[1200], cmd[121], ver[64], where[512], fields[8][200], a[32], b[32], c[32], d[32], nat[16];
    double live = view_live(v);
    int used = 0, nf = figures(v, live, fields), room;
    size_t cols = (size_t)scr->cols, len;
    snprintf(line, sizeof line, "%spid %d  Python %s  %s  %s%s", scr->paused ? "[paused]  " : "", v->pid,
             cli_esc(v->python, ver, sizeof ver), v->state, cli_esc(v->where, where, sizeof where),
             cli_esc(v->command, cmd, sizeof cmd));
    screen_line(o, scr, &used, line);
    if (v->exited) screen_line(o, scr, &used, "the process has exited: final figures");
    line[0] = 0, len = 0;
    for (int k = 0; k < nf; k++) { /* pack the fields, a new line when the next does not fit */
        size_t w = text_cols(fields[k]);
        if (len && len + 2 + w > cols) {
            screen_line(o, scr, &used, line);
            line[0] = 0, len = 0;
        }
        snprintf(line + strlen(line), sizeof line - strlen(line), "%s%s", len ? "  " : "", fields[k]);
        len += (len ? 2 : 0) + w;
    }
    screen_line(o, scr, &used, line);
    if (rss_note(v, live)) screen_line(o, scr, &used, "(RSS below tracked live: allocated, not yet written, pages)");
    if (v->native_note[0]) screen_line(o, scr, &used, cli_esc(v->native_note, loc, sizeof loc));
    if (v->native_late[0]) screen_line(o, scr, &used, cli_esc(v->native_late, loc, sizeof loc));
    if (scr->help) {
        for (int k = 0; help_text[k] && used < scr->lines - 1; k++) screen_line(o, scr, &used, help_text[k]);
        while (used < scr->lines - 1) screen_line(o, scr, &used, "");
        screen_line(o, scr, &used, "? or h: back to the table   q quit");
        return;
    }
    snprintf(line, sizeof line, "%10s %10s %6s%s %11s %7s  LOCATION (by %s)", "OWN LIVE", "TOTAL LIVE", "%LIVE",
             v->has_native ? " NATIVE" : "", "ALLOC/S", "ALLOCS", by == BY_LINE ? "line" : "function");
    screen_line(o, scr, &used, line);
    room = scr->lines - used - 1; /* the legend's line */
    for (size_t i = 0; i < n && (int)i < room && (limit <= 0 || (int)i < limit); i++) {
        native_share(v, &rows[i], nat, sizeof nat);
        snprintf(line, sizeof line, "%10s %10s %5.1f%%%s %9s/s %7s  ", cli_bytes(rows[i].own, a, sizeof a),
                 cli_bytes(rows[i].total, b, sizeof b), live > 0 ? 100 * rows[i].own / live : 0.0, nat,
                 cli_bytes(rows[i].rate, c, sizeof c), human_count(rows[i].allocs, d, sizeof d));
        location(v, &rows[i], by, loc, sizeof loc);
        len = text_cols(line);
        elide(loc, cols > len ? cols - len : 0);
        snprintf(line + strlen(line), sizeof line - strlen(line), "%s", loc);
        screen_line(o, scr, &used, line);
    }
    if (!n) screen_line(o, scr, &used, "(no allocations recorded yet)");
    while (used < scr->lines - 1) screen_line(o, scr, &used, "");
    snprintf(line, sizeof line, "q quit  l/f line/function  s sort (%s)  p %s  ? help", sort_names[sort],
             scr->paused ? "resume" : "pause");
    screen_line(o, scr, &used, line);
}

static void print_top(FILE *o, const struct view *v, enum by by, enum sort sort, int limit, int json,
                      const struct screen *scr)
{
    struct alloc_row *rows;
    size_t n = rows_build(v, by, sort, &rows);
    double live = view_live(v);
    char a[32], b[32], c[32], d[32], loc[1200];
    int exited = v->exited;
    zero_rows_last(rows, n, sort);
    if (json) {
        fprintf(o, "{\"pid\": %d, \"state\": \"%s\", \"python\": ", v->pid, v->state);
        cli_json_str(o, v->python);
        fprintf(o, ", \"command\": ");
        cli_json_str(o, v->command);
        fprintf(o,
                ", \"mode\": \"%s\", \"sample_rate\": %.0f, \"rss\": %.0f, \"live\": %.0f, \"peak_live\": %.0f, "
                "\"alloc_rate\": %.1f, \"samples_per_s\": %.2f, \"samples\": %.0f, \"dropped\": %.0f, "
                "\"overhead\": %.5f, \"timestamp\": %.3f, \"by\": \"%s\", \"live_python\": %.0f, \"live_native\": %.0f, "
                "\"native_only\": %s, \"native_note\": ",
                v->mode, v->rate_bytes, v->rss, live, v->peak_live, v->alloc_rate, v->samples_rate, v->samples,
                v->dropped, v->overhead, v->ts, by == BY_LINE ? "line" : "function", v->live_python, v->live_native,
                alloc_native_only ? "true" : "false");
        cli_json_str(o, v->native_note);
        fprintf(o, ", \"native_late_note\": ");
        cli_json_str(o, v->native_late);
        fprintf(o, ", \"rows\": [");
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
    if (scr && scr->cols > 0) {
        draw_top(o, v, rows, n, by, sort, limit, scr);
        rows_free(rows, n);
        return;
    }
    char cmd[121], ver[64], where[512], fields[8][200];
    int nf = figures(v, live, fields);
    fprintf(o, "pid %d  %s%s  Python %s  %s\n", v->pid, cli_esc(v->where, where, sizeof where),
            cli_esc(v->command, cmd, sizeof cmd), cli_esc(v->python, ver, sizeof ver), v->state);
    if (exited) fprintf(o, "the process has exited: final figures\n");
    for (int k = 0; k < nf; k++) fprintf(o, "%s%s", k ? "  " : "", fields[k]);
    fputc('\n', o);
    if (rss_note(v, live)) fprintf(o, "%s\n", rss_note(v, live));
    /* --native: libraries that could not be patched, at the attach and loaded since (one line each) */
    if (v->native_note[0]) fprintf(o, "%s\n", cli_esc(v->native_note, loc, sizeof loc));
    if (v->native_late[0]) fprintf(o, "%s\n", cli_esc(v->native_late, loc, sizeof loc));
    fprintf(o, "%12s %12s %6s%s %12s %10s  %s   [by %s, sorted by %s]\n", "OWN LIVE", "TOTAL LIVE", "%LIVE",
            v->has_native ? " NATIVE" : "", "ALLOC/S", "ALLOCS", "LOCATION", by == BY_LINE ? "line" : "function",
            sort_names[sort]);
    for (size_t i = 0; i < n && (limit <= 0 || (int)i < limit); i++) {
        char nat[16] = "";
        location(v, &rows[i], by, loc, sizeof loc);
        native_share(v, &rows[i], nat, sizeof nat);
        fprintf(o, "%12s %12s %5.1f%%%s %10s/s %10s  %s\n", cli_bytes(rows[i].own, a, sizeof a),
                cli_bytes(rows[i].total, b, sizeof b), live > 0 ? 100 * rows[i].own / live : 0.0, nat,
                cli_bytes(rows[i].rate, c, sizeof c), human_count(rows[i].allocs, d, sizeof d), loc);
    }
    if (!n) fprintf(o, "(no allocations recorded yet)\n");
    rows_free(rows, n);
}

static volatile sig_atomic_t resized;

static void on_winch(int sig)
{
    (void)sig;
    resized = 1;
}

/* The terminal's size now (0 x 0 when it does not say: then nothing is fitted). */
static void screen_size(struct screen *scr)
{
    struct winsize ws;
    scr->cols = scr->lines = 0;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 2)
        scr->cols = ws.ws_col, scr->lines = ws.ws_row;
}

int cmd_top(int argc, char **argv)
{
    int pid = 0, once = 0, json = 0, limit = 20, by = BY_LINE, no_fold = 0, have = 0, st;
    double interval = 1.0;
    enum sort sort = SORT_OWN;
    struct view v;
    struct screen scr = {0};
    struct sigaction sa = {.sa_handler = on_winch}; /* no SA_RESTART: a resize ends the wait and redraws */
    const struct opt opts[] = {
        CLI_PID_OPT(&pid),
        {"by", 0, OPT_CHOICE, &by, NULL, "rows by line (default) or by function", .choices = "line|function"},
        {"once", 0, OPT_FLAG, &once, NULL, "print one snapshot and exit"},
        {"json", 0, OPT_FLAG, &json, NULL, "one JSON object per snapshot"},
        {"limit", 0, OPT_INT, &limit, "N", "at most N rows (default 20, 0 = all)", 0, 1000000},
        {"interval", 0, OPT_SECONDS, &interval, "SECONDS", "refresh every SECONDS (default 1)", 0.1, 86400},
        {"no-fold", 0, OPT_FLAG, &no_fold, NULL, "show what __init__/__new__ allocate inside them"},
        {"libraries", 0, OPT_FLAG, &alloc_show_libraries, NULL,
         "show what library code allocates at its own lines, not at yours that called it"},
        {"native-only", 0, OPT_FLAG, &alloc_native_only, NULL,
         "only what C code allocated (sessions tracking native allocations)"},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof top", opts, .about = about_top, .more = example_top};
    if (opts_parse(&cmd, argc, argv, &st) < 0) return st;
    alloc_fold_ctors = !no_fold;
    if (once || !isatty(STDOUT_FILENO)) {
        if ((st = view_get(pid, &v))) return st;
        print_top(stdout, &v, by, sort, limit, json, NULL);
        view_free(&v);
        return 0;
    }
    tty_raw();
    sigaction(SIGWINCH, &sa, NULL);
    fputs("\033[?25l", stdout);
    for (int fetch = 1;; fetch = !scr.paused) {
        double deadline;
        char *buf = NULL;
        size_t len = 0;
        FILE *mem;
        if (fetch || !have) { /* paused: the same figures, redrawn for a key or a resize */
            if (have) view_free(&v);
            have = 0;
            if ((st = view_get(pid, &v))) return st;
            have = 1;
        }
        if (!(mem = open_memstream(&buf, &len))) return cli_fail("out of memory");
        resized = 0;
        screen_size(&scr);
        print_top(mem, &v, by, sort, limit, json, json ? NULL : &scr);
        fclose(mem);
        if (!json) fputs("\033[H\033[2J", stdout);
        fwrite(buf, 1, len, stdout);
        fflush(stdout);
        free(buf);
        deadline = mp_now() + interval;
        while (mp_now() < deadline || scr.paused) {
            struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
            char ch;
            int ms = scr.paused ? -1 : (int)((deadline - mp_now()) * 1000) + 1, r = poll(&p, 1, ms);
            if (resized) break;
            if (r <= 0) continue;
            if (read(STDIN_FILENO, &ch, 1) != 1) {
                sleep(1); /* stdin closed: keep refreshing */
                if (scr.paused) scr.paused = 0; /* nobody can resume it */
                continue;
            }
            if (ch == 'q' || ch == 'Q') {
                tty_restore();
                if (have) view_free(&v);
                return 0;
            }
            if (ch == 'l') by = BY_LINE;
            else if (ch == 'f') by = BY_FUNCTION;
            else if (ch == 's') sort = (sort + 1) % SORT_N;
            else if (ch == 'p') scr.paused = !scr.paused;
            else if (ch == '?' || ch == 'h') scr.help = !scr.help;
            else continue;
            break; /* redraw now */
        }
    }
}
