/* cmd_flame.c -- `memprof flamegraph` (one self-contained HTML page: d3-flame-graph, inlined at build time)
 * and `memprof export --format speedscope`: a session's stacks as a tree of frames or speedscope's JSON. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "client/client.h"

extern const char flame_page[]; /* build/flame.html, embedded by flame_page.S */

static const char *about_flame =
    "Write an interactive flame graph of an attached or ended session as one\n"
    "self-contained HTML file (d3-flame-graph; nothing is fetched when it is\n"
    "opened): frame width is live bytes, or with --allocated all bytes allocated\n"
    "since tracking began. Click a frame to zoom, hover for its figures, search\n"
    "for a function, file or file:line to highlight it (FILE.html#search=TERM\n"
    "opens with TERM searched). In sampling mode the figures are estimates.\n";

static const char *example_flame =
    "example:\n"
    "  $ memprof flamegraph --pid 4242 -o flame.html\n"
    "  wrote flame.html: 41 stacks, 6.1 MiB live\n";

static const char *base_name(const char *p)
{
    const char *s = p ? strrchr(p, '/') : NULL;
    return s ? s + 1 : p ? p : "?";
}

/* The figure a stack contributes: live or allocated bytes. */
static double weight(const Memprof__AllocStat *t, int allocated)
{
    double v = allocated ? t->alloc_bytes : t->alloc_bytes - t->free_bytes;
    return isfinite(v) && v >= 0.5 ? v : 0;
}

/* stacks by id and frames by id, for lookups */
struct index {
    const Memprof__AllocStack **stack;
    const Memprof__AllocFrame **frame;
    uint32_t nstack, nframe;
};

static int index_build(struct index *x, const Memprof__AllocData *d)
{
    x->nstack = x->nframe = 0;
    for (size_t i = 0; i < d->n_stacks; i++)
        if (d->stacks[i]->id >= x->nstack) x->nstack = d->stacks[i]->id + 1;
    for (size_t i = 0; i < d->n_frames; i++)
        if (d->frames[i]->id >= x->nframe) x->nframe = d->frames[i]->id + 1;
    x->stack = calloc(x->nstack + 1, sizeof *x->stack);
    x->frame = calloc(x->nframe + 1, sizeof *x->frame);
    if (!x->stack || !x->frame) {
        free(x->stack), free(x->frame);
        return -1;
    }
    for (size_t i = 0; i < d->n_stacks; i++) x->stack[d->stacks[i]->id] = d->stacks[i];
    for (size_t i = 0; i < d->n_frames; i++) x->frame[d->frames[i]->id] = d->frames[i];
    return 0;
}

static const Memprof__AllocFrame *frame_of(const struct index *x, uint32_t id)
{
    return id < x->nframe ? x->frame[id] : NULL;
}

/* ------------------------------------------------------------ speedscope */

/* speedscope's file format (https://www.speedscope.app/file-format-schema.json): shared frames, two sampled
 * profiles (live bytes, allocated bytes), each sample a stack of frame indices from the root. */
int export_speedscope(FILE *f, const Memprof__AllocData *d, double *live_total)
{
    struct index x;
    long *slot;
    size_t nslot = 0;
    if (index_build(&x, d) < 0) return -1;
    if (!(slot = calloc(x.nframe + 1, sizeof *slot))) {
        free(x.stack), free(x.frame);
        return -1;
    }
    fputs("{\"$schema\": \"https://www.speedscope.app/file-format-schema.json\",\n \"exporter\": \"memprof\",\n", f);
    fputs(" \"name\": ", f);
    {
        char name[256];
        const Memprof__SessionInfo *s = d->session;
        snprintf(name, sizeof name, "memprof pid %d%s%s", s ? (int)s->pid : 0, s && s->n_argv > 1 ? " " : "",
                 s && s->n_argv > 1 ? base_name(s->argv[1]) : "");
        cli_json_str(f, name);
    }
    fputs(",\n \"activeProfileIndex\": 0,\n \"shared\": {\"frames\": [", f);
    for (uint32_t i = 0; i < x.nframe; i++) {
        const Memprof__AllocFrame *fr = x.frame[i];
        if (!fr) continue;
        slot[i] = (long)nslot;
        fprintf(f, "%s\n  {\"name\": ", nslot++ ? "," : "");
        cli_json_str(f, fr->function);
        fputs(", \"file\": ", f);
        cli_json_str(f, fr->file);
        fprintf(f, ", \"line\": %u}", fr->line);
    }
    fputs("]},\n \"profiles\": [", f);
    for (int allocated = 0; allocated < 2; allocated++) {
        double total = 0;
        size_t n = 0;
        for (size_t i = 0; i < d->n_stats; i++) total += weight(d->stats[i], allocated);
        fprintf(f, "%s\n  {\"type\": \"sampled\", \"name\": \"%s\", \"unit\": \"bytes\", \"startValue\": 0, "
                   "\"endValue\": %.0f,\n   \"samples\": [",
                allocated ? "," : "", allocated ? "allocated bytes" : "live bytes", total);
        for (int pass = 0; pass < 2; pass++) { /* samples, then their weights in the same order */
            n = 0;
            if (pass) fputs("],\n   \"weights\": [", f);
            for (size_t i = 0; i < d->n_stats; i++) {
                const Memprof__AllocStat *t = d->stats[i];
                const Memprof__AllocStack *st = t->stack < x.nstack ? x.stack[t->stack] : NULL;
                double w = weight(t, allocated);
                int any = 0;
                if (!st || !w) continue;
                for (size_t k = 0; k < st->n_frames; k++) any |= frame_of(&x, st->frames[k]) != NULL;
                if (!any) continue;
                fputs(n++ ? ", " : "", f);
                if (pass) {
                    fprintf(f, "%.0f", w);
                    continue;
                }
                fputc('[', f);
                any = 0;
                for (size_t k = st->n_frames; k-- > 0;) /* outermost first */
                    if (frame_of(&x, st->frames[k])) fprintf(f, "%s%ld", any++ ? "," : "", slot[st->frames[k]]);
                for (size_t k = st->n_native_frames; k-- > 0;) /* then C code under the line (--native-frames) */
                    if (frame_of(&x, st->native_frames[k]))
                        fprintf(f, "%s%ld", any++ ? "," : "", slot[st->native_frames[k]]);
                fputc(']', f);
            }
        }
        fputs("]}", f);
        if (!allocated) *live_total = total;
    }
    fputs("]}\n", f);
    free(slot), free(x.stack), free(x.frame);
    return 0;
}

/* ------------------------------------------------------------ flame graph */

struct node {
    uint32_t frame;      /* an AllocFrame id */
    double value;        /* this frame and its callees */
    struct node *child, *next;
};

static struct node *child_of(struct node *parent, uint32_t frame)
{
    struct node *c;
    for (c = parent->child; c; c = c->next)
        if (c->frame == frame) return c;
    if (!(c = calloc(1, sizeof *c))) return NULL;
    c->frame = frame;
    c->next = parent->child;
    parent->child = c;
    return c;
}

static void tree_free(struct node *n)
{
    while (n) {
        struct node *next = n->next;
        tree_free(n->child);
        free(n);
        n = next;
    }
}

/* JSON that stays inside a <script> element: "</" written as "<\/". */
static void js_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f) fprintf(f, "\\u%04x", ch);
        else if (ch == '<' && s[1] == '/') fputs("<\\/", f);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void tree_json(FILE *f, const struct node *n, const struct index *x, int root, const char *root_name)
{
    const Memprof__AllocFrame *fr = root ? NULL : frame_of(x, n->frame);
    fputs("{\"name\": ", f);
    if (fr) {
        char name[512];
        const char *mod = base_name(fr->file);
        size_t n = strlen(mod);
        if (fr->line) snprintf(name, sizeof name, "%s (%s:%u)", fr->function, mod, fr->line);
        /* a native frame without debug info has no line: "ffi_call (libffi.so.8)", not "(libffi.so.8:0)"; an
         * unnamed one, "libffi.so.8+0x6f79", names its module already */
        else if (!strncmp(fr->function, mod, n) && fr->function[n] == '+') snprintf(name, sizeof name, "%s", fr->function);
        else snprintf(name, sizeof name, "%s (%s)", fr->function, mod);
        js_str(f, name);
        fputs(", \"file\": ", f);
        js_str(f, fr->file);
        fprintf(f, ", \"line\": %u", fr->line);
    } else {
        js_str(f, root_name);
    }
    fprintf(f, ", \"value\": %.0f", n->value);
    if (n->child) {
        fputs(", \"children\": [", f);
        for (const struct node *c = n->child; c; c = c->next) {
            tree_json(f, c, x, 0, NULL);
            if (c->next) fputc(',', f);
        }
        fputc(']', f);
    }
    fputc('}', f);
}

static void html_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* The page with its @MEMPROF_NAME@ fields and the data filled in; unknown fields are left as they are. */
static void write_page(FILE *f, const struct node *root, const struct index *x, const char *title,
                       const char *subtitle, const char *unit, const char *root_name)
{
    static const char data_mark[] = "/*@MEMPROF_DATA@*/null";
    const char *p = flame_page;
    while (*p) {
        const char *at = strchr(p, '@'), *end;
        if (!at) {
            fputs(p, f);
            break;
        }
        if (at > p && !strncmp(at - 2, data_mark, sizeof data_mark - 1)) {
            fwrite(p, 1, (size_t)(at - 2 - p), f);
            tree_json(f, root, x, 1, root_name);
            p = at - 2 + sizeof data_mark - 1;
            continue;
        }
        fwrite(p, 1, (size_t)(at - p), f);
        end = strchr(at + 1, '@');
        if (end && !strncmp(at, "@MEMPROF_TITLE@", 15)) html_text(f, title);
        else if (end && !strncmp(at, "@MEMPROF_SUBTITLE@", 18)) html_text(f, subtitle);
        else if (end && !strncmp(at, "@MEMPROF_UNIT@", 14)) fputs(unit, f);
        else {
            fputc('@', f);
            p = at + 1;
            continue;
        }
        p = end + 1;
    }
}

/* Builds the tree of d's stacks (outermost frame at the root); returns the stacks drawn, -1 without memory. */
static long build_tree(struct node *root, const Memprof__AllocData *d, const struct index *x, int allocated)
{
    long n = 0;
    for (size_t i = 0; i < d->n_stats; i++) {
        const Memprof__AllocStat *t = d->stats[i];
        const Memprof__AllocStack *st = t->stack < x->nstack ? x->stack[t->stack] : NULL;
        double w = weight(t, allocated);
        struct node *at = root;
        if (!st || !w) continue;
        root->value += w;
        for (size_t k = st->n_frames; k-- > 0;) {
            if (!frame_of(x, st->frames[k])) continue;
            if (!(at = child_of(at, st->frames[k]))) return -1;
            at->value += w;
        }
        for (size_t k = st->n_native_frames; k-- > 0;) { /* C code under the line (--native-frames) */
            if (!frame_of(x, st->native_frames[k])) continue;
            if (!(at = child_of(at, st->native_frames[k]))) return -1;
            at->value += w;
        }
        n++;
    }
    return n;
}

/* The page is HTML: a name ending in .svg (or anything else) would hold the wrong thing under a promising name. */
static int html_name(const char *out)
{
    size_t n = strlen(out);
    return (n > 5 && !strcasecmp(out + n - 5, ".html")) || (n > 4 && !strcasecmp(out + n - 4, ".htm"));
}

int cmd_flamegraph(int argc, char **argv)
{
    int pid = 0, allocated = 0, rc;
    unsigned session_id = 0;
    const char *out = NULL;
    char err[MP_ERRLEN], b1[32], b2[32], title[512], subtitle[1024], when[64], mode[96];
    Envelope *reply;
    const Memprof__AllocData *d;
    const Memprof__SessionInfo *s;
    struct node root = {0};
    struct index x;
    long nstacks;
    FILE *f;
    time_t ts;
    const struct opt opts[] = {
        CLI_PID_OR_SESSION_OPT(&pid),
        CLI_SESSION_OPT(&session_id),
        {"output", 'o', OPT_STRING, &out, "FILE.html", "the HTML file to write", .required = 1},
        {"allocated", 0, OPT_FLAG, &allocated, NULL, "frame width is all bytes allocated, not live bytes"},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof flamegraph", opts,
                                .synopsis = "(--pid PID | --session ID) -o FILE.html [--allocated]\n"
                                            "                          [--socket PATH]",
                                .about = about_flame, .more = example_flame};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if (!pid && !session_id) return opts_usage_error(&cmd, "--pid PID or --session ID is required");
    if (!html_name(out))
        return opts_usage_error(&cmd, "%s: memprof flamegraph writes an HTML page: use an .html name", out);
    if (alloc_fetch(pid, session_id, 0, &reply, err) < 0) return cli_fail_call(err);
    d = reply->alloc_data;
    s = d->session;
    if (index_build(&x, d) < 0) {
        wire_free(reply);
        return cli_fail("out of memory");
    }
    if ((nstacks = build_tree(&root, d, &x, allocated)) < 0) {
        tree_free(root.child), free(x.stack), free(x.frame), wire_free(reply);
        return cli_fail("out of memory");
    }
    snprintf(title, sizeof title, "%s bytes of pid %d%s%s", allocated ? "Allocated" : "Live", s ? (int)s->pid : pid,
             s && s->n_argv > 1 ? " " : "", s && s->n_argv > 1 ? base_name(s->argv[1]) : "");
    ts = (time_t)d->timestamp;
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&ts));
    snprintf(mode, sizeof mode, "sampling every %s: estimates", cli_bytes((double)d->sample_rate, b2, sizeof b2));
    snprintf(subtitle, sizeof subtitle, "%s total, %ld stacks; Python %s, session %u (%s), %s; data of %s",
             cli_bytes(root.value, b1, sizeof b1), nstacks, s && s->python_version ? s->python_version : "?",
             s ? s->id : 0, s ? wire_state_name(s->state) : "?", d->exact ? "exact mode" : mode,
             d->timestamp > 0 ? when : "-");
    if (!(f = fopen(out, "w"))) {
        int e = errno;
        tree_free(root.child), free(x.stack), free(x.frame), wire_free(reply);
        return cli_fail("cannot write %s: %s", out, strerror(e));
    }
    write_page(f, &root, &x, title, subtitle, allocated ? "allocated" : "live", allocated ? "all allocations" : "all live");
    tree_free(root.child), free(x.stack), free(x.frame), wire_free(reply);
    if (fclose(f) != 0) {
        int e = errno;
        unlink(out);
        return cli_fail("cannot write %s: %s", out, strerror(e));
    }
    printf("wrote %s: %ld stacks, %s %s\n", out, nstacks, cli_bytes(root.value, b1, sizeof b1),
           allocated ? "allocated" : "live");
    return 0;
}
