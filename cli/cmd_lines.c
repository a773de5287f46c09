/* cmd_lines.c -- `memprof lines`: memory_profiler's line-by-line report of one function (also memprof run's). */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/alloc_view.h"
#include "cli/commands.h"
#include "client/client.h"
#include "common/exitcodes.h"

static const char *about_lines =
    "memory_profiler's line-by-line report for one function of an attached\n"
    "process, without a decorator or a restart. Increment is the net memory\n"
    "allocated by the line since attach and still held (including what the\n"
    "functions it calls allocated); Mem usage is the running sum of increments\n"
    "down the function; Occurrences counts allocations made at the line.\n"
    "Sampling mode estimates these; exact mode (memprofd attach --exact) counts.\n"
    "NAME is the function's qualified name (Class.method, outer.<locals>.inner:\n"
    "Python 3.11+) or its last part(s); when several functions answer to it,\n"
    "they are listed (file:def line, live) and nothing is printed (exit 2):\n"
    "give the qualified name or --file. Python 3.10 and older record plain names.\n"
    "With memprofd attach --native, C code's allocations count too; --native-only\n"
    "counts only them.\n"
    "The source is read through /proc/PID/root.\n";

static const char *example_lines =
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
        if (strrchr(f, '.') && edit_distance(name, strrchr(f, '.') + 1) < score) score = edit_distance(name, strrchr(f, '.') + 1);
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

/* One function NAME may mean: (file, qualified name, def line) and what it holds. */
struct cand {
    const char *file, *func;
    unsigned first;
    int exact;   /* NAME is its qualified name itself, not a suffix of it */
    double live; /* held under it (each stack once) */
};

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    return x->live < y->live ? 1 : x->live > y->live ? -1 : strcmp(x->file, y->file);
}

/* The functions of v that func names (alloc_name_match), in file when given
 * (with def line first: that one exactly), largest first: *out (free it), the count. */
static size_t candidates(const struct view *v, const char *func, const char *file, unsigned first, struct cand **out)
{
    struct cand *c = NULL;
    size_t n = 0, cap = 0, nexact = 0;
    for (size_t i = 0; i < v->nframes; i++) {
        const struct frame *f = &v->frames[i];
        int m = f->used ? alloc_name_match(f->func, func) : 0;
        size_t k;
        if (!m || (file && (first ? strcmp(f->file, file) || f->first != first : !strstr(f->file, file)))) continue;
        for (k = 0; k < n && !(c[k].first == f->first && !strcmp(c[k].func, f->func) && !strcmp(c[k].file, f->file)); k++) {}
        if (k < n) continue;
        if (n == cap) {
            struct cand *nc = realloc(c, (cap = cap ? 2 * cap : 16) * sizeof *nc);
            if (!nc) break;
            c = nc;
        }
        c[n++] = (struct cand){f->file, f->func, f->first, m == 2, 0};
        nexact += m == 2;
    }
    if (nexact) { /* a qualified name given: only the functions of exactly that name */
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].exact) c[k++] = c[i];
        n = k;
    }
    for (size_t s = 0; s < v->nstacks; s++)
        for (size_t k = 0; k < n; k++)
            for (size_t j = 0; j < v->stacks[s].n; j++) {
                const struct frame *f = &v->frames[v->stacks[s].frames[j]];
                if (f->first == c[k].first && !strcmp(f->func, c[k].func) && !strcmp(f->file, c[k].file)) {
                    c[k].live += v->stacks[s].live;
                    break;
                }
            }
    if (n > 1) qsort(c, n, sizeof *c, cand_cmp);
    *out = c;
    return n;
}

/* memory_profiler's report of function func (in a file matching file, with
 * def line first when non-zero) to o. Attach mode: Increment is what the line
 * allocated since attach and still holds. Run mode (memprof run): Increment is
 * the line's peak (the most its allocations held at once), like the RSS
 * increase memory_profiler sees while the line runs. func may be a qualified
 * name or its last part(s); several functions of that name are an error that
 * lists them, unless file tells them apart. 0, or the exit status after an error. */
static int lines_print(FILE *o, struct view *v, const char *func, const char *file, unsigned first, int run_mode)
{
    const char *chosen = NULL;
    unsigned maxline = 0, start, end;
    char near[512];
    double *inc = NULL, *occ = NULL;
    char **src;
    size_t nsrc;
    int pid = v->pid, exact = v->exact;
    struct cand *c;
    size_t nc = candidates(v, func, file, first, &c);
    if (nc > 1) {
        char list[1536], a[32];
        size_t l = 0;
        for (size_t i = 0; i < nc && i < 8 && l < sizeof list; i++)
            l += (size_t)snprintf(list + l, sizeof list - l, "%s%s (%s:%u, %s live)", i ? ", " : "", c[i].func,
                                  c[i].file, c[i].first, cli_bytes(c[i].live, a, sizeof a));
        if (nc > 8 && l < sizeof list) snprintf(list + l, sizeof list - l, ", and %zu more", nc - 8);
        cli_fail("pid %d: %zu functions are named '%s'%s%s: %s; give the qualified name%s or --file", pid, nc, func,
                 file ? " in " : "", file ? file : "", list,
                 strchr(c[0].func, '.') ? "" : " (Python 3.10 and older record no class: give the file)");
        free(c);
        return MP_EXIT_USAGE;
    }
    if (nc == 1) chosen = c[0].file, func = c[0].func, first = c[0].first; /* v's strings: live as long as v */
    free(c);
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
    int pid = 0, rc;
    const char *func = NULL, *file = NULL;
    struct view v;
    const struct opt opts[] = {
        CLI_PID_OPT(&pid),
        {"function", 0, OPT_STRING, &func, "NAME", "the function to report (qualified, Class.method, or its last part)",
         .required = 1},
        {"file", 0, OPT_STRING, &file, "FILE", "the file it is in (part of its path), when several functions share its name"},
        {"native-only", 0, OPT_FLAG, &alloc_native_only, NULL,
         "only what C code allocated (sessions tracking native allocations)"},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof lines", opts, .about = about_lines, .more = example_lines};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if ((rc = view_get(pid, &v))) return rc;
    rc = lines_print(stdout, &v, func, file, 0, 0);
    view_free(&v);
    return rc;
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

