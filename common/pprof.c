/* pprof.c -- AllocData to a pprof heap profile: interned strings, functions and locations, one sample per
 * stack, packed with protobuf-c (profile.proto) and gzip-compressed with zlib. */
#include "common/pprof.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/util.h"
#include "gen/profile.pb-c.h"

typedef Perftools__Profiles__Profile Profile;
typedef Perftools__Profiles__Sample Sample;
typedef Perftools__Profiles__Location Location;
typedef Perftools__Profiles__Line Line;
typedef Perftools__Profiles__Function Function;
typedef Perftools__Profiles__Mapping Mapping;
typedef Perftools__Profiles__ValueType ValueType;
typedef Perftools__Profiles__Label Label;

/* An open-addressing table from a key (a string, or three integers) to an index. */
struct slot {
    const char *s;
    int64_t k[3];
    uint64_t h;
    size_t v; /* index + 1; 0: empty */
};

struct table {
    struct slot *slots;
    size_t cap, n;
};

static uint64_t mix(uint64_t h, uint64_t x)
{
    h ^= x + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static uint64_t hash_key(const char *s, const int64_t *k)
{
    uint64_t h = 1469598103934665603ull;
    if (s)
        for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    else
        for (int i = 0; i < 3; i++) h = mix(h, (uint64_t)k[i]);
    return h | 1;
}

static int same(const struct slot *sl, uint64_t h, const char *s, const int64_t *k)
{
    if (sl->h != h) return 0;
    return s ? !strcmp(sl->s, s) : !memcmp(sl->k, k, sizeof sl->k);
}

/* The index of key, or *fresh set and next (which the caller then appends) recorded for it; -1 without memory. */
static long table_get(struct table *t, const char *s, const int64_t *k, size_t next, int *fresh)
{
    uint64_t h = hash_key(s, k);
    size_t i;
    *fresh = 0;
    if ((t->n + 1) * 2 > t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 256;
        struct slot *ns = calloc(ncap, sizeof *ns);
        if (!ns) return -1;
        for (size_t j = 0; j < t->cap; j++) {
            if (!t->slots[j].v) continue;
            for (i = t->slots[j].h & (ncap - 1); ns[i].v; i = (i + 1) & (ncap - 1)) {}
            ns[i] = t->slots[j];
        }
        free(t->slots);
        t->slots = ns;
        t->cap = ncap;
    }
    for (i = h & (t->cap - 1); t->slots[i].v; i = (i + 1) & (t->cap - 1))
        if (same(&t->slots[i], h, s, k)) return (long)t->slots[i].v - 1;
    t->slots[i] = (struct slot){.s = s, .h = h, .v = next + 1};
    if (k) memcpy(t->slots[i].k, k, sizeof t->slots[i].k);
    t->n++;
    *fresh = 1;
    return (long)next;
}

struct builder {
    Profile p;
    struct table strs, funcs, locs;
    char **strings; /* string_table: pointers into the AllocData, or into owned */
    size_t nstr, capstr;
    char **owned;
    size_t nowned;
    ValueType vt[4], period;
    ValueType *vtp[4];
    Mapping *maps;  /* [0]: the Python executable; then one per native module (--native-frames) */
    Mapping **mapp;
    size_t nmaps;
    struct table mods;
    int64_t comments[5];
    Function *fa;
    Function **fp;
    Location *la;
    Location **lp;
    Line *lines;
    Line **linep;
    uint64_t *loc_of_frame; /* AllocFrame id -> location id (0: none) */
    size_t nframe_ids;
    Sample *sa;
    Sample **sp;
    Label *lab;
    Label **labp;
    uint64_t *ids;
    int64_t *vals;
    const Memprof__AllocStack **stack_of;
};

static void release(struct builder *b)
{
    for (size_t i = 0; i < b->nowned; i++) free(b->owned[i]);
    free(b->owned);
    free(b->strings);
    free(b->strs.slots), free(b->funcs.slots), free(b->locs.slots), free(b->mods.slots);
    free(b->maps), free(b->mapp);
    free(b->fa), free(b->fp), free(b->la), free(b->lp), free(b->lines), free(b->linep), free(b->loc_of_frame);
    free(b->sa), free(b->sp), free(b->lab), free(b->labp), free(b->ids), free(b->vals), free(b->stack_of);
}

static int64_t str(struct builder *b, const char *s)
{
    int fresh;
    long i;
    if (!s) s = "";
    if (b->nstr == b->capstr) {
        size_t n = b->capstr ? b->capstr * 2 : 256;
        char **ns = realloc(b->strings, n * sizeof *ns);
        if (!ns) return -1;
        b->strings = ns;
        b->capstr = n;
    }
    i = table_get(&b->strs, s, NULL, b->nstr, &fresh);
    if (i < 0) return -1;
    if (fresh) b->strings[b->nstr++] = (char *)s;
    return i;
}

/* A string built here, kept until the profile is packed. */
static int64_t str_owned(struct builder *b, char *s)
{
    char **no;
    if (!s || !(no = realloc(b->owned, (b->nowned + 1) * sizeof *no))) {
        free(s);
        return -1;
    }
    b->owned = no;
    b->owned[b->nowned++] = s;
    return str(b, s);
}

static int64_t strf(struct builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int64_t strf(struct builder *b, const char *fmt, ...)
{
    va_list ap;
    char *s;
    int n;
    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    return n < 0 ? -1 : str_owned(b, s);
}

/* The mapping id of a native frame's module (one Mapping per module path, added on first use). */
static long module_mapping(struct builder *b, const char *module)
{
    int fresh;
    long i = table_get(&b->mods, module, NULL, b->nmaps, &fresh);
    Mapping *m = &b->maps[b->nmaps];
    if (i < 0 || !fresh) return i < 0 ? -1 : i + 1;
    perftools__profiles__mapping__init(m);
    m->id = b->nmaps + 1;
    if ((m->filename = str(b, module)) < 0) return -1;
    m->has_functions = m->has_filenames = m->has_line_numbers = 1;
    b->mapp[b->nmaps++] = m;
    return (long)m->id;
}

/* Locations and functions for every frame: one Location per frame (file, function, line), one Function
 * per (function, file, def line). A native frame's Location is in its module's Mapping, at its address
 * in the module's ELF addresses. */
static int add_frames(struct builder *b, const Memprof__AllocData *d)
{
    size_t nf = 0, nl = 0;
    long map;
    for (size_t i = 0; i < d->n_frames; i++)
        if (d->frames[i]->id + 1 > b->nframe_ids) b->nframe_ids = (size_t)d->frames[i]->id + 1;
    b->loc_of_frame = calloc(b->nframe_ids + 1, sizeof *b->loc_of_frame);
    b->fa = calloc(d->n_frames + 1, sizeof *b->fa);
    b->fp = calloc(d->n_frames + 1, sizeof *b->fp);
    b->la = calloc(d->n_frames + 1, sizeof *b->la);
    b->lp = calloc(d->n_frames + 1, sizeof *b->lp);
    b->lines = calloc(d->n_frames + 1, sizeof *b->lines);
    b->linep = calloc(d->n_frames + 1, sizeof *b->linep);
    if (!b->loc_of_frame || !b->fa || !b->fp || !b->la || !b->lp || !b->lines || !b->linep) return -1;
    for (size_t i = 0; i < d->n_frames; i++) {
        const Memprof__AllocFrame *fr = d->frames[i];
        int64_t name = str(b, fr->function && *fr->function ? fr->function : "?");
        int64_t file = str(b, fr->file && *fr->file ? fr->file : "?");
        int64_t fkey[3] = {name, file, fr->first_line}, lkey[3];
        int fresh;
        long fi, li;
        if (name < 0 || file < 0 || (fi = table_get(&b->funcs, NULL, fkey, nf, &fresh)) < 0) return -1;
        if (fresh) {
            Function *f = &b->fa[nf];
            perftools__profiles__function__init(f);
            f->id = nf + 1;
            /* no system_name: pprof demangles it into the name shown, and its
             * C++ demangler cuts "<listcomp>" and "<module>" to nothing */
            f->name = name;
            f->filename = file;
            f->start_line = fr->first_line;
            b->fp[nf++] = f;
        }
        lkey[0] = fi + 1, lkey[1] = fr->line, lkey[2] = fr->native ? (int64_t)fr->module_offset : -1;
        map = fr->native ? module_mapping(b, fr->module && *fr->module ? fr->module : "?") : 1;
        if (map < 0) return -1;
        if ((li = table_get(&b->locs, NULL, lkey, nl, &fresh)) < 0) return -1;
        if (fresh) {
            Location *l = &b->la[nl];
            perftools__profiles__location__init(l);
            perftools__profiles__line__init(&b->lines[nl]);
            b->lines[nl].function_id = (uint64_t)fi + 1;
            b->lines[nl].line = fr->line;
            b->linep[nl] = &b->lines[nl];
            l->id = nl + 1;
            l->mapping_id = (uint64_t)map;
            if (fr->native) l->address = fr->module_offset;
            l->line = &b->linep[nl];
            l->n_line = 1;
            b->lp[nl++] = l;
        }
        b->loc_of_frame[fr->id] = (uint64_t)li + 1;
    }
    b->p.function = b->fp;
    b->p.n_function = nf;
    b->p.location = b->lp;
    b->p.n_location = nl;
    return 0;
}

static int64_t whole(double v) { return isfinite(v) && v > 0 ? (int64_t)llround(v) : 0; }

static int gzip(const uint8_t *in, size_t len, uint8_t **out, size_t *outlen, char *err)
{
    z_stream z = {0};
    uLong bound;
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        mp_err(err, "zlib: cannot start compressing");
        return -1;
    }
    bound = deflateBound(&z, len);
    if (!(*out = malloc(bound))) {
        deflateEnd(&z);
        mp_err(err, "out of memory for a %zu-byte profile", len);
        return -1;
    }
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    z.next_out = *out;
    z.avail_out = (uInt)bound;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
        deflateEnd(&z);
        free(*out);
        *out = NULL;
        mp_err(err, "zlib: compression failed");
        return -1;
    }
    *outlen = z.total_out;
    deflateEnd(&z);
    return 0;
}

static int add_samples(struct builder *b, const Memprof__AllocData *d)
{
    size_t ns = 0, nlocs = 0;
    uint32_t maxid = 0;
    uint64_t *id;
    int64_t bytes = str(b, "bytes");
    for (size_t i = 0; i < d->n_stacks; i++) {
        nlocs += d->stacks[i]->n_frames + d->stacks[i]->n_native_frames;
        if (d->stacks[i]->id > maxid) maxid = d->stacks[i]->id;
    }
    b->sa = calloc(d->n_stats + 1, sizeof *b->sa);
    b->sp = calloc(d->n_stats + 1, sizeof *b->sp);
    b->lab = calloc(d->n_stats + 1, sizeof *b->lab);
    b->labp = calloc(d->n_stats + 1, sizeof *b->labp);
    b->ids = calloc(nlocs + 1, sizeof *b->ids);
    b->vals = calloc(4 * d->n_stats + 1, sizeof *b->vals);
    b->stack_of = calloc((size_t)maxid + 2, sizeof *b->stack_of);
    if (bytes < 0 || !b->sa || !b->sp || !b->lab || !b->labp || !b->ids || !b->vals || !b->stack_of) return -1;
    for (size_t i = 0; i < d->n_stacks; i++) b->stack_of[d->stacks[i]->id] = d->stacks[i];
    id = b->ids;
    for (size_t i = 0; i < d->n_stats; i++) {
        const Memprof__AllocStat *t = d->stats[i];
        const Memprof__AllocStack *st = t->stack <= maxid ? b->stack_of[t->stack] : NULL;
        Sample *smp = &b->sa[ns];
        int64_t *v = &b->vals[4 * ns];
        if (!st) continue;
        perftools__profiles__sample__init(smp);
        smp->location_id = id;
        for (size_t k = 0; k < st->n_native_frames; k++) /* C code first: it is under the Python line */
            if (st->native_frames[k] < b->nframe_ids && b->loc_of_frame[st->native_frames[k]])
                id[smp->n_location_id++] = b->loc_of_frame[st->native_frames[k]];
        for (size_t k = 0; k < st->n_frames; k++) /* AllocStack is innermost first, as pprof wants */
            if (st->frames[k] < b->nframe_ids && b->loc_of_frame[st->frames[k]])
                id[smp->n_location_id++] = b->loc_of_frame[st->frames[k]];
        if (!smp->n_location_id) continue;
        v[0] = whole(t->alloc_count);
        v[1] = whole(t->alloc_bytes);
        v[2] = whole(t->alloc_count - t->free_count);
        v[3] = whole(t->alloc_bytes - t->free_bytes);
        if (!v[0] && !v[1] && !v[2] && !v[3]) continue;
        smp->value = v;
        smp->n_value = 4;
        if (t->alloc_count >= 1) { /* as Go does: the average block size as a numeric label */
            Label *l = &b->lab[ns];
            perftools__profiles__label__init(l);
            l->key = bytes;
            l->num = whole(t->alloc_bytes / t->alloc_count);
            l->num_unit = bytes;
            b->labp[ns] = l;
            smp->label = &b->labp[ns];
            smp->n_label = 1;
        }
        id += smp->n_location_id;
        b->sp[ns++] = smp;
    }
    b->p.sample = b->sp;
    b->p.n_sample = ns;
    return 0;
}

static const char *or_empty(const char *s) { return s ? s : ""; }

/* A comment naming where the process runs, the parts known only ("container 3f2a1b0c9d8e, pod shop/web-7d4b9,
 * pod uid 0f6b..."); none on the host. */
static int identity(struct builder *b, const Memprof__SessionInfo *s)
{
    const char *id = or_empty(s->container_id), *pod = or_empty(s->pod), *ns = or_empty(s->pod_namespace),
               *uid = or_empty(s->pod_uid);
    char text[256] = "";
    size_t n = 0;
    if (*id) n += (size_t)snprintf(text + n, sizeof text - n, "container %.64s", id);
    if ((*pod || *ns) && n < sizeof text)
        n += (size_t)snprintf(text + n, sizeof text - n, "%spod %.63s%s%.63s", n ? ", " : "", ns, *ns && *pod ? "/" : "", pod);
    if (*uid && n < sizeof text) n += (size_t)snprintf(text + n, sizeof text - n, "%spod uid %.36s", n ? ", " : "", uid);
    if (!n) return 0;
    return (b->comments[b->p.n_comment++] = strf(b, "%s", text)) < 0 ? -1 : 0;
}

static int build(struct builder *b, const Memprof__AllocData *d, int allocated)
{
    static const char *types[4][2] = {
        {"alloc_objects", "count"}, {"alloc_space", "bytes"}, {"inuse_objects", "count"}, {"inuse_space", "bytes"}};
    const Memprof__SessionInfo *s = d->session;

    if (str(b, "") != 0) return -1;
    for (int i = 0; i < 4; i++) {
        perftools__profiles__value_type__init(&b->vt[i]);
        if ((b->vt[i].type = str(b, types[i][0])) < 0 || (b->vt[i].unit = str(b, types[i][1])) < 0) return -1;
        b->vtp[i] = &b->vt[i];
    }
    b->p.sample_type = b->vtp;
    b->p.n_sample_type = 4;
    b->p.default_sample_type = b->vt[allocated ? 1 : 3].type;
    perftools__profiles__value_type__init(&b->period);
    if ((b->period.type = str(b, "space")) < 0 || (b->period.unit = str(b, "bytes")) < 0) return -1;
    b->p.period_type = &b->period;
    b->p.period = d->exact ? 1 : (int64_t)d->sample_rate;
    b->p.time_nanos = (int64_t)((d->first_report > 0 ? d->first_report : d->timestamp) * 1e9);
    if (d->first_report > 0 && d->timestamp > d->first_report)
        b->p.duration_nanos = (int64_t)((d->timestamp - d->first_report) * 1e9);

    if (!(b->maps = calloc(d->n_frames + 1, sizeof *b->maps)) || !(b->mapp = calloc(d->n_frames + 1, sizeof *b->mapp)))
        return -1;
    /* mapping 1: the Python executable (keyed "" in mods: no module path is empty) */
    if (module_mapping(b, "") != 1 ||
        (b->maps[0].filename = str(b, s && s->executable && *s->executable ? s->executable : "python")) < 0)
        return -1;

    b->p.comment = b->comments;
    if (s) {
        char *cmd = NULL;
        size_t clen = 0;
        FILE *m = open_memstream(&cmd, &clen);
        if (!m) return -1;
        for (size_t i = 0; i < s->n_argv; i++) fprintf(m, "%s%s", i ? " " : "", s->argv[i]);
        fclose(m);
        if ((b->comments[b->p.n_comment++] = strf(b, "memprof: pid %d, session %u, Python %s", (int)s->pid, s->id,
                                                  s->python_version ? s->python_version : "?")) < 0 ||
            (b->comments[b->p.n_comment++] = str_owned(b, cmd)) < 0)
            return -1;
        if (identity(b, s) < 0) return -1;
    }
    if ((b->comments[b->p.n_comment++] = str(b, d->exact ? "mode exact: every allocation counted"
                                                         : "mode sampling: values are unbiased estimates")) < 0)
        return -1;
    if (d->rss_note && d->rss_note[0] && (b->comments[b->p.n_comment++] = str(b, d->rss_note)) < 0) return -1;
    if (add_frames(b, d) < 0 || add_samples(b, d) < 0) return -1;
    b->p.mapping = b->mapp;
    b->p.n_mapping = b->nmaps;
    b->p.string_table = b->strings;
    b->p.n_string_table = b->nstr;
    return 0;
}

int pprof_heap(const Memprof__AllocData *d, int allocated, uint8_t **out, size_t *len, char *err)
{
    struct builder b;
    uint8_t *raw;
    size_t n;
    int rc = -1;
    memset(&b, 0, sizeof b);
    perftools__profiles__profile__init(&b.p);
    *out = NULL;
    *len = 0;
    if (build(&b, d, allocated) < 0) {
        mp_err(err, "out of memory building the profile");
    } else if (!(raw = malloc((n = perftools__profiles__profile__get_packed_size(&b.p)) + 1))) {
        mp_err(err, "out of memory for a %zu-byte profile", n);
    } else {
        perftools__profiles__profile__pack(&b.p, raw);
        rc = gzip(raw, n, out, len, err);
        free(raw);
    }
    release(&b);
    return rc;
}
