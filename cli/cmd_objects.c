/* cmd_objects.c -- `memprof types`, `growth`, `backrefs` and `chain`: what objects a
 * process holds and why, asked of the agent in it (agent/census.c) through memprofd. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "client/client.h"

#define CALL_TIMEOUT_MS 120000 /* a chain on a huge heap takes a few levels of passes */
#define TYPE_CELL 1024        /* a type name in a table, escaped (cli_esc) */

static const char *about_types =
    "Count the objects of a running Python process by type (objgraph's\n"
    "show_most_common_types), with their total shallow size (sys.getsizeof of each,\n"
    "plus the list/dict/set buffers they own). The census runs inside the target,\n"
    "in C, holding the GIL; the footer says for how long.\n";

static const char *example_types =
    "example:\n"
    "  $ memprof types --pid 4242 --limit 3\n"
    "  TYPE                    COUNT        SIZE\n"
    "  MyBigFatObject        1000000    53.4 MiB\n"
    "  list                  1000113    61.0 MiB\n"
    "  function                 6212   868.9 KiB\n"
    "  total: 2035402 objects, 118.7 MiB, 512 types (GC-tracked); GIL held 21.3 ms\n";

static const char *about_growth =
    "Watch object counts change (objgraph's show_growth, with decreases and sizes):\n"
    "first a baseline census, then every S seconds the types whose count or total\n"
    "size changed since the previous census, with signed deltas.\n";

static const char *example_growth =
    "example:\n"
    "  $ memprof growth --pid 4242 --interval 2 --count 1\n"
    "  baseline: 2035402 objects, 118.7 MiB (GIL 21.3 ms)\n"
    "  ...\n"
    "  [+2.0s] 2039404 objects (+4002), 119.0 MiB (+259.4 KiB); GIL 20.9 ms\n"
    "  TYPE                    COUNT    DELTA     RATE        SIZE       DELTA\n"
    "  MyBigFatObject        1002000    +2000  +1000/s    53.5 MiB   +109.4 KiB\n"
    "  list                  1002115    +2002  +1001/s    61.1 MiB   +125.1 KiB\n";

#define SYN_BACKREFS                                                                       \
    "--pid PID (--type NAME | --addr 0xADDR) -o FILE.dot|.png|.svg\n"                     \
    "                        [--max-depth N] [--too-many N] [--max-start N] [--socket PATH]"
#define SYN_CHAIN "--pid PID (--type NAME | --addr 0xADDR) [--max-depth N] [--socket PATH]"

static const char *about_backrefs =
    "Draw who refers to some objects (objgraph's show_backrefs): the objects of type\n"
    "NAME (a sample of --max-start of them) or the one at ADDR, their referrers, the\n"
    "referrers of those, ... up to --max-depth. Boxes show the type and a short repr;\n"
    "the starting objects are red, modules green, edges carry the attribute name,\n"
    "dict key or index, and nodes with more than --too-many referrers get a\n"
    "\"N more backreferences\" box. .png/.svg are rendered with Graphviz's dot.\n";

static const char *example_backrefs =
    "example:\n"
    "  $ memprof backrefs --pid 4242 --addr 0x7f3a1c2b4d80 -o x.png\n"
    "  Graph written to x.png (6 objects; GIL held 35.2 ms)\n";

static const char *about_chain =
    "Print the shortest chain of references from a module to an object of type NAME\n"
    "(or the object at ADDR): why it is still alive (objgraph's find_backref_chain).\n"
    "When no module leads to it, the chain starts at an object nothing else refers\n"
    "to: a running function's local variable, C code or the interpreter holds it.\n";

static const char *example_chain =
    "example:\n"
    "  $ memprof chain --pid 4242 --type MyBigFatObject\n"
    "  module __main__ → dict (module globals) ['cache'] → list [3] → MyBigFatObject 0x7f3a1c2b4d80\n";

/* ---------------------------------------------------------------- options */

struct opts {
    int pid;
    int limit;
    int sort_size, longnames, all, json;
    double interval;
    int count;
    const char *type_name;
    uint64_t addr;
    unsigned max_depth, too_many, max_start;
    const char *output;
};

/* --addr 0xADDR */
static int set_addr(const char *arg, void *dest)
{
    char *end;
    uint64_t v;
    errno = 0;
    v = strtoull(arg, &end, 16);
    if (errno || end == arg || *end || !v) return -1;
    *(uint64_t *)dest = v;
    return 0;
}

/* Parse argv into o against the options of the command cmd->prog: `which`
 * names them by their letter in the table below (--socket always). Returns 0
 * to go on, or -1 with *status the exit status. */
static int parse(int argc, char **argv, struct opt_cmd *cmd, const char *which, struct opts *o, int *status)
{
    const struct opt all[] = {
        CLI_PID_OPT(&o->pid),
        {"limit", 0, OPT_INT, &o->limit, "N", "at most N types (default 20, 0 = all)", 0, 1000000},
        {"sort", 0, OPT_CHOICE, &o->sort_size, NULL, "order by object count (default) or total size",
         .choices = "count|size"},
        {"long", 0, OPT_FLAG, &o->longnames, NULL, "module-qualified type names (collections.OrderedDict)"},
        {"all", 0, OPT_FLAG, &o->all, NULL, "also count objects the GC does not track (str, int, float,\n"
                                            "bytes, ...) reachable from tracked ones, each once"},
        {"json", 0, OPT_FLAG, &o->json, NULL, "JSON instead of the table (growth: one object per census)"},
        {"interval", 0, OPT_SECONDS, &o->interval, "S", "seconds between censuses (default 5; fractions allowed)", 0.1,
         86400},
        {"count", 0, OPT_INT, &o->count, "K", "stop after K reports (default: run until interrupted)", 0, 100000000},
        {"type", 0, OPT_STRING, &o->type_name, "NAME", "type name, short (Foo) or module-qualified (pkg.mod.Foo)"},
        {"addr", 0, OPT_CALL, &o->addr, "0xADDR", "one object, by id()", .what = "an address like 0x7f3a1c2b4d80",
         .set = set_addr},
        {"max-depth", 0, OPT_UINT, &o->max_depth, "N", "levels of referrers (backrefs: default 3; chain: 20)", 0, 100},
        {"too-many", 0, OPT_UINT, &o->too_many, "N", "referrers shown per object (default 10)", 0, 1000},
        {"max-start", 0, OPT_UINT, &o->max_start, "N", "objects of the type to start from (default 1)", 0, 100},
        {"output", 'o', OPT_STRING, &o->output, "FILE", "output: .dot (Graphviz source), .png or .svg"},
        CLIENT_SOCKET_OPT};
    const char *letters = "plsLajicTAdmno"; /* one per row of all[] but --socket */
    struct opt mine[sizeof all / sizeof all[0] + 1];
    size_t n = 0;

    memset(o, 0, sizeof *o);
    o->limit = 20;
    o->interval = 5;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!letters[i] || strchr(which, letters[i])) mine[n++] = all[i];
    memset(&mine[n], 0, sizeof mine[n]);
    cmd->opts = mine;
    n = (size_t)opts_parse(cmd, argc, argv, status);
    cmd->opts = NULL; /* mine ends here; opts_usage_error needs only the name */
    return (int)n < 0 ? -1 : 0;
}

/* ---------------------------------------------------------------- agent calls */

/* One request to the agent in o->pid: 0 (*env owns *reply), or the exit status after printing the error. */
static int agent_call(const struct opts *o, Memprof__AgentRequest *req, Envelope **env,
                      Memprof__AgentReply **reply)
{
    char err[MP_ERRLEN];
    int fd = client_connect(client_socket_opt, 1, err);
    if (fd < 0) return cli_fail("%s", err);
    if (client_agent_call(fd, o->pid, req, env, reply, CALL_TIMEOUT_MS, err) < 0) {
        char prefix[32];
        close(fd);
        snprintf(prefix, sizeof prefix, "pid %d:", o->pid);
        if (strncmp(err, prefix, strlen(prefix))) { /* the daemon did not name the pid */
            char msg[MP_ERRLEN + 32];
            snprintf(msg, sizeof msg, "pid %d: %s", o->pid, err);
            return cli_fail_call(msg);
        }
        return cli_fail_call(err);
    }
    close(fd);
    if (!*reply) {
        wire_free(*env);
        return cli_fail("pid %d: empty reply from the agent", o->pid);
    }
    return 0;
}

static int census_call(const struct opts *o, Envelope **env, Memprof__AgentReply **reply)
{
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    Memprof__CensusRequest creq = MEMPROF__CENSUS_REQUEST__INIT;
    int rc;
    creq.all = o->all;
    req.body_case = MEMPROF__AGENT_REQUEST__BODY_CENSUS;
    req.census = &creq;
    if ((rc = agent_call(o, &req, env, reply))) return rc;
    if ((*reply)->body_case != MEMPROF__AGENT_REPLY__BODY_CENSUS || !(*reply)->census) {
        wire_free(*env);
        return cli_fail("pid %d: the agent answered something else than a census", o->pid);
    }
    return 0;
}

static double gil_of(const Memprof__AgentReply *r, double inner)
{
    return r->gil_ms > 0 ? r->gil_ms : inner;
}

/* ---------------------------------------------------------------- census tables */

/* One row per displayed name: types of the same name are merged, as objgraph does. */
struct type_row {
    char *name;
    uint64_t count, bytes;
};

struct table {
    struct type_row *rows;
    size_t n;
    uint64_t objects, bytes;
};

static int row_by_name(const void *a, const void *b)
{
    return strcmp(((const struct type_row *)a)->name, ((const struct type_row *)b)->name);
}

static int row_by_count(const void *a, const void *b)
{
    const struct type_row *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? 1 : -1;
    return strcmp(x->name, y->name);
}

static int row_by_size(const void *a, const void *b)
{
    const struct type_row *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
    return strcmp(x->name, y->name);
}

static void table_free(struct table *t)
{
    for (size_t i = 0; i < t->n; i++) free(t->rows[i].name);
    free(t->rows);
    memset(t, 0, sizeof *t);
}

/* Rows of a census, merged by name and sorted by name (for diffs). */
static int table_make(const Memprof__CensusReply *c, int longnames, struct table *t)
{
    size_t k = 0;
    memset(t, 0, sizeof *t);
    t->rows = calloc(c->n_types + 1, sizeof *t->rows);
    if (!t->rows) return -1;
    for (size_t i = 0; i < c->n_types; i++) {
        const Memprof__TypeCount *tc = c->types[i];
        char *name;
        if (longnames && tc->module[0] && strcmp(tc->module, "builtins")) {
            if (asprintf(&name, "%s.%s", tc->module, tc->name) < 0) name = NULL;
        } else {
            name = strdup(tc->name);
        }
        if (!name) return -1;
        t->rows[k].name = name;
        t->rows[k].count = tc->count;
        t->rows[k].bytes = tc->bytes;
        k++;
    }
    qsort(t->rows, k, sizeof *t->rows, row_by_name);
    t->n = 0;
    for (size_t i = 0; i < k; i++) {
        if (t->n && !strcmp(t->rows[t->n - 1].name, t->rows[i].name)) {
            t->rows[t->n - 1].count += t->rows[i].count;
            t->rows[t->n - 1].bytes += t->rows[i].bytes;
            free(t->rows[i].name);
            continue;
        }
        t->rows[t->n++] = t->rows[i];
    }
    t->objects = c->objects;
    t->bytes = c->bytes;
    return 0;
}

static int name_width(const struct type_row *rows, size_t n)
{
    char name[TYPE_CELL];
    int w = 20;
    for (size_t i = 0; i < n; i++)
        if ((int)strlen(cli_esc(rows[i].name, name, sizeof name)) > w) w = (int)strlen(name);
    return w > 60 ? 60 : w;
}

static void print_rows(struct type_row *rows, size_t n, int limit)
{
    char sz[32], name[TYPE_CELL];
    size_t shown = limit && (size_t)limit < n ? (size_t)limit : n;
    int w = name_width(rows, shown);
    printf("%-*s %12s %12s\n", w, "TYPE", "COUNT", "SIZE");
    for (size_t i = 0; i < shown; i++)
        printf("%-*s %12" PRIu64 " %12s\n", w, cli_esc(rows[i].name, name, sizeof name), rows[i].count,
               cli_bytes((double)rows[i].bytes, sz, sizeof sz));
}

int cmd_types(int argc, char **argv)
{
    struct opts o;
    struct table t;
    Envelope *env;
    Memprof__AgentReply *reply;
    Memprof__CensusReply *c;
    char sz[32];
    struct opt_cmd cmd = {"memprof types", .about = about_types, .more = example_types};
    int rc;
    if (parse(argc, argv, &cmd, "plsLaj", &o, &rc) < 0) return rc;
    if ((rc = census_call(&o, &env, &reply))) return rc;
    c = reply->census;
    if (table_make(c, o.longnames, &t) < 0) {
        wire_free(env);
        return cli_fail("out of memory");
    }
    qsort(t.rows, t.n, sizeof *t.rows, o.sort_size ? row_by_size : row_by_count);
    if (o.json) {
        size_t shown = o.limit && (size_t)o.limit < t.n ? (size_t)o.limit : t.n;
        printf("{\"pid\": %d, \"objects\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"types\": %zu, "
               "\"all\": %s, \"gil_ms\": %.3f, \"slices\": %u, \"gil_max_ms\": %.3f, \"gil_max_cpu_ms\": %.3f, \"walk_ms\": %.3f, "
               "\"tracked_change\": %" PRId64 ", \"timestamp\": %.3f, \"by_type\": [",
               o.pid, c->objects, c->bytes, t.n, o.all ? "true" : "false", gil_of(reply, c->gil_ms),
               c->slices, c->gil_max_ms, c->gil_max_cpu_ms, c->walk_ms, c->tracked_change, c->timestamp);
        for (size_t i = 0; i < shown; i++) {
            printf("%s{\"name\": ", i ? ", " : "");
            cli_json_str(stdout, t.rows[i].name);
            printf(", \"count\": %" PRIu64 ", \"bytes\": %" PRIu64 "}", t.rows[i].count, t.rows[i].bytes);
        }
        printf("]}\n");
    } else {
        print_rows(t.rows, t.n, o.limit);
        printf("total: %" PRIu64 " objects, %s, %zu types (%s); GIL held %.1f ms", c->objects,
               cli_bytes((double)c->bytes, sz, sizeof sz), t.n,
               o.all ? "GC-tracked and the untracked objects they reach" : "GC-tracked",
               gil_of(reply, c->gil_ms));
        if (c->slices > 1)
            printf(" in %u slices (longest %.1f ms) over %.0f ms", c->slices, c->gil_max_ms, c->walk_ms);
        printf("\n");
    }
    table_free(&t);
    wire_free(env);
    return 0;
}

/* ---------------------------------------------------------------- growth */

struct change {
    const char *name;
    uint64_t count, bytes;
    int64_t dcount, dbytes;
};

static int change_cmp(const void *a, const void *b)
{
    const struct change *x = a, *y = b;
    uint64_t ax = (uint64_t)llabs(x->dcount), ay = (uint64_t)llabs(y->dcount);
    if (ax != ay) return ax < ay ? 1 : -1;
    ax = (uint64_t)llabs(x->dbytes);
    ay = (uint64_t)llabs(y->dbytes);
    if (ax != ay) return ax < ay ? 1 : -1;
    return strcmp(x->name, y->name);
}

/* Types whose count or size differs between two name-sorted tables. */
static size_t diff_tables(const struct table *a, const struct table *b, struct change *out)
{
    size_t i = 0, j = 0, n = 0;
    while (i < a->n || j < b->n) {
        int c = i >= a->n ? 1 : j >= b->n ? -1 : strcmp(a->rows[i].name, b->rows[j].name);
        struct change ch = {0};
        if (c < 0) { /* gone */
            ch.name = a->rows[i].name;
            ch.dcount = -(int64_t)a->rows[i].count;
            ch.dbytes = -(int64_t)a->rows[i].bytes;
            i++;
        } else if (c > 0) { /* new */
            ch.name = b->rows[j].name;
            ch.count = b->rows[j].count;
            ch.bytes = b->rows[j].bytes;
            ch.dcount = (int64_t)b->rows[j].count;
            ch.dbytes = (int64_t)b->rows[j].bytes;
            j++;
        } else {
            ch.name = b->rows[j].name;
            ch.count = b->rows[j].count;
            ch.bytes = b->rows[j].bytes;
            ch.dcount = (int64_t)b->rows[j].count - (int64_t)a->rows[i].count;
            ch.dbytes = (int64_t)b->rows[j].bytes - (int64_t)a->rows[i].bytes;
            i++, j++;
        }
        if (ch.dcount || ch.dbytes) out[n++] = ch;
    }
    return n;
}

static const char *signed_bytes(int64_t d, char *buf, size_t len)
{
    char tmp[24];
    cli_bytes((double)d, tmp, sizeof tmp);
    snprintf(buf, len, "%s%s", d > 0 ? "+" : "", tmp);
    return buf;
}

static void growth_print(const struct opts *o, const struct table *prev, const struct table *cur,
                         double elapsed, double dt, double gil)
{
    struct change *ch = calloc(prev->n + cur->n + 1, sizeof *ch);
    size_t n = ch ? diff_tables(prev, cur, ch) : 0, shown;
    int64_t dobj = (int64_t)cur->objects - (int64_t)prev->objects;
    int64_t dbytes = (int64_t)cur->bytes - (int64_t)prev->bytes;
    char s1[32], s2[32], s3[32];
    qsort(ch, n, sizeof *ch, change_cmp);
    shown = o->limit && (size_t)o->limit < n ? (size_t)o->limit : n;
    if (o->json) {
        printf("{\"t\": %.3f, \"interval\": %.3f, \"objects\": %" PRIu64 ", \"objects_delta\": %" PRId64
               ", \"bytes\": %" PRIu64 ", \"bytes_delta\": %" PRId64 ", \"gil_ms\": %.3f, \"changes\": [",
               elapsed, dt, cur->objects, dobj, cur->bytes, dbytes, gil);
        for (size_t i = 0; i < shown; i++) {
            printf("%s{\"name\": ", i ? ", " : "");
            cli_json_str(stdout, ch[i].name);
            printf(", \"count\": %" PRIu64 ", \"delta\": %" PRId64 ", \"bytes\": %" PRIu64
                   ", \"bytes_delta\": %" PRId64 "}",
                   ch[i].count, ch[i].dcount, ch[i].bytes, ch[i].dbytes);
        }
        printf("]}\n");
    } else {
        printf("[+%.1fs] %" PRIu64 " objects (%+" PRId64 "), %s (%s); GIL %.1f ms\n", elapsed,
               cur->objects, dobj, cli_bytes((double)cur->bytes, s1, sizeof s1),
               signed_bytes(dbytes, s2, sizeof s2), gil);
        if (!n) {
            printf("no type changed\n");
        } else {
            struct type_row *names = calloc(shown + 1, sizeof *names);
            int w;
            for (size_t i = 0; names && i < shown; i++) names[i].name = (char *)ch[i].name;
            w = names ? name_width(names, shown) : 20;
            free(names);
            printf("%-*s %12s %9s %9s %12s %12s\n", w, "TYPE", "COUNT", "DELTA", "RATE", "SIZE", "DELTA");
            for (size_t i = 0; i < shown; i++) {
                char rate[32], name[TYPE_CELL];
                snprintf(rate, sizeof rate, "%+.0f/s", dt > 0 ? ch[i].dcount / dt : 0.0);
                printf("%-*s %12" PRIu64 " %+9" PRId64 " %9s %12s %12s\n", w,
                       cli_esc(ch[i].name, name, sizeof name), ch[i].count,
                       ch[i].dcount, rate, cli_bytes((double)ch[i].bytes, s1, sizeof s1),
                       signed_bytes(ch[i].dbytes, s3, sizeof s3));
            }
            if (shown < n) printf("(%zu more types changed)\n", n - shown);
        }
    }
    fflush(stdout);
    free(ch);
}

static void sleep_until(double t)
{
    double now = mp_now();
    if (t > now) {
        struct timespec ts = {(time_t)(t - now), (long)((t - now - (time_t)(t - now)) * 1e9)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
    }
}

int cmd_growth(int argc, char **argv)
{
    struct opts o;
    struct table prev, cur;
    Envelope *env;
    Memprof__AgentReply *reply;
    double t0, tprev, next;
    char sz[32];
    struct opt_cmd cmd = {"memprof growth", .about = about_growth, .more = example_growth};
    int rc;
    if (parse(argc, argv, &cmd, "plajic", &o, &rc) < 0) return rc;
    t0 = tprev = mp_now();
    if ((rc = census_call(&o, &env, &reply))) return rc;
    if (table_make(reply->census, 0, &prev) < 0) {
        wire_free(env);
        return cli_fail("out of memory");
    }
    if (o.json) {
        printf("{\"t\": 0, \"baseline\": true, \"objects\": %" PRIu64 ", \"bytes\": %" PRIu64
               ", \"types\": %zu, \"gil_ms\": %.3f}\n",
               prev.objects, prev.bytes, prev.n, gil_of(reply, reply->census->gil_ms));
    } else {
        struct table top;
        printf("baseline: %" PRIu64 " objects, %s, %zu types (GIL %.1f ms)\n", prev.objects,
               cli_bytes((double)prev.bytes, sz, sizeof sz), prev.n, gil_of(reply, reply->census->gil_ms));
        if (table_make(reply->census, 0, &top) == 0) {
            qsort(top.rows, top.n, sizeof *top.rows, row_by_count);
            print_rows(top.rows, top.n, o.limit);
            table_free(&top);
        }
    }
    fflush(stdout);
    wire_free(env);
    if (!o.json) alloc_leak_suspects(o.pid, 0, stdout); /* baseline of the allocation sites */
    next = t0 + o.interval;
    for (long i = 0; !o.count || i < o.count; i++) {
        double t;
        sleep_until(next);
        next += o.interval;
        t = mp_now();
        if ((rc = census_call(&o, &env, &reply))) {
            table_free(&prev);
            return rc;
        }
        if (table_make(reply->census, 0, &cur) < 0) {
            wire_free(env);
            table_free(&prev);
            return cli_fail("out of memory");
        }
        growth_print(&o, &prev, &cur, t - t0, t - tprev, gil_of(reply, reply->census->gil_ms));
        if (!o.json) alloc_leak_suspects(o.pid, o.limit < 10 && o.limit ? o.limit : 10, stdout);
        wire_free(env);
        table_free(&prev);
        prev = cur;
        tprev = t;
    }
    table_free(&prev);
    return 0;
}

/* ---------------------------------------------------------------- backrefs graph */

/* The back-references (or the chain) o asks for: 0, or an exit status after printing an error. */
static int backrefs_call(const struct opts *o, int chain, Envelope **env, Memprof__AgentReply **reply)
{
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    Memprof__BackrefsRequest breq = MEMPROF__BACKREFS_REQUEST__INIT;
    int rc;
    breq.type_name = o->type_name ? (char *)o->type_name : (char *)"";
    breq.addr = o->addr;
    breq.max_depth = o->max_depth;
    breq.too_many = o->too_many;
    breq.max_start = o->max_start;
    breq.chain_only = chain;
    req.body_case = MEMPROF__AGENT_REQUEST__BODY_BACKREFS;
    req.backrefs = &breq;
    if ((rc = agent_call(o, &req, env, reply))) return rc;
    if ((*reply)->body_case != MEMPROF__AGENT_REPLY__BODY_BACKREFS || !(*reply)->backrefs) {
        wire_free(*env);
        return cli_fail("pid %d: the agent answered something else than back-references", o->pid);
    }
    return 0;
}

/* objgraph's _quote */
static void dot_quoted(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\') fputs("\\\\", f);
        else if (*s == '"') fputs("\\\"", f);
        else if (*s == '\n') fputs("\\n", f);
        else fputc(*s, f);
    }
}

static int is_identifier(const char *s, size_t n)
{
    if (!n || !(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'))) return 0;
    for (size_t i = 1; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

/* The agent labels edges in accessor syntax (".attr", "['key']", "[3]");
 * objgraph writes attributes with weight 10, identifier keys bare with weight
 * 2, other keys as "type\nrepr". */
static void dot_edge_label(FILE *f, const char *label, const char *src_type)
{
    size_t n = strlen(label);
    if (!n) return;
    if (label[0] == '.') {
        fputs(" [label=\"", f);
        dot_quoted(f, label + 1);
        fputs("\",weight=10]", f);
    } else if (n > 4 && label[0] == '[' && (label[1] == '\'' || label[1] == '"') && label[n - 1] == ']' &&
               label[n - 2] == label[1]) {
        if (is_identifier(label + 2, n - 4)) {
            fprintf(f, " [label=\"%.*s\",weight=2]", (int)(n - 4), label + 2);
        } else {
            char *inner = strndup(label + 1, n - 2);
            fputs(" [label=\"str\\n", f);
            if (inner) dot_quoted(f, inner);
            fputs("\"]", f);
            free(inner);
        }
    } else if (label[0] == '[' && strcmp(src_type, "list") && strcmp(src_type, "tuple") &&
               n > 2 && strspn(label + 1, "-0123456789") == n - 2) {
        fprintf(f, " [label=\"int\\n%.*s\"]", (int)(n - 2), label + 1);
    } else {
        fputs(" [label=\"", f);
        dot_quoted(f, label);
        fputs("\"]", f);
    }
}

static void gradient(double from, double to, unsigned depth, unsigned max_depth, double *v)
{
    double t = max_depth ? (double)depth / max_depth : 0;
    *v = from * (1 - t) + to * t;
}

static const Memprof__GraphNode *node_at(const Memprof__BackrefsReply *r, uint64_t addr)
{
    for (size_t i = 0; i < r->n_nodes; i++)
        if (r->nodes[i]->addr == addr && !r->nodes[i]->more) return r->nodes[i];
    return NULL;
}

/* The graph in objgraph's DOT dialect (objgraph._show_graph), node by node in
 * breadth-first order, each followed by the edges from its referrers. */
static void dot_write(FILE *f, const Memprof__BackrefsReply *r, unsigned max_depth)
{
    fputs("digraph ObjectGraph {\n  node[shape=box, style=filled, fillcolor=white];\n", f);
    for (size_t i = 0; i < r->n_nodes; i++)
        if (r->nodes[i]->start && !r->nodes[i]->more)
            fprintf(f, "  o%" PRIu64 "[fontcolor=red];\n", r->nodes[i]->addr);
    for (size_t i = 0; i < r->n_nodes; i++) {
        const Memprof__GraphNode *n = r->nodes[i];
        double h = 0, s = 0, v;
        if (n->more) continue;
        fprintf(f, "  o%" PRIu64 "[label=\"", n->addr);
        dot_quoted(f, n->type_name);
        fputs("\\n", f);
        dot_quoted(f, n->label);
        fputs("\"];\n", f);
        gradient(1, .3, n->depth, max_depth, &v);
        if (n->is_module) h = .3, s = 1;
        fprintf(f, "  o%" PRIu64 "[fillcolor=\"%g,%g,%g\"];\n", n->addr, h, s, v);
        if (v < 0.5) fprintf(f, "  o%" PRIu64 "[fontcolor=white];\n", n->addr);
        for (size_t e = 0; e < r->n_edges; e++) {
            const Memprof__GraphEdge *ed = r->edges[e];
            const Memprof__GraphNode *src;
            if (ed->dst != n->addr) continue;
            src = node_at(r, ed->src);
            fprintf(f, "  o%" PRIu64 " -> o%" PRIu64, ed->src, ed->dst);
            dot_edge_label(f, ed->label, src ? src->type_name : "");
            fputs(";\n", f);
        }
        for (size_t k = 0; k < r->n_nodes; k++) {
            const Memprof__GraphNode *m = r->nodes[k];
            if (!m->more || m->addr != n->addr) continue;
            gradient(1, .3, n->depth + 1, max_depth, &v);
            fprintf(f, "  too_many_o%" PRIu64 "->o%" PRIu64 "[color=red,style=dotted,len=0.25,weight=10];\n",
                    n->addr, n->addr);
            fprintf(f, "  too_many_o%" PRIu64 "[label=\"%u more backreferences\",shape=box,height=0.25,"
                       "color=red,fillcolor=\"%g,%g,%g\",fontsize=6];\n",
                    n->addr, m->more, 0.0, 1.0, v);
            fprintf(f, "  too_many_o%" PRIu64 "[fontcolor=white];\n", n->addr);
        }
    }
    fputs("}\n", f);
}

/* dot on PATH, like objgraph's _program_in_path. */
static int find_dot(char *out, size_t len)
{
    const char *path = getenv("PATH");
    char *copy, *dir, *save = NULL;
    int found = 0;
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    if (!(copy = strdup(path))) return 0;
    for (dir = strtok_r(copy, ":", &save); dir && !found; dir = strtok_r(NULL, ":", &save)) {
        snprintf(out, len, "%s/dot", *dir ? dir : ".");
        found = access(out, X_OK) == 0;
    }
    free(copy);
    return found;
}

static int render(const char *dotbin, const char *fmt, const char *src, const char *out, char *err)
{
    int status;
    pid_t pid = fork();
    if (pid < 0) {
        mp_errno(err, "fork");
        return -1;
    }
    if (pid == 0) {
        char tflag[16], oflag[4096];
        snprintf(tflag, sizeof tflag, "-T%s", fmt);
        snprintf(oflag, sizeof oflag, "-o%s", out);
        execl(dotbin, "dot", tflag, oflag, src, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            mp_errno(err, "waiting for dot");
            return -1;
        }
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        mp_err(err, "dot failed (%s %d) rendering %s", WIFEXITED(status) ? "exit code" : "signal",
               WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), out);
        return -1;
    }
    return 0;
}

/* Write the graph to .dot, or render it to .png/.svg through a temporary .dot. */
static int write_graph(const char *out, const Memprof__BackrefsReply *r, unsigned max_depth, char *err)
{
    const char *ext = strrchr(out, '.');
    char dotbin[4096], tmp[] = "/tmp/memprof-graph-XXXXXX.dot";
    FILE *f;
    int fd, rc;
    if (ext && !strcmp(ext, ".dot")) {
        if (!(f = fopen(out, "w"))) {
            mp_errno(err, "cannot write %s", out);
            return -1;
        }
        dot_write(f, r, max_depth);
        if (fclose(f) != 0) {
            mp_errno(err, "writing %s", out);
            return -1;
        }
        return 0;
    }
    if (!ext || (strcmp(ext, ".png") && strcmp(ext, ".svg"))) {
        mp_err(err, "-o %s: the output must end in .dot, .png or .svg", out);
        return -1;
    }
    if (!find_dot(dotbin, sizeof dotbin)) {
        mp_err(err, "Graphviz 'dot' not found on PATH: install graphviz to render %s, or write the graph "
                    "source with -o graph.dot",
               out);
        return -1;
    }
    if ((fd = mkstemps(tmp, 4)) < 0 || !(f = fdopen(fd, "w"))) {
        mp_errno(err, "temporary file");
        if (fd >= 0) close(fd), unlink(tmp);
        return -1;
    }
    dot_write(f, r, max_depth);
    if (fclose(f) != 0) {
        mp_errno(err, "writing %s", tmp);
        unlink(tmp);
        return -1;
    }
    rc = render(dotbin, ext + 1, tmp, out, err);
    unlink(tmp);
    return rc;
}

int cmd_backrefs(int argc, char **argv)
{
    struct opts o;
    Envelope *env;
    Memprof__AgentReply *reply;
    Memprof__BackrefsReply *r;
    char err[MP_ERRLEN];
    size_t objects = 0;
    struct opt_cmd cmd = {"memprof backrefs", .synopsis = SYN_BACKREFS, .about = about_backrefs,
                          .more = example_backrefs};
    int rc;
    if (parse(argc, argv, &cmd, "pTAdmno", &o, &rc) < 0) return rc;
    if (!!o.type_name == !!o.addr) return opts_usage_error(&cmd, "give one of --type NAME or --addr 0xADDR");
    if (!o.output) return opts_usage_error(&cmd, "-o FILE.dot|FILE.png|FILE.svg is required");
    {   /* refuse a bad output name before asking the target for anything */
        const char *ext = strrchr(o.output, '.');
        if (!ext || (strcmp(ext, ".dot") && strcmp(ext, ".png") && strcmp(ext, ".svg")))
            return opts_usage_error(&cmd, "-o %s: the output must end in .dot, .png or .svg", o.output);
        if (strcmp(ext, ".dot") && !find_dot(err, sizeof err))
            return cli_fail("Graphviz 'dot' not found on PATH: install graphviz to render %s, or write "
                            "the graph source with -o graph.dot",
                            o.output);
    }
    if ((rc = backrefs_call(&o, 0, &env, &reply))) return rc;
    r = reply->backrefs;
    if (write_graph(o.output, r, o.max_depth ? o.max_depth : 3, err) < 0) {
        wire_free(env);
        return cli_fail("%s", err);
    }
    for (size_t i = 0; i < r->n_nodes; i++) objects += !r->nodes[i]->more;
    printf("Graph written to %s (%zu objects, %" PRIu64 " matching %s; GIL held %.1f ms", o.output,
           objects, r->matched, o.addr ? "address" : o.type_name, reply->gil_ms);
    if (r->slices > 1)
        printf(" in %u slices, longest %.1f ms (%.1f ms of CPU)", r->slices, r->gil_max_ms, r->gil_max_cpu_ms);
    printf(")\n");
    wire_free(env);
    return 0;
}

/* ---------------------------------------------------------------- chain */

static void chain_node_text(const Memprof__GraphNode *n, const Memprof__GraphNode *prev, const char *in_label,
                            int first)
{
    char type[TYPE_CELL], label[1024];
    cli_esc(n->type_name, type, sizeof type);
    cli_esc(n->label, label, sizeof label);
    if (n->is_module) {
        printf("module %s", label);
    } else if (in_label && !strcmp(in_label, ".__dict__")) {
        printf("%s (%s)", type, prev && prev->is_module ? "module globals" : "__dict__");
    } else if (first) {
        printf("%s (%s)", type, label);
    } else {
        printf("%s", type);
    }
}

int cmd_chain(int argc, char **argv)
{
    struct opts o;
    Envelope *env;
    Memprof__AgentReply *reply;
    Memprof__BackrefsReply *r;
    const Memprof__GraphNode *prev = NULL;
    const char *in_label = NULL;
    struct opt_cmd cmd = {"memprof chain", .synopsis = SYN_CHAIN, .about = about_chain, .more = example_chain};
    int rc;
    if (parse(argc, argv, &cmd, "pTAd", &o, &rc) < 0) return rc;
    if (!!o.type_name == !!o.addr) return opts_usage_error(&cmd, "give one of --type NAME or --addr 0xADDR");
    o.max_start = 1;
    if ((rc = backrefs_call(&o, 1, &env, &reply))) return rc;
    r = reply->backrefs;
    if (!r->n_chain) {
        wire_free(env);
        return cli_fail("pid %d: no reference chain found", o.pid);
    }
    for (size_t i = 0; i < r->n_chain; i++) {
        const Memprof__GraphNode *n = node_at(r, r->chain[i]);
        const char *out_label = NULL;
        if (!n) break;
        for (size_t e = 0; e < r->n_edges && i + 1 < r->n_chain; e++)
            if (r->edges[e]->src == r->chain[i] && r->edges[e]->dst == r->chain[i + 1])
                out_label = r->edges[e]->label;
        if (i) fputs(" → ", stdout);
        chain_node_text(n, prev, in_label, i == 0 && !n->is_module && r->n_chain > 1);
        if (i + 1 == r->n_chain) printf(" 0x%" PRIx64, n->addr);
        else if (out_label && out_label[0] && strcmp(out_label, ".__dict__")) {
            char label[1024];
            printf(" %s", cli_esc(out_label, label, sizeof label));
        }
        prev = n;
        in_label = out_label;
    }
    putchar('\n');
    {
        const Memprof__GraphNode *root = node_at(r, r->chain[0]);
        if (root && !root->is_module)
            printf("(no module leads here: the first object is referred to by no other object, so a "
                   "running function's local variables, C code or the interpreter hold it)\n");
    }
    wire_free(env);
    return 0;
}
