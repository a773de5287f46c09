/* rss_trace.c -- memprof rss's BPF side from user space: load the skeleton, attach it (syscall tracepoints, a page
 * fault perf event per thread of the target), read the ring buffer and the counters. */
#include "gen/rss_config.h"
#if MEMPROF_HAVE_RSS
#include "cli/rss.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <errno.h>
#include <linux/perf_event.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "gen/rss.skel.h"

/* A thread's page fault perf event and on_fault's link to it (destroying the link closes the event). */
struct fault_event {
    int fd;
    struct bpf_link *link;
};

struct rss_trace {
    struct rss_bpf *skel;
    struct fault_event *ev;   /* one per thread of the target at the start */
    int nev;
    unsigned period;          /* the mean period (--sample) */
    struct ring_buffer *rb;
    rss_event_fn cb;
    void *ctx;
};

#define TRACEFS "/sys/kernel/tracing"

/* What the verifier said about the last program it refused: libbpf hands its log to the print callback as one
 * message, "prog 'NAME': -- BEGIN PROG LOAD LOG --\nLOG-- END PROG LOAD LOG --\n". Kept are the program's name and
 * the log's last lines that say why (the statistics after them dropped). */
static char refused[MP_ERRLEN];

static void keep_refusal(const char *msg)
{
    const char *begin = strstr(msg, "-- BEGIN PROG LOAD LOG --\n"), *end, *p, *name = strstr(msg, "prog '");
    char why[2][200] = {"", ""};
    int n = 0;
    if (!begin || !name || name > begin || !(end = strstr(begin, "-- END PROG LOAD LOG --"))) return;
    name += 6;
    p = begin + strlen("-- BEGIN PROG LOAD LOG --\n");
    while (p < end) { /* each line; the last two that are not statistics */
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = (size_t)((nl ? nl : end) - p);
        if (len && strncmp(p, "processed ", 10) && strncmp(p, "verification time", 17) &&
            strncmp(p, "stack depth", 11) && strncmp(p, "mark_precise", 12)) {
            snprintf(why[n & 1], sizeof why[0], "%.*s", (int)len, p);
            n++;
        }
        p += len + 1;
    }
    if (!n) return;
    snprintf(refused, sizeof refused, "%.*s: %s%s%s", (int)strcspn(name, "'"), name,
             n > 1 ? why[n & 1] : "", n > 1 ? " / " : "", why[(n - 1) & 1]);
}

static int quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    char *msg = NULL;
    va_list again;
    int n = 0;
    if (level != LIBBPF_WARN) return 0;
    va_copy(again, ap);
    if (vasprintf(&msg, fmt, again) >= 0) {
        keep_refusal(msg);
        if (getenv("MEMPROF_BPF_DEBUG")) n = fputs(msg, stderr);
        free(msg);
    }
    va_end(again);
    return n;
}

/* The skeleton opened with cfg and loaded into the kernel (with rss_stat, also the rss_stat and exec programs):
 * 0, or -1 with err saying why (the verifier's own words when it refused a program). */
static int load(struct rss_bpf **out, const struct rss_cfg *cfg, int rss_stat, char *err)
{
    struct rss_bpf *skel;
    int rc;
    libbpf_set_print(quiet);
    refused[0] = 0;
    if (!(*out = skel = rss_bpf__open())) {
        mp_errno(err, "cannot open the BPF object");
        return -1;
    }
    skel->rodata->cfg = *cfg;
    if (!rss_stat) { /* its tracepoint costs every page fault of the machine: only when asked for */
        bpf_program__set_autoload(skel->progs.on_rss_stat, false);
        bpf_program__set_autoload(skel->progs.on_exec, false);
    }
    if ((rc = rss_bpf__load(skel)) == 0) return 0;
    if (refused[0]) /* the verifier's refusal, whatever errno it came with (EACCES for most) */
        mp_err(err, "the kernel's verifier refused memprof's BPF program %s (MEMPROF_BPF_DEBUG=1 shows its whole "
                    "log)", refused);
    else if (rc == -EPERM || rc == -EACCES)
        mp_err(err, "needs CAP_BPF and CAP_PERFMON: run as root (the kernel refused to load BPF programs: %s)",
               strerror(-rc));
    else
        mp_err(err, "the kernel refused memprof's BPF programs: %s (MEMPROF_BPF_DEBUG=1 shows libbpf's messages)",
               strerror(-rc));
    return -1;
}

int rss_trace_check(const struct rss_cfg *cfg, char *err)
{
    struct rss_bpf *skel = NULL;
    int rc = load(&skel, cfg, 1, err);
    rss_bpf__destroy(skel);
    return rc;
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
    if (stat(TRACEFS "/events/syscalls", &st) < 0) {
        umount2(TRACEFS, MNT_DETACH);
        mp_err(err, "tracefs: this kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)");
        return -1;
    }
    return 1;
}

/* A period drawn evenly from [N/2, 3N/2) (mean N; N below 2: every fault): a fixed one could keep landing on
 * the same line of a loop that faults as many pages per turn. */
static unsigned draw_period(unsigned n)
{
    return n < 2 ? 1 : n / 2 + (unsigned)(random() % n);
}

/* One software event per thread of the target counting its page faults (taken in user mode, as
 * exceptions:page_fault_user), running on_fault about every t->period-th; inherited by the threads each starts. Threads
 * started while these are opened by one not yet opened are missed (opening one twice would count its faults twice). */
static int open_fault_events(struct rss_trace *t, pid_t pid, char *err)
{
    char path[64];
    DIR *d;
    struct dirent *de;
    struct perf_event_attr a = {0};
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if (!(d = opendir(path))) {
        mp_errno(err, "%s", path);
        return -1;
    }
    a.size = sizeof a;
    a.type = PERF_TYPE_SOFTWARE;
    a.config = PERF_COUNT_SW_PAGE_FAULTS;
    a.inherit = 1;
    a.exclude_kernel = 1;
    a.exclude_hv = 1;
    while ((de = readdir(d))) {
        int tid = atoi(de->d_name), fd;
        struct fault_event *ev;
        if (tid <= 0) continue;
        a.sample_period = draw_period(t->period);
        fd = (int)syscall(SYS_perf_event_open, &a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
        if (fd < 0 && errno == ESRCH) continue; /* the thread ended */
        if (fd < 0) {
            if (errno == EACCES || errno == EPERM)
                mp_errno(err, "needs CAP_BPF and CAP_PERFMON: run as root (perf_event_open)");
            else
                mp_errno(err, "perf_event_open (page faults of thread %d)", tid);
            goto fail;
        }
        if (!(ev = realloc(t->ev, (size_t)(t->nev + 1) * sizeof *ev))) {
            close(fd);
            mp_err(err, "out of memory");
            goto fail;
        }
        t->ev = ev;
        ev[t->nev].fd = fd;
        if (!(ev[t->nev].link = bpf_program__attach_perf_event(t->skel->progs.on_fault, fd))) {
            int e = errno;
            close(fd);
            mp_err(err, "cannot run the page fault program on thread %d's events: %s", tid, strerror(e));
            goto fail;
        }
        t->nev++;
    }
    closedir(d);
    return 0;
fail:
    closedir(d);
    return -1;
}

int rss_trace_open(struct rss_trace **out, const struct rss_cfg *cfg, int rss_stat, const uint64_t start_pages[RSS_NMEMBERS],
                   rss_event_fn cb, void *ctx, char *err)
{
    struct rss_trace *t = calloc(1, sizeof *t);
    int mounted, rc;
    if (!t) {
        mp_err(err, "out of memory");
        return -1;
    }
    t->cb = cb;
    t->ctx = ctx;
    if (load(&t->skel, cfg, rss_stat, err) < 0) goto fail;
    for (int m = 0; m < RSS_NMEMBERS; m++) t->skel->bss->rss_pages[m] = start_pages[m];
    t->period = cfg->sample_every ? cfg->sample_every : 1;
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
    if (open_fault_events(t, (pid_t)cfg->tgid, err) < 0) goto fail;
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
    /* the programs wake this only when 2 MiB is waiting (WAKE_AT): after the wait, read whatever is there */
    int n = ring_buffer__poll(t->rb, timeout_ms), m;
    if (n < 0 && n != -EINTR) return n;
    m = ring_buffer__consume(t->rb);
    return m < 0 ? m : (n > 0 ? n : 0) + m;
}

void rss_trace_reperiod(struct rss_trace *t)
{
    for (int i = 0; i < t->nev; i++) {
        uint64_t p = draw_period(t->period);
        ioctl(t->ev[i].fd, PERF_EVENT_IOC_PERIOD, &p);
    }
}

uint64_t rss_trace_peak(struct rss_trace *t)
{
    volatile struct rss_bpf__bss *b = t->skel->bss;
    uint64_t peak = b->peak_pages;
    b->peak_pages = 0;
    return peak * RSS_PAGE;
}

void rss_trace_counters(struct rss_trace *t, uint64_t *faults, uint64_t *lost)
{
    volatile struct rss_bpf__bss *b = t->skel->bss;
    *faults = 0;
    for (int i = 0; i < t->nev; i++) { /* with the counts of the threads it was inherited by */
        uint64_t n;
        if (read(t->ev[i].fd, &n, sizeof n) == sizeof n) *faults += n;
    }
    *lost = b->events_lost;
}

void rss_trace_close(struct rss_trace *t)
{
    if (!t) return;
    ring_buffer__free(t->rb);
    for (int i = 0; i < t->nev; i++) bpf_link__destroy(t->ev[i].link); /* closes the event too */
    free(t->ev);
    rss_bpf__destroy(t->skel);
    free(t);
}
#endif
