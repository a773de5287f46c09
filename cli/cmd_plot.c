/* cmd_plot.c -- `memprof plot`: RSS and tracked heap of a session over time,
 * from the daemon's history, as one self-contained SVG (like mprof plot), the
 * heap's peaks labelled with the functions holding the memory there. */
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

static const char *about_plot =
    "Plot an attached or ended session's memory over time, like mprof plot: RSS\n"
    "and the tracked heap (live bytes of Python allocations since attach; with\n"
    "--native C code's too, stacked under it), from\n"
    "the daemon's history (one point a second, the last ten minutes). The peaks\n"
    "of the tracked heap are marked with the functions holding the most memory\n"
    "there. The output is one self-contained SVG (no scripts, fonts or images);\n"
    "-o - writes it to stdout. --session ID picks one of the daemon's sessions\n"
    "(memprof status), e.g. an ended one whose pid was reused.\n";

static const char *example_plot =
    "example:\n"
    "  $ memprof plot --pid 4242 -o mem.svg\n"
    "  wrote mem.svg: 61 points over 60.0 s; tracked heap peak 2.0 MiB at 60 s (handle 1.9 MiB)\n";

/* ------------------------------------------------------------ layout */

#define W 1000.0
#define H 600.0
#define LEFT 86.0
#define RIGHT 30.0
#define TOP 122.0
#define BOTTOM 74.0
#define MAX_PEAKS 3
#define PEAK_FUNCS 3

#define COLOR_RSS "#1f6fb4"
#define COLOR_HEAP "#d1495b"
#define COLOR_NATIVE "#6a4c93" /* the part of the tracked heap C code allocated (--native) */
#define COLOR_TEXT "#222"
#define COLOR_MUTED "#666"
#define FONT "font-family=\"DejaVu Sans, Verdana, Arial, Helvetica, sans-serif\""

struct func_share {
    const Memprof__AllocFrame *frame; /* one frame of the function, for its name */
    double live;
};

struct peak {
    size_t i;
    struct func_share top[PEAK_FUNCS];
    size_t ntop;
    double bx, by, bw, bh; /* label box */
};

struct plot {
    const Memprof__AllocData *d;
    const Memprof__AllocFrame **frame_by_id;
    const Memprof__AllocFrame **holder_by_id; /* comprehensions: the function running them */
    size_t nids;
    double t0, span, ymax, unit, ystep;
    const char *unit_name;
    const char *heap; /* what live_bytes is: "tracked heap", or "faulted in" (memprof rss --save) */
    int native;       /* a session that tracked native allocations (attach --native): stacked under the heap */
    struct peak peaks[MAX_PEAKS];
    size_t npeaks;
};

static double px(const struct plot *p, double t)
{
    return LEFT + (t - p->t0) / p->span * (W - LEFT - RIGHT);
}

static double py(const struct plot *p, double bytes)
{
    return H - BOTTOM - bytes / p->ymax * (H - TOP - BOTTOM);
}

/* 1, 2, 2.5 or 5 times a power of ten, near range/target. */
static double nice_step(double range, int target)
{
    double raw = range / target, mag, f;
    if (!(raw > 0)) return 1;
    mag = pow(10, floor(log10(raw)));
    f = raw / mag;
    return (f < 1.5 ? 1 : f < 2.25 ? 2 : f < 3.5 ? 2.5 : f < 7.5 ? 5 : 10) * mag;
}

static void scale_bytes(struct plot *p, double max)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    double top;
    if (max < 1) max = 1;
    while (u < 4 && max >= 1024 * pow(1024, u)) u++;
    p->unit = pow(1024, u);
    p->unit_name = units[u];
    p->ystep = nice_step(max / p->unit, 5);
    top = ceil(max * 1.06 / p->unit / p->ystep) * p->ystep;
    p->ymax = top * p->unit;
}

/* ------------------------------------------------------------ text */

/* Length of a valid UTF-8 sequence at s, 0 if invalid. */
static size_t utf8_len(const unsigned char *s)
{
    size_t n = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 2 && s[0] < 0xc2) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return n;
}

/* s as XML character data, at most max characters (… when cut); invalid
 * UTF-8 and control characters become '?' and ' '. */
static void xml_text(FILE *f, const char *s, size_t max)
{
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    for (size_t chars = 0; *u; chars++) {
        size_t n = utf8_len(u);
        if (chars + 1 == max && u[n ? n : 1]) {
            fputs("\xe2\x80\xa6", f);
            return;
        }
        if (!n) fputc('?', f), n = 1;
        else if (*u == '&') fputs("&amp;", f);
        else if (*u == '<') fputs("&lt;", f);
        else if (*u == '>') fputs("&gt;", f);
        else if (*u == '"') fputs("&quot;", f);
        else if (*u < 0x20 || *u == 0x7f) fputc(' ', f);
        else fwrite(u, 1, n, f);
        u += n;
    }
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (const unsigned char *u = (const unsigned char *)s; *u; n++) {
        size_t l = utf8_len(u);
        u += l ? l : 1;
    }
    return n;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path ? path : "", '/');
    return slash ? slash + 1 : path ? path : "";
}

static void command_of(const Memprof__SessionInfo *s, char *out, size_t len)
{
    out[0] = 0;
    for (size_t i = 0; s && i < s->n_argv; i++) {
        size_t l = strlen(out);
        snprintf(out + l, len - l, "%s%s", i ? " " : "", s->argv[i]);
    }
}

/* "12.5 MiB"-style tick label: the tick's value in the axis unit. */
static void tick_label(const struct plot *p, double v, char *out, size_t len)
{
    double n = round(v / p->unit * 1e6) / 1e6;
    if (n == 0) snprintf(out, len, "0");
    else snprintf(out, len, "%g %s", n, p->unit_name);
}

/* ------------------------------------------------------------ peaks */

static int share_cmp(const void *a, const void *b)
{
    const struct func_share *x = a, *y = b;
    return x->live < y->live ? 1 : x->live > y->live ? -1 : 0;
}

static int same_function(const Memprof__AllocFrame *a, const Memprof__AllocFrame *b)
{
    return a->first_line == b->first_line && !strcmp(a->function, b->function) && !strcmp(a->file, b->file);
}

/* The functions holding the most of a point's sites, largest first. */
static void peak_functions(const struct plot *p, struct peak *k)
{
    const Memprof__AllocPoint *pt = p->d->history[k->i];
    struct func_share *all = calloc(pt->n_sites + 1, sizeof *all);
    size_t n = 0;
    k->ntop = 0;
    if (!all) return;
    for (size_t s = 0; s < pt->n_sites; s++) {
        uint32_t id = pt->sites[s]->frame;
        const Memprof__AllocFrame *fr = id < p->nids ? p->holder_by_id[id] ? p->holder_by_id[id] : p->frame_by_id[id] : NULL;
        size_t j;
        if (!fr) continue;
        for (j = 0; j < n && !same_function(all[j].frame, fr); j++) {}
        if (j == n) all[n++] = (struct func_share){fr, 0};
        all[j].live += pt->sites[s]->live_bytes;
    }
    qsort(all, n, sizeof *all, share_cmp);
    for (size_t j = 0; j < n && k->ntop < PEAK_FUNCS; j++)
        if (j == 0 || all[j].live >= 0.05 * pt->live_bytes) k->top[k->ntop++] = all[j];
    free(all);
}

static int is_comprehension(const char *func)
{
    const char *d = strrchr(func, '.');
    func = d ? d + 1 : func; /* qualified names (3.11+): the last part */
    return !strcmp(func, "<listcomp>") || !strcmp(func, "<dictcomp>") || !strcmp(func, "<setcomp>") ||
           !strcmp(func, "<genexpr>");
}

static int is_ctor(const char *func)
{
    const char *d = strrchr(func, '.');
    func = d ? d + 1 : func;
    return !strcmp(func, "__init__") || !strcmp(func, "__new__") || !strcmp(func, "__post_init__");
}

/* Before 3.12 a comprehension runs as a function of its own: credit what it
 * holds to the function it runs in, found in the stacks. */
static void find_holders(struct plot *p)
{
    const Memprof__AllocData *d = p->d;
    for (size_t i = 0; i < d->n_stacks; i++) {
        const Memprof__AllocStack *st = d->stacks[i];
        for (size_t k = 0; k + 1 < st->n_frames; k++) {
            uint32_t id = st->frames[k], up = st->frames[k + 1];
            const Memprof__AllocFrame *fr = id < p->nids ? p->frame_by_id[id] : NULL;
            if (!fr || up >= p->nids || !p->frame_by_id[up]) break;
            if (is_ctor(fr->function)) continue; /* sites fold constructors into their caller */
            if (!is_comprehension(fr->function)) break;
            if (!p->holder_by_id[id]) p->holder_by_id[id] = p->frame_by_id[up];
        }
    }
    for (size_t id = 0; id < p->nids; id++) /* nested comprehensions: the outermost holder */
        for (int hops = 0; hops < 8 && p->holder_by_id[id] && is_comprehension(p->holder_by_id[id]->function); hops++) {
            const Memprof__AllocFrame *up = p->holder_by_id[p->holder_by_id[id]->id];
            if (!up) break;
            p->holder_by_id[id] = up;
        }
}

static int peak_by_i(const void *a, const void *b)
{
    const struct peak *x = a, *y = b;
    return (x->i > y->i) - (x->i < y->i);
}

/* The highest point of the tracked heap, and up to MAX_PEAKS - 1 other local
 * maxima standing out (prominence) by a quarter of it. */
static void find_peaks(struct plot *p)
{
    const Memprof__AllocData *d = p->d;
    size_t n = d->n_history, best = 0;
    struct cand {
        size_t i;
        double h;
    } cand[MAX_PEAKS];
    size_t nc = 0;
    for (size_t i = 1; i < n; i++)
        if (d->history[i]->live_bytes > d->history[best]->live_bytes) best = i;
    if (!(d->history[best]->live_bytes > 0)) return;
    cand[nc++] = (struct cand){best, d->history[best]->live_bytes};
    for (size_t i = 0; i < n; i++) {
        double h = d->history[i]->live_bytes, lmin = h, rmin = h, col;
        size_t j;
        int lhigher = 0, rhigher = 0;
        if (i == best || (i > 0 && d->history[i - 1]->live_bytes >= h) ||
            (i + 1 < n && d->history[i + 1]->live_bytes > h))
            continue;
        for (j = i; j-- > 0 && !lhigher;) {
            lhigher = d->history[j]->live_bytes > h;
            if (!lhigher && d->history[j]->live_bytes < lmin) lmin = d->history[j]->live_bytes;
        }
        for (j = i + 1; j < n && !rhigher; j++) {
            rhigher = d->history[j]->live_bytes > h;
            if (!rhigher && d->history[j]->live_bytes < rmin) rmin = d->history[j]->live_bytes;
        }
        /* the key col: the higher of the two sides' lowest points; an edge side without a higher point does not count */
        col = i == 0 ? rmin : i + 1 == n ? lmin : lmin > rmin ? lmin : rmin;
        if (h - col < 0.25 * d->history[best]->live_bytes || h < 0.3 * d->history[best]->live_bytes) continue;
        if (nc < MAX_PEAKS) cand[nc++] = (struct cand){i, h};
        else {
            size_t low = 1;
            for (size_t c = 2; c < nc; c++)
                if (cand[c].h < cand[low].h) low = c;
            if (h > cand[low].h) cand[low] = (struct cand){i, h};
        }
    }
    for (size_t c = 0; c < nc; c++) {
        p->peaks[c].i = cand[c].i;
        peak_functions(p, &p->peaks[c]);
    }
    p->npeaks = nc;
    qsort(p->peaks, p->npeaks, sizeof *p->peaks, peak_by_i);
}

/* ------------------------------------------------------------ drawing */

static void draw_axes(FILE *f, const struct plot *p, const char *start)
{
    char lab[48];
    double xstep = nice_step(p->span, 8);
    if (xstep < 0.01) xstep = 0.01; /* memprof run: sub-second runs get fractions */
    fprintf(f, "<g class=\"grid\" stroke=\"#e3e3e3\" stroke-width=\"1\">\n");
    for (double v = 0; v <= p->ymax * (1 + 1e-9); v += p->ystep * p->unit)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", LEFT, py(p, v), W - RIGHT, py(p, v));
    for (double t = 0; t <= p->span + 1e-9; t += xstep)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", px(p, p->t0 + t), TOP, px(p, p->t0 + t),
                H - BOTTOM);
    fprintf(f, "</g>\n<g class=\"axes\" stroke=\"#555\" stroke-width=\"1.2\" fill=\"none\">\n"
               "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n"
               "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n</g>\n",
            LEFT, TOP, LEFT, H - BOTTOM, LEFT, H - BOTTOM, W - RIGHT, H - BOTTOM);
    fprintf(f, "<g class=\"yticks\" %s font-size=\"12\" fill=\"%s\" text-anchor=\"end\">\n", FONT, COLOR_TEXT);
    for (double v = 0; v <= p->ymax * (1 + 1e-9); v += p->ystep * p->unit) {
        tick_label(p, v, lab, sizeof lab);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", LEFT - 8, py(p, v) + 4, lab);
    }
    fprintf(f, "</g>\n<g class=\"xticks\" %s font-size=\"12\" fill=\"%s\" text-anchor=\"middle\">\n", FONT, COLOR_TEXT);
    for (double t = 0; t <= p->span + 1e-9; t += xstep)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%g</text>\n", px(p, p->t0 + t), H - BOTTOM + 18, round(t * 1e6) / 1e6);
    fprintf(f, "</g>\n<text class=\"xlabel\" x=\"%.1f\" y=\"%.1f\" %s font-size=\"13\" fill=\"%s\" "
               "text-anchor=\"middle\">time (seconds since %s)</text>\n",
            LEFT + (W - LEFT - RIGHT) / 2, H - BOTTOM + 40, FONT, COLOR_TEXT, start);
    fprintf(f, "<text class=\"ylabel\" transform=\"translate(18 %.1f) rotate(-90)\" %s font-size=\"13\" fill=\"%s\" "
               "text-anchor=\"middle\">memory</text>\n",
            TOP + (H - TOP - BOTTOM) / 2, FONT, COLOR_TEXT);
}

static void draw_series(FILE *f, const struct plot *p)
{
    const Memprof__AllocData *d = p->d;
    if (p->native) { /* stacked: native at the bottom, the Python part above it up to the tracked heap's line */
        fprintf(f, "<path id=\"native\" class=\"native-area\" fill=\"%s\" fill-opacity=\"0.35\" stroke=\"%s\" "
                   "stroke-width=\"1.5\" d=\"M%.1f %.1f",
                COLOR_NATIVE, COLOR_NATIVE, px(p, d->history[0]->t), py(p, 0));
        for (size_t i = 0; i < d->n_history; i++)
            fprintf(f, " L%.1f %.1f", px(p, d->history[i]->t), py(p, fmax(0, d->history[i]->native_live_bytes)));
        fprintf(f, " L%.1f %.1f Z\"><title>native (C code's allocations)</title></path>\n",
                px(p, d->history[d->n_history - 1]->t), py(p, 0));
    }
    fprintf(f, "<path class=\"heap-area\" fill=\"%s\" fill-opacity=\"0.10\" stroke=\"none\" d=\"M%.1f %.1f", COLOR_HEAP,
            px(p, d->history[0]->t), py(p, 0));
    for (size_t i = 0; i < d->n_history; i++)
        fprintf(f, " L%.1f %.1f", px(p, d->history[i]->t), py(p, fmax(0, d->history[i]->live_bytes)));
    fprintf(f, " L%.1f %.1f Z\"/>\n", px(p, d->history[d->n_history - 1]->t), py(p, 0));
    fprintf(f, "<polyline id=\"rss\" class=\"series\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
               "stroke-linejoin=\"round\" points=\"",
            COLOR_RSS);
    for (size_t i = 0; i < d->n_history; i++)
        fprintf(f, "%s%.1f,%.1f", i ? " " : "", px(p, d->history[i]->t), py(p, (double)d->history[i]->rss_bytes));
    fprintf(f, "\"><title>RSS</title></polyline>\n");
    fprintf(f, "<polyline id=\"heap\" class=\"series\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
               "stroke-linejoin=\"round\" points=\"",
            COLOR_HEAP);
    for (size_t i = 0; i < d->n_history; i++)
        fprintf(f, "%s%.1f,%.1f", i ? " " : "", px(p, d->history[i]->t), py(p, fmax(0, d->history[i]->live_bytes)));
    fprintf(f, "\"><title>%s</title></polyline>\n", p->heap);
}

static void draw_legend(FILE *f, const struct plot *p)
{
    double y = TOP - 20, x = LEFT;
    fprintf(f, "<g class=\"legend\" %s font-size=\"13\" fill=\"%s\">\n", FONT, COLOR_TEXT);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/>\n", x, y - 4,
            x + 26, y - 4, COLOR_RSS);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">RSS (resident memory of the process)</text>\n", x + 34, y);
    x += 300;
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"26\" height=\"10\" fill=\"%s\" fill-opacity=\"0.18\"/>\n", x,
            y - 9, COLOR_HEAP);
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"/>\n", x, y - 9,
            x + 26, y - 9, COLOR_HEAP);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x + 34, y,
            p->d->rss_note[0] ? "faulted in so far (page faults, sampled)"
            : p->native ? "tracked heap (Python + native)" : "tracked heap (live Python allocations)");
    x += 318;
    if (p->native) {
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"26\" height=\"10\" fill=\"%s\" fill-opacity=\"0.5\"/>\n", x,
                y - 9, COLOR_NATIVE);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">native part</text>\n", x + 34, y);
        x += 130;
    }
    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"#fff\" stroke=\"%s\" stroke-width=\"2.5\"/>\n", x + 8,
            y - 4, COLOR_HEAP);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x + 20, y,
            p->native ? "peak, its holders" : "peak, with the functions holding it"); /* the width there is */
    fprintf(f, "</g>\n");
}

static int boxes_overlap(const struct peak *a, const struct peak *b)
{
    return a->bx < b->bx + b->bw && b->bx < a->bx + a->bw && a->by < b->by + b->bh && b->by < a->by + a->bh;
}

static int box_fits(const struct plot *p, const struct peak *pk, size_t k)
{
    if (pk->bx < LEFT + 4 || pk->bx + pk->bw > W - RIGHT - 4 || pk->by < TOP + 4 || pk->by + pk->bh > H - BOTTOM - 4)
        return 0;
    for (size_t j = 0; j < k; j++)
        if (boxes_overlap(pk, &p->peaks[j])) return 0;
    return 1;
}

/* The label of peak k near its point (x, y): centred above it, else below,
 * else beside it, wherever it is inside the plot and clear of other labels. */
static void place_box(struct plot *p, size_t k, double x, double y)
{
    struct peak *pk = &p->peaks[k];
    double cx = fmin(fmax(x - pk->bw / 2, LEFT + 4), W - RIGHT - 4 - pk->bw);
    double cand[][2] = {{cx, y - pk->bh - 18},           {cx, y + 18},
                        {x - 18 - pk->bw, y - pk->bh / 2}, {x + 18, y - pk->bh / 2},
                        {x - 18 - pk->bw, y - pk->bh - 18}, {x + 18, y - pk->bh - 18},
                        {x - 18 - pk->bw, y + 18},          {x + 18, y + 18}};
    for (size_t c = 0; c < sizeof cand / sizeof cand[0]; c++) {
        pk->bx = cand[c][0];
        pk->by = cand[c][1];
        if (box_fits(p, pk, k)) return;
    }
    pk->bx = cx; /* crowded: above the point, kept inside the plot */
    pk->by = fmin(fmax(y - pk->bh - 18, TOP + 4), H - BOTTOM - 4 - pk->bh);
}

#define LINE_H 17.0
#define CHAR_W 7.0
#define PAD 9.0

/* The label of a peak: a heading, and per function its name and bytes. */
static void peak_text(const struct plot *p, const struct peak *pk, char *head, size_t headlen,
                      char names[][400], char bytes[][48])
{
    const Memprof__AllocPoint *pt = p->d->history[pk->i];
    char a[32];
    snprintf(head, headlen, "peak %s at %.*f s, held by:", cli_bytes(pt->live_bytes, a, sizeof a),
             p->span < 10 ? 1 : 0, pt->t - p->t0);
    for (size_t j = 0; j < pk->ntop; j++) {
        const Memprof__AllocFrame *fr = pk->top[j].frame;
        snprintf(names[j], 400, "%s (%s:%u)", fr->function, base_name(fr->file), fr->first_line);
        if (utf8_chars(names[j]) > 56) snprintf(names[j], 400, "%s", fr->function);
        snprintf(bytes[j], 48, "%s", cli_bytes(pk->top[j].live, a, sizeof a));
    }
}

static void draw_peaks(FILE *f, struct plot *p)
{
    char bytes[PEAK_FUNCS][48], names[PEAK_FUNCS][400], head[96];
    for (size_t k = 0; k < p->npeaks; k++) { /* the boxes' sizes and places */
        struct peak *pk = &p->peaks[k];
        const Memprof__AllocPoint *pt = p->d->history[pk->i];
        double namew = 0, bytesw = 0;
        peak_text(p, pk, head, sizeof head, names, bytes);
        for (size_t j = 0; j < pk->ntop; j++) {
            size_t nc = utf8_chars(names[j]);
            namew = fmax(namew, (double)(nc > 56 ? 56 : nc) * CHAR_W);
            bytesw = fmax(bytesw, (double)strlen(bytes[j]) * CHAR_W);
        }
        pk->bw = fmax((double)strlen(head) * (CHAR_W + 0.3), namew + 18 + bytesw) + 2 * PAD;
        pk->bh = (double)(1 + pk->ntop) * LINE_H + PAD;
        place_box(p, k, px(p, pt->t), py(p, pt->live_bytes));
    }
    fprintf(f, "<g class=\"peaks\" %s>\n", FONT);
    for (size_t k = 0; k < p->npeaks; k++) { /* markers and leader lines under every box */
        const struct peak *pk = &p->peaks[k];
        const Memprof__AllocPoint *pt = p->d->history[pk->i];
        double x = px(p, pt->t), y = py(p, pt->live_bytes);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"1\" "
                   "stroke-dasharray=\"3 3\"/>\n",
                x, y, x, H - BOTTOM, COLOR_HEAP);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" stroke-width=\"1\"/>\n", x, y,
                fmin(fmax(x, pk->bx), pk->bx + pk->bw), fmin(fmax(y, pk->by), pk->by + pk->bh));
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"#fff\" stroke=\"%s\" stroke-width=\"2.5\"/>\n", x, y,
                COLOR_HEAP);
    }
    for (size_t k = 0; k < p->npeaks; k++) {
        const struct peak *pk = &p->peaks[k];
        peak_text(p, pk, head, sizeof head, names, bytes);
        fprintf(f, "<g class=\"peak\">\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" rx=\"4\" "
                   "fill=\"#fff\" fill-opacity=\"0.94\" stroke=\"#bbb\"/>\n",
                pk->bx, pk->by, pk->bw, pk->bh);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12.5\" font-weight=\"bold\" fill=\"%s\">%s</text>\n",
                pk->bx + PAD, pk->by + LINE_H, COLOR_HEAP, head);
        for (size_t j = 0; j < pk->ntop; j++) {
            const Memprof__AllocFrame *fr = pk->top[j].frame;
            double ty = pk->by + LINE_H * (double)(j + 2);
            fprintf(f, "<text class=\"function\" x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"%s\"><title>",
                    pk->bx + PAD, ty, COLOR_TEXT);
            xml_text(f, fr->function, 300);
            fputs(" in ", f);
            xml_text(f, fr->file, 1000);
            fprintf(f, ":%u</title>", fr->first_line);
            xml_text(f, names[j], 57);
            fprintf(f, "</text>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"%s\" text-anchor=\"end\">%s</text>\n",
                    pk->bx + pk->bw - PAD, ty, COLOR_TEXT, bytes[j]);
        }
        fputs("</g>\n", f);
    }
    fputs("</g>\n", f);
}

static void draw_titles(FILE *f, const struct plot *p, const char *title)
{
    const Memprof__SessionInfo *s = p->d->session;
    char cmd[2048], heading[128], sub[512], x[32], y[32];
    double peak_rss = 0, peak_heap = 0;
    size_t l;
    for (size_t i = 0; i < p->d->n_history; i++) {
        peak_rss = fmax(peak_rss, (double)p->d->history[i]->rss_bytes);
        peak_heap = fmax(peak_heap, p->d->history[i]->live_bytes);
    }
    command_of(s, cmd, sizeof cmd);
    fprintf(f, "<text class=\"title\" x=\"%.1f\" y=\"30\" %s font-size=\"19\" font-weight=\"bold\" fill=\"%s\">", LEFT,
            FONT, COLOR_TEXT);
    if (!title) snprintf(heading, sizeof heading, "Memory of pid %d (Python %s)", s ? s->pid : 0,
                         s ? s->python_version : "?");
    xml_text(f, title ? title : heading, 80);
    fputs("</text>\n", f);
    fprintf(f, "<text class=\"subtitle\" x=\"%.1f\" y=\"54\" %s font-size=\"13\" fill=\"%s\">", LEFT, FONT, COLOR_MUTED);
    sub[0] = 0;
    if (title) snprintf(sub, sizeof sub, "pid %d, Python %s \xc2\xb7 ", s ? s->pid : 0, s ? s->python_version : "?");
    l = strlen(sub);
    if (p->d->rss_note[0])
        snprintf(sub + l, sizeof sub - l, "memprof rss, no agent \xc2\xb7 1 page fault in %llu recorded",
                 (unsigned long long)(p->d->sample_rate / 4096));
    else
        snprintf(sub + l, sizeof sub - l, "session %u (%s) \xc2\xb7 %s", s ? s->id : 0,
                 s ? wire_state_name(s->state) : "?", p->d->exact ? "exact" : "sampling");
    l = strlen(sub);
    if (!p->d->exact && !p->d->rss_note[0]) snprintf(sub + l, sizeof sub - l, " 1 per %s", cli_bytes((double)p->d->sample_rate, x, sizeof x));
    l = strlen(sub);
    snprintf(sub + l, sizeof sub - l, " \xc2\xb7 peak RSS %s, %s %s", cli_bytes(peak_rss, x, sizeof x), p->heap,
             cli_bytes(peak_heap, y, sizeof y));
    xml_text(f, sub, (size_t)((W - LEFT - RIGHT) / 7.2));
    fputs("</text>\n", f);
    fprintf(f, "<text class=\"command\" x=\"%.1f\" y=\"76\" font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" "
               "font-size=\"12.5\" fill=\"%s\">$ ",
            LEFT, COLOR_TEXT);
    xml_text(f, cmd, (size_t)((W - LEFT - RIGHT) / 7.6) - 2);
    fputs("</text>\n", f);
}

static void write_svg(FILE *f, struct plot *p, const char *title)
{
    char start[32];
    time_t t0 = (time_t)p->t0;
    strftime(start, sizeof start, "%Y-%m-%d %H:%M:%S", localtime(&t0));
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\">\n",
            W, H, W, H);
    fputs("<title>", f);
    if (title) xml_text(f, title, 200);
    else fprintf(f, "memprof plot of pid %d", p->d->session ? p->d->session->pid : 0);
    fputs("</title>\n", f);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n");
    draw_titles(f, p, title);
    draw_legend(f, p);
    draw_axes(f, p, start);
    draw_series(f, p);
    draw_peaks(f, p);
    fputs("</svg>\n", f);
}

/* ------------------------------------------------------------ command */

static int svg_name(const char *out)
{
    size_t n = strlen(out);
    return !strcmp(out, "-") || (n > 4 && !strcasecmp(out + n - 4, ".svg"));
}

int cmd_plot(int argc, char **argv)
{
    int pid = 0, to_stdout, rc = 0, format = 0;
    unsigned session_id = 0;
    const char *out = NULL, *title = NULL, *rss = NULL;
    char err[MP_ERRLEN], who[48], a[32];
    Envelope *reply;
    struct plot p;
    double max = 0;
    FILE *f;
    const struct opt opts[] = {
        CLI_PID_OR_SESSION_OPT(&pid),
        CLI_SESSION_OPT(&session_id),
        {"rss", 0, OPT_STRING, &rss, "FILE", "what memprof rss saved (its option save FILE) instead\n"
                                             "of a session: RSS and the bytes faulted in so far"},
        {"output", 'o', OPT_STRING, &out, "FILE.svg", "the SVG file to write (- : stdout)", .required = 1},
        {"title", 0, OPT_STRING, &title, "TEXT", "the title (default: Memory of pid PID (Python VERSION))"},
        {"format", 0, OPT_CHOICE, &format, NULL, "SVG only (convert it with a browser or rsvg-convert)",
         .choices = "svg"},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof plot", opts,
                                .synopsis = "(--pid PID | --session ID | --rss FILE) -o FILE.svg [--title TEXT]\n"
                                            "                    [--format svg] [--socket PATH]",
                                .about = about_plot, .more = example_plot};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if (!pid && !session_id && !rss) return opts_usage_error(&cmd, "--pid PID, --session ID or --rss FILE is required");
    if (!svg_name(out)) return opts_usage_error(&cmd, "%s: memprof plot writes SVG only: use an .svg name", out);
    if (rss) {
        snprintf(who, sizeof who, "%.40s", rss);
        if (alloc_load(rss, &reply, err) < 0) return cli_fail("%s", err);
    } else {
        cli_who(pid, session_id, who, sizeof who);
        if (alloc_fetch(pid, session_id, 1, &reply, err) < 0) return cli_fail_call(err);
    }
    memset(&p, 0, sizeof p);
    p.d = reply->alloc_data;
    p.heap = p.d->rss_note[0] ? "faulted in" : "tracked heap";
    if (p.d->n_history == 0) {
        wire_free(reply);
        return cli_fail("%s: no allocation data yet (attach with tracking on first; the agent reports every 250 ms)", who);
    }
    if (p.d->n_history < 2) {
        wire_free(reply);
        return cli_fail("%s: one point of history so far (one a second): nothing to plot yet, try again in a moment", who);
    }
    for (size_t i = 0; i < p.d->n_frames; i++)
        if (p.d->frames[i]->id + 1 > p.nids) p.nids = p.d->frames[i]->id + 1;
    p.frame_by_id = calloc(p.nids + 1, sizeof *p.frame_by_id);
    p.holder_by_id = calloc(p.nids + 1, sizeof *p.holder_by_id);
    if (!p.frame_by_id || !p.holder_by_id) {
        free(p.frame_by_id);
        free(p.holder_by_id);
        wire_free(reply);
        return cli_fail("out of memory");
    }
    for (size_t i = 0; i < p.d->n_frames; i++) p.frame_by_id[p.d->frames[i]->id] = p.d->frames[i];
    find_holders(&p);
    p.t0 = p.d->history[0]->t;
    p.span = p.d->history[p.d->n_history - 1]->t - p.t0;
    if (!(p.span > 0)) p.span = 1;
    for (size_t i = 0; i < p.d->n_history; i++) {
        max = fmax(max, fmax((double)p.d->history[i]->rss_bytes, p.d->history[i]->live_bytes));
        if (p.d->history[i]->native_live_bytes > 0) p.native = 1; /* any point has some */
    }
    scale_bytes(&p, max);
    if (!p.d->rss_note[0]) find_peaks(&p); /* bytes faulted in only grow: no peaks, no holders */

    to_stdout = !strcmp(out, "-");
    if (!(f = to_stdout ? stdout : fopen(out, "w"))) {
        rc = cli_fail("cannot write %s: %s", out, strerror(errno));
        goto done;
    }
    write_svg(f, &p, title);
    if ((to_stdout ? fflush(f) : fclose(f)) != 0 || (to_stdout && ferror(f))) {
        int e = errno;
        if (!to_stdout) unlink(out);
        rc = cli_fail("cannot write %s: %s", to_stdout ? "stdout" : out, strerror(e));
        goto done;
    }
    if (!to_stdout) {
        printf("wrote %s: %zu points over %.1f s", out, p.d->n_history, p.span);
        for (size_t k = 0; k < p.npeaks; k++) {
            const struct peak *pk = &p.peaks[k];
            const Memprof__AllocPoint *pt = p.d->history[pk->i];
            printf("%s %s peak %s at %.*f s", k ? "," : ";", p.heap, cli_bytes(pt->live_bytes, a, sizeof a), p.span < 10 ? 1 : 0,
                   pt->t - p.t0);
            if (pt->native_live_bytes > 0) printf(" (native %s)", cli_bytes(pt->native_live_bytes, a, sizeof a));
            if (pk->ntop)
                printf(" (%s %s)", pk->top[0].frame->function, cli_bytes(pk->top[0].live, a, sizeof a));
        }
        printf("\n");
    }
done:
    free(p.frame_by_id);
    free(p.holder_by_id);
    wire_free(reply);
    return rc;
}
