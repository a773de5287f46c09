/* cmd_top.c -- `memprof top`: a live view of where an attached process allocates and what it holds. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "client.h"
#include "commands.h"
#include "alloc_view.h"

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
    "On a terminal it refreshes in place; keys: q quit, l by line, f by function,\n"
    "s cycle the sort column, p pause. With --once or when stdout is not a\n"
    "terminal it prints one snapshot. --json prints machine-readable snapshots.\n";

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
    char cmd[121], ver[64], where[512];
    fprintf(o, "pid %d  %s%s  Python %s  %s%s\n", v->pid, cli_esc(v->where, where, sizeof where),
            cli_esc(v->command, cmd, sizeof cmd), cli_esc(v->python, ver, sizeof ver), v->state,
            paused ? "  [paused]" : "");
    if (exited) fprintf(o, "the process has exited: final figures\n");
    fprintf(o, "RSS %s  tracked live %s (peak %s)", cli_bytes(v->rss, a, sizeof a), cli_bytes(live, b, sizeof b),
            cli_bytes(v->peak_live, c, sizeof c));
    if (v->has_native)
        fprintf(o, " = Python %s + native %s%s", cli_bytes(v->live_python, a, sizeof a),
                cli_bytes(v->live_native, b, sizeof b), alloc_native_only ? " [native only]" : "");
    fprintf(o, "  alloc %s/s  samples/s %.1f  mode %s", cli_bytes(v->alloc_rate, d, sizeof d), v->samples_rate, v->mode);
    if (!v->exact) fprintf(o, " (1 per %s)", cli_bytes(v->rate_bytes, a, sizeof a));
    fprintf(o, "  agent overhead ~%.1f%%", 100 * v->overhead);
    if (v->dropped > 0) fprintf(o, "  dropped %.0f", v->dropped);
    fputc('\n', o);
    /* --native: libraries that could not be patched, at the attach and loaded since (one line each) */
    if (v->native_note[0]) fprintf(o, "%s\n", cli_esc(v->native_note, loc, sizeof loc));
    if (v->native_late[0]) fprintf(o, "%s\n", cli_esc(v->native_late, loc, sizeof loc));
    fprintf(o, "%12s %12s %6s%s %12s %10s  %s   [by %s, sorted by %s]\n", "OWN LIVE", "TOTAL LIVE", "%LIVE",
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
    int pid = 0, once = 0, json = 0, limit = 20, by = BY_LINE, no_fold = 0, paused = 0, st;
    double interval = 1.0;
    enum sort sort = SORT_OWN;
    struct view v;
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
            if ((st = view_get(pid, &v))) {
                if (mem) fclose(mem);
                free(buf);
                return st;
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

