/* rss_trace.c -- memprof rss's BPF side from user space: load the skeleton, attach, read the ring buffer. */
#include "rss_config.h"
#if MEMPROF_HAVE_RSS
#include "rss.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <errno.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rss.skel.h"

struct rss_trace {
    struct rss_bpf *skel;
    struct ring_buffer *rb;
    rss_event_fn cb;
    void *ctx;
};

#define TRACEFS "/sys/kernel/tracing"

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_WARN && getenv("MEMPROF_BPF_DEBUG")) return vfprintf(stderr, fmt, ap);
    return 0;
}

/* A record unpacked: its Python pairs and native addresses (only those found travel) into their arrays. */
static int on_sample(void *ctx, void *data, size_t len)
{
    struct rss_trace *t = ctx;
    const struct rss_record *r = data;
    struct rss_event e = {0};
    size_t head = offsetof(struct rss_record, v);
    int npy, nstack;
    if (len < head) return 0;
    npy = r->npy;
    nstack = r->nstack;
    if (npy < 0 || npy > RSS_MAX_PYFRAMES || nstack < 0 || nstack > RSS_MAX_STACK * 8 ||
        len < head + 16 * (size_t)npy + (size_t)nstack)
        return 0;
    e.kind = r->kind;
    e.tid = r->tid;
    e.ts = r->ts;
    e.addr = r->addr;
    e.len = r->len;
    e.addr2 = r->addr2;
    e.len2 = r->len2;
    e.npy = npy;
    e.nstack = nstack;
    for (int i = 0; i < npy; i++) {
        e.pycode[i] = r->v[2 * i];
        e.pyoff[i] = (__s64)r->v[2 * i + 1];
    }
    memcpy(e.stack, &r->v[2 * npy], (size_t)nstack);
    return t->cb(t->ctx, &e);
}

/* libbpf finds tracepoint ids under /sys/kernel/debug/tracing or /sys/kernel/tracing: mounts tracefs at the
 * latter when neither has the events (1: mounted here, to undo), 0 when present, -1 with err. */
static int tracefs_ready(char *err)
{
    struct stat st;
    if (stat("/sys/kernel/debug/tracing/events/syscalls", &st) == 0 || stat(TRACEFS "/events/syscalls", &st) == 0)
        return 0;
    if (stat("/sys/kernel/debug/tracing", &st) == 0) {
        mp_err(err, "tracefs: /sys/kernel/debug/tracing exists but has no syscall events (kernel without "
                    "CONFIG_FTRACE_SYSCALLS?)");
        return -1;
    }
    if (mount("nodev", TRACEFS, "tracefs", 0, NULL) < 0) {
        mp_errno(err, "tracefs not mountable at " TRACEFS " (memprof rss attaches to tracepoints)");
        return -1;
    }
    if (stat(TRACEFS "/events/exceptions/page_fault_user", &st) < 0) {
        umount2(TRACEFS, MNT_DETACH);
        mp_err(err, "tracefs: this kernel has no exceptions:page_fault_user tracepoint");
        return -1;
    }
    return 1;
}

int rss_trace_open(struct rss_trace **out, const struct rss_cfg *cfg, rss_event_fn cb, void *ctx, char *err)
{
    struct rss_trace *t = calloc(1, sizeof *t);
    int mounted, rc;
    if (!t) {
        mp_err(err, "out of memory");
        return -1;
    }
    libbpf_set_print(quiet);
    t->cb = cb;
    t->ctx = ctx;
    if (!(t->skel = rss_bpf__open())) {
        mp_errno(err, "cannot open the BPF object");
        goto fail;
    }
    t->skel->rodata->cfg = *cfg;
    if ((rc = rss_bpf__load(t->skel)) < 0) {
        if (rc == -EPERM || rc == -EACCES)
            mp_err(err, "needs CAP_BPF and CAP_PERFMON: run as root");
        else
            mp_err(err, "the kernel refused memprof's BPF programs: %s (MEMPROF_BPF_DEBUG=1 shows the verifier's log)",
                   strerror(-rc));
        goto fail;
    }
    if ((mounted = tracefs_ready(err)) < 0) goto fail;
    rc = rss_bpf__attach(t->skel);
    if (mounted) umount2(TRACEFS, MNT_DETACH); /* attached tracepoints are perf events: they stay */
    if (rc < 0) {
        if (rc == -EPERM || rc == -EACCES)
            mp_err(err, "needs CAP_BPF and CAP_PERFMON: run as root");
        else
            mp_err(err, "cannot attach to the tracepoints: %s", strerror(-rc));
        goto fail;
    }
    if (!(t->rb = ring_buffer__new(bpf_map__fd(t->skel->maps.events), on_sample, t, NULL))) {
        mp_errno(err, "cannot open the BPF ring buffer");
        goto fail;
    }
    *out = t;
    return 0;
fail:
    rss_trace_close(t);
    return -1;
}

int rss_trace_poll(struct rss_trace *t, int timeout_ms)
{
    /* the programs wake this only when 1 MiB is waiting: after the wait, read whatever is there */
    int n = ring_buffer__poll(t->rb, timeout_ms), m;
    if (n < 0 && n != -EINTR) return n;
    m = ring_buffer__consume(t->rb);
    return m < 0 ? m : (n > 0 ? n : 0) + m;
}

void rss_trace_counters(struct rss_trace *t, uint64_t rss[RSS_NMEMBERS], int seen[RSS_NMEMBERS], uint64_t *faults,
                        uint64_t *lost)
{
    volatile struct rss_bpf__bss *b = t->skel->bss;
    for (int m = 0; m < RSS_NMEMBERS; m++) {
        rss[m] = b->rss[m];
        seen[m] = b->rss_seen[m] != 0;
    }
    *faults = 0;
    int ncpu = libbpf_num_possible_cpus(), zero = 0;
    if (ncpu > 0) {
        struct rss_fault_cpu per[ncpu];
        if (bpf_map_lookup_elem(bpf_map__fd(t->skel->maps.faults), &zero, per) == 0)
            for (int c = 0; c < ncpu; c++) *faults += per[c].n;
    }
    *lost = b->events_lost;
}

void rss_trace_close(struct rss_trace *t)
{
    if (!t) return;
    ring_buffer__free(t->rb);
    rss_bpf__destroy(t->skel);
    free(t);
}
#endif
