/* cmd_export.c -- `memprof export`: a session's allocation data for other
 * tools, as JSON, collapsed stacks (flamegraph.pl), pprof or speedscope. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "client/client.h"
#include "common/pprof.h"

static const char *about_export =
    "Write the allocation data of an attached or ended session (memprof status\n"
    "lists them; --session ID picks one, e.g. after its pid was reused):\n"
    "  json       frames, stacks (frame ids, innermost first, \"native\": true for\n"
    "             what C code allocated under them, memprofd attach --native;\n"
    "             with --native-frames \"native_frames\": the C call chain, innermost\n"
    "             first, frames with \"native\": true, \"module\" and \"module_offset\")\n"
    "             with their figures,\n"
    "             totals and the history (one point a second: totals and the\n"
    "             live bytes of the 256 largest sites, as [frame id, bytes]).\n"
    "  collapsed  Brendan Gregg's folded stacks of live bytes, outermost frame\n"
    "             first, one stack a line: FILE:FUNCTION:LINE;...;FILE:FUNCTION:LINE BYTES\n"
    "             for flamegraph.pl or speedscope; native allocations end in a\n"
    "             [native] frame, followed with --native-frames by their C call\n"
    "             chain: FUNCTION (MODULE), or MODULE+0xOFFSET where no symbol has it.\n"
    "  pprof      a gzip'd pprof heap profile (go tool pprof, Parca, Pyroscope):\n"
    "             sample types alloc_objects, alloc_space, inuse_objects and\n"
    "             inuse_space (shown first; alloc_space with --allocated), one\n"
    "             location per Python frame. Needs -o or a redirected stdout.\n"
    "  speedscope speedscope's JSON: profiles 'live bytes' and 'allocated bytes'.\n"
    "In sampling mode the figures are estimates. Default: json to stdout.\n";

static const char *example_export =
    "examples:\n"
    "  $ memprof export --pid 4242 --format collapsed -o live.folded\n"
    "  wrote live.folded: 14 stacks, 1.6 MiB live (collapsed)\n"
    "  $ flamegraph.pl --countname bytes live.folded > live.svg\n"
    "  $ memprof export --pid 4242 --format pprof -o heap.pb.gz\n"
    "  wrote heap.pb.gz: 14 stacks, 1.6 MiB live (pprof)\n"
    "  $ go tool pprof -top heap.pb.gz\n"
    "  $ memprof export --session 3 | python3 -m json.tool | head\n";

/* Non-finite numbers are not JSON. */
static void json_num(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, "%.15g", v);
    else fputs("null", f);
}

static void json_field(FILE *f, const char *name, double v, int comma)
{
    fprintf(f, "%s\"%s\": ", comma ? ", " : "", name);
    json_num(f, v);
}

static void export_json(FILE *f, const Memprof__AllocData *d)
{
    const Memprof__SessionInfo *s = d->session;
    double live = 0, allocated = 0;
    for (size_t i = 0; i < d->n_stats; i++) {
        live += d->stats[i]->alloc_bytes - d->stats[i]->free_bytes;
        allocated += d->stats[i]->alloc_bytes;
    }
    fputs("{\"format\": \"memprof-export 1\", \"session\": {", f);
    if (s) {
        fprintf(f, "\"id\": %u, \"pid\": %d, \"state\": ", s->id, s->pid);
        cli_json_str(f, wire_state_name(s->state));
        fputs(", \"python\": ", f);
        cli_json_str(f, s->python_version);
        fputs(", \"executable\": ", f);
        cli_json_str(f, s->executable);
        fputs(", \"argv\": [", f);
        for (size_t i = 0; i < s->n_argv; i++) {
            if (i) fputs(", ", f);
            cli_json_str(f, s->argv[i]);
        }
        fputs("], \"mode\": ", f);
        cli_json_str(f, wire_mode_name(s->mode));
        json_field(f, "attached_since", s->attached_since, 1);
    }
    fprintf(f, "},\n \"mode\": \"%s\", \"sample_rate\": %llu,\n \"totals\": {", d->exact ? "exact" : "sampling",
            (unsigned long long)d->sample_rate);
    json_field(f, "timestamp", d->timestamp, 0);
    json_field(f, "first_report", d->first_report, 1);
    json_field(f, "rss", (double)d->rss_bytes, 1);
    json_field(f, "live", live, 1);
    json_field(f, "peak_live", d->peak_live, 1);
    json_field(f, "allocated", allocated, 1);
    json_field(f, "alloc_rate", d->alloc_rate, 1);
    json_field(f, "samples", (double)d->samples, 1);
    json_field(f, "samples_per_s", d->samples_rate, 1);
    json_field(f, "dropped", (double)d->dropped, 1);
    json_field(f, "overhead", d->overhead, 1);
    fputs("},\n \"frames\": [", f);
    for (size_t i = 0; i < d->n_frames; i++) {
        const Memprof__AllocFrame *fr = d->frames[i];
        fprintf(f, "%s\n  {\"id\": %u, \"file\": ", i ? "," : "", fr->id);
        cli_json_str(f, fr->file);
        fputs(", \"function\": ", f);
        cli_json_str(f, fr->function);
        fprintf(f, ", \"line\": %u, \"first_line\": %u", fr->line, fr->first_line);
        if (fr->native) {
            fputs(", \"native\": true, \"module\": ", f);
            cli_json_str(f, fr->module);
            fprintf(f, ", \"module_offset\": %llu", (unsigned long long)fr->module_offset);
        }
        fputc('}', f);
    }
    fputs("],\n \"stacks\": [", f);
    for (size_t i = 0, n = 0; i < d->n_stacks; i++) {
        const Memprof__AllocStack *st = d->stacks[i];
        const Memprof__AllocStat *t = NULL;
        for (size_t k = 0; k < d->n_stats && !t; k++)
            if (d->stats[k]->stack == st->id) t = d->stats[k];
        if (!t) continue;
        fprintf(f, "%s\n  {\"id\": %u, \"frames\": [", n++ ? "," : "", st->id);
        for (size_t k = 0; k < st->n_frames; k++) fprintf(f, "%s%u", k ? ", " : "", st->frames[k]);
        fputs("]", f);
        if (st->native) fputs(", \"native\": true", f);
        if (st->n_native_frames) {
            fputs(", \"native_frames\": [", f);
            for (size_t k = 0; k < st->n_native_frames; k++) fprintf(f, "%s%u", k ? ", " : "", st->native_frames[k]);
            fputs("]", f);
        }
        json_field(f, "live", t->alloc_bytes - t->free_bytes, 1);
        json_field(f, "alloc_bytes", t->alloc_bytes, 1);
        json_field(f, "alloc_count", t->alloc_count, 1);
        json_field(f, "free_bytes", t->free_bytes, 1);
        json_field(f, "free_count", t->free_count, 1);
        json_field(f, "peak_live", t->peak_live, 1);
        json_field(f, "alloc_rate", t->alloc_rate, 1);
        fputs("}", f);
    }
    fputs("],\n \"history\": [", f);
    for (size_t i = 0; i < d->n_history; i++) {
        const Memprof__AllocPoint *p = d->history[i];
        fprintf(f, "%s\n  {", i ? "," : "");
        json_field(f, "t", p->t, 0);
        json_field(f, "live", p->live_bytes, 1);
        json_field(f, "allocated", p->alloc_bytes, 1);
        json_field(f, "rss", (double)p->rss_bytes, 1);
        json_field(f, "samples", (double)p->samples, 1);
        json_field(f, "other_live", p->other_live_bytes, 1);
        fputs(", \"sites\": [", f);
        for (size_t k = 0; k < p->n_sites; k++) {
            fprintf(f, "%s[%u, ", k ? ", " : "", p->sites[k]->frame);
            json_num(f, p->sites[k]->live_bytes);
            fputc(']', f);
        }
        fputs("]}", f);
    }
    fputs("]}\n", f);
}

/* ------------------------------------------------------------ collapsed */

struct folded {
    char *stack;
    double bytes;
};

static int folded_by_stack(const void *a, const void *b)
{
    return strcmp(((const struct folded *)a)->stack, ((const struct folded *)b)->stack);
}

static int folded_by_bytes(const void *a, const void *b)
{
    const struct folded *x = a, *y = b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : strcmp(x->stack, y->stack);
}

/* A frame's name in folded stacks: ';' separates frames, a line ends a stack. */
static void put_name(FILE *f, const char *s)
{
    for (; s && *s; s++) fputc(*s == ';' ? ',' : *s == '\n' || *s == '\r' ? ' ' : *s, f);
}

/* Folded stacks of live bytes, largest first; returns how many, -1 on error. */
static long export_collapsed(FILE *f, const Memprof__AllocData *d, double *total)
{
    size_t nids = 0, n = 0;
    const Memprof__AllocFrame **by_id;
    struct folded *rows = calloc(d->n_stacks + 1, sizeof *rows);
    for (size_t i = 0; i < d->n_frames; i++)
        if (d->frames[i]->id + 1 > nids) nids = d->frames[i]->id + 1;
    by_id = calloc(nids + 1, sizeof *by_id);
    if (!rows || !by_id) {
        free(rows);
        free(by_id);
        return -1;
    }
    for (size_t i = 0; i < d->n_frames; i++) by_id[d->frames[i]->id] = d->frames[i];
    for (size_t i = 0; i < d->n_stacks; i++) {
        const Memprof__AllocStack *st = d->stacks[i];
        const Memprof__AllocStat *t = NULL;
        char *buf = NULL;
        size_t len = 0;
        FILE *m;
        int any = 0;
        for (size_t k = 0; k < d->n_stats && !t; k++)
            if (d->stats[k]->stack == st->id) t = d->stats[k];
        if (!t || t->alloc_bytes - t->free_bytes < 0.5 || !(m = open_memstream(&buf, &len))) continue;
        for (size_t k = st->n_frames; k-- > 0;) { /* outermost first */
            const Memprof__AllocFrame *fr = st->frames[k] < nids ? by_id[st->frames[k]] : NULL;
            if (!fr) continue;
            if (any++) fputc(';', m);
            put_name(m, fr->file);
            fputc(':', m);
            put_name(m, fr->function);
            fprintf(m, ":%u", fr->line);
        }
        if (any && st->native) fputs(";[native]", m); /* C code under the line that called it */
        for (size_t k = st->n_native_frames; any && k-- > 0;) { /* outermost first: "function (module)" */
            const Memprof__AllocFrame *fr = st->native_frames[k] < nids ? by_id[st->native_frames[k]] : NULL;
            const char *mod = fr && fr->module ? strrchr(fr->module, '/') : NULL;
            if (!fr) continue;
            mod = mod ? mod + 1 : fr && fr->module ? fr->module : "?";
            fputc(';', m);
            put_name(m, fr->function);
            if (!strstr(fr->function, "+0x")) { /* an unnamed frame's name is its module already */
                fputs(" (", m);
                put_name(m, mod);
                fputc(')', m);
            }
        }
        fclose(m);
        if (!any) {
            free(buf);
            continue;
        }
        rows[n++] = (struct folded){buf, t->alloc_bytes - t->free_bytes};
    }
    /* distinct stack ids may print alike (same lines): one line each */
    qsort(rows, n, sizeof *rows, folded_by_stack);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        if (out && !strcmp(rows[out - 1].stack, rows[i].stack)) {
            rows[out - 1].bytes += rows[i].bytes;
            free(rows[i].stack);
        } else {
            rows[out++] = rows[i];
        }
    }
    qsort(rows, out, sizeof *rows, folded_by_bytes);
    *total = 0;
    for (size_t i = 0; i < out; i++) {
        fprintf(f, "%s %.0f\n", rows[i].stack, rows[i].bytes);
        *total += rows[i].bytes;
        free(rows[i].stack);
    }
    free(rows);
    free(by_id);
    return (long)out;
}

int cmd_export(int argc, char **argv)
{
    enum { JSON, COLLAPSED, PPROF, SPEEDSCOPE };
    int format = JSON, pid = 0, allocated = 0, to_stdout, rc;
    unsigned session_id = 0;
    const char *out = "-", *rss = NULL;
    char err[MP_ERRLEN], b[32];
    Envelope *reply;
    FILE *f;
    long nstacks = 0;
    int faulted;
    char reply_note[256];
    double total = 0;
    const struct opt opts[] = {
        CLI_PID_OR_SESSION_OPT(&pid),
        CLI_SESSION_OPT(&session_id),
        {"rss", 0, OPT_STRING, &rss, "FILE", "what memprof rss saved (its option save FILE) instead\n"
                                             "of a session: bytes faulted in, not allocated"},
        {"format", 0, OPT_CHOICE, &format, NULL, "what to write (default json; see above)",
         .choices = "json|collapsed|pprof|speedscope"},
        {"output", 'o', OPT_STRING, &out, "FILE", "write to FILE (default: stdout)"},
        {"allocated", 0, OPT_FLAG, &allocated, NULL, "pprof: show alloc_space first instead of inuse_space"},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof export", opts,
                                .synopsis = "(--pid PID | --session ID | --rss FILE)\n"
                                            "                      [--format json|collapsed|pprof|speedscope] [-o FILE]\n"
                                            "                      [--allocated] [--socket PATH]",
                                .about = about_export, .more = example_export};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if (!pid && !session_id && !rss) return opts_usage_error(&cmd, "--pid PID, --session ID or --rss FILE is required");
    to_stdout = !strcmp(out, "-");
    if (format == PPROF && to_stdout && isatty(STDOUT_FILENO))
        return cli_fail("--format pprof writes binary data: give -o FILE or redirect stdout");
    if (rss) {
        if (alloc_load(rss, &reply, err) < 0) return cli_fail("%s", err);
    } else if (alloc_fetch(pid, session_id, format == JSON, &reply, err) < 0) {
        return cli_fail_call(err);
    }
    faulted = reply->alloc_data->rss_note[0] != 0;
    snprintf(reply_note, sizeof reply_note, "%s", reply->alloc_data->rss_note);
    if (!(f = to_stdout ? stdout : fopen(out, "w"))) {
        wire_free(reply);
        return cli_fail("cannot write %s: %s", out, strerror(errno));
    }
    if (format == COLLAPSED) {
        nstacks = export_collapsed(f, reply->alloc_data, &total);
    } else if (format == SPEEDSCOPE) {
        nstacks = export_speedscope(f, reply->alloc_data, &total) < 0 ? -1 : (long)reply->alloc_data->n_stats;
    } else if (format == PPROF) {
        uint8_t *gz;
        size_t len;
        if (pprof_heap(reply->alloc_data, allocated, &gz, &len, err) < 0) {
            wire_free(reply);
            if (!to_stdout) fclose(f), unlink(out);
            return cli_fail("%s", err);
        }
        fwrite(gz, 1, len, f);
        free(gz);
        nstacks = (long)reply->alloc_data->n_stats;
        for (size_t i = 0; i < reply->alloc_data->n_stats; i++) {
            const Memprof__AllocStat *t = reply->alloc_data->stats[i];
            total += (allocated ? t->alloc_bytes : t->alloc_bytes - t->free_bytes);
        }
    } else {
        export_json(f, reply->alloc_data);
    }
    wire_free(reply);
    if (nstacks < 0 || (to_stdout ? fflush(f) : fclose(f)) != 0 || (to_stdout && ferror(f))) {
        int e = nstacks < 0 ? ENOMEM : errno;
        if (!to_stdout) unlink(out);
        return cli_fail("cannot write %s: %s", to_stdout ? "stdout" : out, strerror(e));
    }
    if (!to_stdout) {
        static const char *names[] = {"json", "collapsed", "pprof", "speedscope"};
        if (format == JSON)
            printf("wrote %s (json)\n", out);
        else
            printf("wrote %s: %ld stacks, %s %s (%s)\n", out, nstacks, cli_bytes(total, b, sizeof b),
                   faulted ? "faulted in" : format == PPROF && allocated ? "allocated" : "live", names[format]);
        if (faulted && format != JSON) printf("%s\n", reply_note);
    }
    return 0;
}
