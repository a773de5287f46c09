/* fuzz_alloc_report.c -- libFuzzer target: what memprofd makes of an agent's allocation reports
 * (daemon/alloc.c: frame, stack and delta ids, counters, timestamps, history) and the views it builds
 * from them for clients (alloc_reply_fill: AllocData with history; the /metrics top sites). The input is a
 * stream of frames as on the agent's socket; every AllocReport in it goes to one session. Linked with the
 * real session table and transport (session.c, conn.c, loop.c, logging.c: no connection is ever made here);
 * what reads the target (procinfo.c, libdwfl) is stubbed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/alloc.h"
#include "daemon/procinfo.h"
#include "daemon/session.h"
#include "probe/symbolize.h"

/* /proc of a target that does not exist: never asked by what is fuzzed, but for its RSS. */
int proc_may_access(uid_t uid, pid_t pid, char *err) { (void)uid, (void)pid, (void)err; abort(); }
Memprof__ErrorReply__Code proc_error_code(pid_t pid, Memprof__ErrorReply__Code otherwise)
{
    (void)pid, (void)otherwise;
    abort();
}
unsigned long long proc_rss(pid_t pid) { (void)pid; return 1 << 20; }
/* libdwfl stays out: every address is named after itself, in one of 4 modules (the interning is fuzzed) */
struct symbolizer *sym_open(pid_t pid, int lines) { (void)pid, (void)lines; return (struct symbolizer *)&sym_open; }
void sym_close(struct symbolizer *y) { (void)y; }
void sym_resolve(struct symbolizer *y, uint64_t pc, int ret, struct sym_frame *o)
{
    (void)y, (void)ret;
    snprintf(o->module, sizeof o->module, "/fuzz/lib%u.so", (unsigned)(pc >> 40 & 3));
    snprintf(o->func, sizeof o->func, "lib%u.so+0x%llx", (unsigned)(pc >> 40 & 3), (unsigned long long)(pc & 0xffff));
    snprintf(o->file, sizeof o->file, "%s", o->module);
    o->line = 0;
    o->offset = pc & 0xffff;
    o->named = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_rbuf rb = {0};
    struct session *s = session_new(4242);
    struct alloc_reply v;
    struct alloc_totals t;
    struct alloc_site sites[10];
    Envelope *env;
    char err[MP_ERRLEN];
    if (!s) return 0;
    s->state = SESS_ATTACHED;
    s->run = size & 1; /* memprof run's history (doubling steps) or an attach's */
    rb.buf = malloc(size ? size : 1);
    memcpy(rb.buf, data, size);
    rb.len = rb.cap = size;
    while (wire_take(&rb, &env, err) == 1) {
        if (env->msg_case == MEMPROF__ENVELOPE__MSG_ALLOC_REPORT) alloc_report(s, env->alloc_report);
        wire_free(env);
    }
    wire_rbuf_free(&rb);
    if (s->alloc) {
        for (int history = 0; history < 2; history++)
            if (alloc_reply_fill(s, history, &v, err) == 0) alloc_reply_free(&v);
        alloc_totals(s, &t);
        alloc_top_sites(s, 10, sites);
    }
    alloc_free(s->alloc);
    session_free(s);
    return 0;
}
