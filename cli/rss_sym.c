/* rss_sym.c -- memprof rss's names: native frames (probe/symbolize.c), Python frames (code objects read from the target's
 * memory, lines from co_linetable) and mappings (/proc/PID/maps). */
#include "gen/rss_config.h"
#if MEMPROF_HAVE_RSS
#include "cli/rss.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/pyabi.h"
#include "probe/elfsym.h"
#include "probe/pyprobe.h"
#include "probe/symbolize.h"

#define NCACHE 8192 /* per kind; a full table is simply cleared */

struct nat { uint64_t ip; char *name; int leaf, named; unsigned gen; };
struct code {
    uint64_t addr;
    int ok, firstline;
    char *file, *func;
    unsigned char *lt; /* co_linetable */
    size_t ltlen;
};
struct map { uint64_t lo, hi; char name[200]; };

struct rss_sym {
    pid_t pid;
    const struct pyabi *abi;
    struct symbolizer *sym;
    uint64_t code_type; /* PyCode_Type, once seen */
    struct nat nat[NCACHE];
    struct code code[NCACHE];
    struct map *maps;
    int nmaps;
    double maps_at;
};

struct rss_sym *rss_sym_open(pid_t pid, const struct pyabi *abi)
{
    struct rss_sym *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->pid = pid;
    s->abi = abi;
    s->sym = sym_open(pid, 0); /* NULL when its maps cannot be read: addresses only */
    return s;
}

static uint32_t slot(uint64_t a)
{
    return (uint32_t)((a * 0x9E3779B97F4A7C15ull) >> 51) % NCACHE;
}

static char *lookup_native(struct rss_sym *s, uint64_t ip, int leaf, int *named)
{
    struct sym_frame f;
    char *out;
    int rc;
    *named = 0;
    if (!s->sym) rc = asprintf(&out, "0x%llx", (unsigned long long)ip);
    else {
        sym_resolve(s->sym, ip, !leaf, &f);
        *named = f.named;
        rc = f.named ? asprintf(&out, "%s (%s)", f.func, path_base(f.module)) : asprintf(&out, "%s", f.func);
    }
    return rc < 0 ? NULL : out;
}

/* Cached per address; a name that was no symbol is looked up again once the symbolizer has read the maps again
 * (a library loaded since). */
const char *rss_sym_native(struct rss_sym *s, uint64_t ip, int leaf)
{
    uint32_t i = slot(ip ^ (uint64_t)leaf);
    unsigned gen = s->sym ? sym_generation(s->sym) : 0;
    if (s->nat[i].name && s->nat[i].ip == ip && s->nat[i].leaf == leaf && (s->nat[i].named || s->nat[i].gen == gen))
        return s->nat[i].name;
    free(s->nat[i].name);
    s->nat[i].ip = ip;
    s->nat[i].leaf = leaf;
    s->nat[i].name = lookup_native(s, ip, leaf, &s->nat[i].named);
    s->nat[i].gen = s->sym ? sym_generation(s->sym) : 0;
    return s->nat[i].name ? s->nat[i].name : "?";
}

/* ------------------------------------------------------------------ Python */

static uint64_t rd64(pid_t pid, uint64_t addr, int *ok)
{
    uint64_t v = 0;
    if (procmem_read(pid, addr, &v, sizeof v) < 0) *ok = 0;
    return v;
}

/* A str object's text (ASCII or compact latin-1), malloc'ed; NULL when unreadable. */
static char *read_str(struct rss_sym *s, uint64_t str)
{
    int ok = 1;
    uint32_t state = 0;
    uint64_t len = rd64(s->pid, str + 16, &ok);
    char *buf;
    if (!ok || procmem_read(s->pid, str + s->abi->str.state, &state, sizeof state) < 0) return NULL;
    if (!pyabi_str_compact(state) || pyabi_str_kind(state) != 1 || len > 4096) return NULL; /* 1 byte a char */
    if (!(buf = malloc(len + 1))) return NULL;
    if (procmem_read(s->pid, str + (uint64_t)pyabi_str_data(s->abi, state), buf, len) < 0) {
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    for (uint64_t i = 0; i < len; i++)
        if ((unsigned char)buf[i] >= 0x80) buf[i] = '?';
    return buf;
}

static int is_code(struct rss_sym *s, uint64_t code)
{
    int ok = 1;
    uint64_t type = rd64(s->pid, code + PYABI_OB_TYPE, &ok), name;
    char tn[8] = "";
    if (!ok || !type) return 0;
    if (s->code_type) return type == s->code_type;
    name = rd64(s->pid, type + PYABI_TP_NAME, &ok);
    if (!ok || procmem_read(s->pid, name, tn, 5) < 0 || memcmp(tn, "code", 5) != 0) return 0;
    s->code_type = type;
    return 1;
}

static void load_code(struct rss_sym *s, struct code *c)
{
    int ok = 1;
    const struct pyabi *a = s->abi;
    uint64_t fn, qn, lt;
    int32_t first = 0;
    c->ok = 0;
    if (!is_code(s, c->addr)) return;
    fn = rd64(s->pid, c->addr + a->code.filename, &ok);
    qn = rd64(s->pid, c->addr + a->code.qualname, &ok);
    lt = rd64(s->pid, c->addr + a->code.linetable, &ok);
    if (!ok || procmem_read(s->pid, c->addr + a->code.firstlineno, &first, sizeof first) < 0) return;
    c->firstline = first;
    c->file = read_str(s, fn);
    c->func = read_str(s, qn);
    c->ltlen = rd64(s->pid, lt + PYABI_OB_SIZE, &ok);
    if (ok && c->ltlen < (1u << 20) && (c->lt = malloc(c->ltlen + 1)) &&
        procmem_read(s->pid, lt + PYABI_BYTES_SVAL, c->lt, c->ltlen) < 0) {
        free(c->lt);
        c->lt = NULL;
    }
    c->ok = 1;
}

static int varint(const unsigned char **p, const unsigned char *end)
{
    unsigned v = 0, shift = 0, b;
    do {
        if (*p >= end) return 0;
        b = *(*p)++;
        v |= (b & 63) << shift;
        shift += 6;
    } while ((b & 64) && shift < 30);
    return (int)v;
}

static int svarint(const unsigned char **p, const unsigned char *end)
{
    int v = varint(p, end);
    return (v & 1) ? -(v >> 1) : (v >> 1);
}

/* PEP 626's location table (3.11+): the line of code unit `unit`, -1 when none. */
static int addr2line(const struct code *c, long unit)
{
    const unsigned char *p = c->lt, *end = c->lt + c->ltlen;
    int line = c->firstline;
    long at = 0;
    if (!c->lt) return -1;
    while (p < end) {
        unsigned b = *p++, kind = (b >> 3) & 15, len = (b & 7) + 1;
        int delta = 0;
        if (kind == 15) {
        } else if (kind == 14) {
            delta = svarint(&p, end);
            varint(&p, end);
            varint(&p, end);
            varint(&p, end);
        } else if (kind == 13) {
            delta = svarint(&p, end);
        } else if (kind >= 10) {
            delta = (int)kind - 10;
            p += 2;
        } else {
            p += 1;
        }
        line += delta;
        if (unit < at + (long)len) return kind == 15 ? -1 : line;
        at += len;
    }
    return -1;
}

int rss_sym_python(struct rss_sym *s, uint64_t code, int64_t off, const char **file, const char **func, int *line)
{
    struct code *c = &s->code[slot(code)];
    if (!s->abi) return -1;
    if (c->addr != code) {
        free(c->file);
        free(c->func);
        free(c->lt);
        memset(c, 0, sizeof *c);
        c->addr = code;
        load_code(s, c);
    }
    if (!c->ok) return -1;
    *file = c->file ? c->file : "?";
    *func = c->func ? c->func : "?";
    *line = addr2line(c, off < 0 ? 0 : (long)(off / 2));
    return 0;
}

/* ------------------------------------------------------------------ mappings */

static void maps_refresh(struct rss_sym *s)
{
    char path[64], line[512];
    FILE *f;
    int cap = 0;
    s->nmaps = 0;
    s->maps_at = mp_now();
    snprintf(path, sizeof path, "/proc/%d/maps", (int)s->pid);
    if (!(f = fopen(path, "r"))) return;
    while (fgets(line, sizeof line, f)) {
        unsigned long long lo, hi;
        int n = 0;
        if (sscanf(line, "%llx-%llx %*s %*s %*s %*s %n", &lo, &hi, &n) < 2) continue;
        if (s->nmaps == cap) {
            struct map *m = realloc(s->maps, (size_t)(cap = cap ? 2 * cap : 256) * sizeof *m);
            if (!m) break;
            s->maps = m;
        }
        struct map *m = &s->maps[s->nmaps++];
        m->lo = lo;
        m->hi = hi;
        line[strcspn(line, "\n")] = 0;
        snprintf(m->name, sizeof m->name, "%s", n && line[n] ? line + n : "[anon]");
    }
    fclose(f);
}

const char *rss_sym_mapping(struct rss_sym *s, uint64_t addr)
{
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < s->nmaps; i++)
            if (addr >= s->maps[i].lo && addr < s->maps[i].hi) return s->maps[i].name;
        if (pass == 0 && s->maps_at < mp_now() - 0.2) maps_refresh(s);
    }
    return "[unmapped]";
}

void rss_sym_close(struct rss_sym *s)
{
    if (!s) return;
    sym_close(s->sym);
    for (int i = 0; i < NCACHE; i++) {
        free(s->nat[i].name);
        free(s->code[i].file);
        free(s->code[i].func);
        free(s->code[i].lt);
    }
    free(s->maps);
    free(s);
}

/* ------------------------------------------------------------------ configuration */

int rss_python_cfg(pid_t pid, struct rss_cfg *cfg, const struct pyabi **abi, char *version, size_t vlen, char *why)
{
    struct pyinfo info;
    struct procmap *maps = NULL;
    const struct pyabi *a;
    int n, rc = -1;
    *abi = NULL;
    version[0] = 0;
    if (pyprobe(pid, &info, why) < 0) return -1;
    snprintf(version, vlen, "%s", info.version);
    a = pyabi_for((uint32_t)info.major << 24 | (uint32_t)info.minor << 16);
    if (!a || info.minor < 11 || info.major != 3) {
        mp_err(why, "Python %s: the Python line needs CPython 3.11+", info.version);
        return -1;
    }
    if (!a->rt.interpreters_head || !a->code.linetable) {
        mp_err(why, "Python %s: memprof's ABI table has no thread list offsets for 3.%d yet", info.version, a->minor);
        return -1;
    }
    if (info.abi_error[0]) {
        mp_err(why, "%s", info.abi_error);
        return -1;
    }
    if ((n = procmaps_read(pid, &maps)) < 0) {
        mp_errno(why, "pid %d: cannot read its maps", (int)pid);
        return -1;
    }
    for (int i = 0; i < n && rc < 0; i++) {
        struct elfimg img;
        char err[MP_ERRLEN];
        uint64_t addr;
        if (strcmp(maps[i].path, info.pylib) != 0 || elfimg_open(pid, &maps[i], &img, err) < 0) continue;
        if (elfimg_sym(&img, "_PyRuntime", ELFSYM_ANY, &addr, NULL) == 0) {
            cfg->runtime = addr;
            rc = 0;
        }
        elfimg_close(&img);
    }
    free(maps);
    if (rc < 0) {
        mp_err(why, "Python %s: no _PyRuntime symbol in %s", info.version, info.pylib);
        return -1;
    }
    rss_cfg_abi(cfg, a);
    *abi = a;
    return 0;
}

int rss_cfg_abi(struct rss_cfg *cfg, const struct pyabi *a)
{
    if (a->minor < 11 || !a->rt.interpreters_head || !a->code.linetable) return -1;
    cfg->exec_tag = a->frame.executable_tag;
    cfg->rt_interp_head = a->rt.interpreters_head;
    cfg->interp_threads_head = a->rt.threads_head;
    cfg->ts_next = a->ts.next;
    cfg->ts_native_tid = a->ts.native_thread_id;
    cfg->ts_cframe = a->ts.cframe;
    cfg->cframe_current = a->ts.cframe_current;
    cfg->ts_current_frame = a->ts.current_frame;
    cfg->fr_back = a->frame.back;
    cfg->fr_code = a->frame.code;
    cfg->fr_instr = a->frame.instr;
    cfg->fr_owner = a->frame.owner;
    cfg->first_not_python = a->frame.first_not_python;
    cfg->code_adaptive = a->code.code_adaptive;
    return 0;
}
#endif
