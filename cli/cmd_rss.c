/* cmd_rss.c -- `memprof rss --pid N`: where resident memory comes from, seen from eBPF with nothing injected. */
#include "gen/rss_config.h"
#ifdef MEMPROF_NO_RSS /* a build that leaves rss out (tests/objects' harness) */
#undef MEMPROF_HAVE_RSS
#define MEMPROF_HAVE_RSS 0
#define MEMPROF_RSS_WHY "left out of this build"
#endif
#include "cli/commands.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client/client.h"
#include "common/opts.h"
#include "common/util.h"

static const char about_rss[] =
    "Live view of a process's resident memory from eBPF (root; no agent is loaded\n"
    "into it): RSS and its parts, the bytes faulted in, mapped and unmapped, by\n"
    "Python line (CPython 3.11+), native function or mapping.\n"
    "When memprofd also has a session on the process (memprofd attach), each\n"
    "refresh shows the agent's tracked live heap (Python + native) beside RSS\n"
    "anon, what is not tracked (allocator caches, fragmentation, untracked\n"
    "native), and with --by line a TRACKED column: the live bytes the agent\n"
    "attributes to each row's line. Without a daemon or session, one note says so.\n";

/* What the options say (rss_run's arguments). */
struct rss_args {
    int pid, once, json, by, limit, rss_stat, check;
    unsigned sample;
    double duration, interval;
    const char *save;
};

#if !MEMPROF_HAVE_RSS
static int rss_run(const struct rss_args *a)
{
    (void)a;
    return cli_fail("rss: this memprof was built without it (%s); install bpftool, clang and libbpf-dev "
                    "(make deps) and rebuild on a kernel with BTF", MEMPROF_RSS_WHY);
}
#else
#include "cli/rss.h"
#include "cli/rss_view.h"
#include "common/pyabi.h"
#include "common/pyversions.h"
#include "probe/procfs.h"

#define RSS_PID_INIT_INO 0xEFFFFFFCu /* include/linux/proc_ns.h */

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): from CapEff. */
static int privileged(void)
{
    long long eff = procfs_self_caps();
    if (eff < 0) return geteuid() == 0;
    return (eff >> 21 & 1) || ((eff >> 38 & 1) && (eff >> 39 & 1));
}

/* The pid of pid in its own pid namespace (the last of NSpid), 0 when unknown. */
static int ns_pid_of(int pid)
{
    char buf[4096];
    return procfs_status(pid, 0, buf, sizeof buf) < 0 ? 0 : (int)procfs_nspid(buf);
}

static int pid_alive(int pid)
{
    char st = procfs_state(pid, 0);
    return st && st != 'Z' && st != 'X';
}

static int on_event(void *ctx, const struct rss_event *e)
{
    rss_view_event(ctx, e);
    return 0;
}

/* What loading the programs needs (checked first: the kernel's own refusals say less). NULL, or why not. */
static const char *cannot_load(void)
{
    struct stat st;
    if (!privileged()) return "needs CAP_BPF and CAP_PERFMON: run as root";
    if (stat("/sys/kernel/btf/vmlinux", &st) < 0)
        return "this kernel has no BTF (/sys/kernel/btf/vmlinux): it needs CONFIG_DEBUG_INFO_BTF=y";
    return NULL;
}

/* --check: the programs loaded into the kernel and unloaded, attached to nothing, for each kind of target the
 * verifier sees differently (its configuration is constant to it: each prunes other paths) -- a process without
 * Python frames and each CPython 3.11+ memprof knows, with memprof in the initial pid namespace and in another. */
static int rss_check(void)
{
    char err[MP_ERRLEN], what[64];
    const char *why = cannot_load();
    int n = 0, bad = 0;
    if (why) return cli_fail("rss: %s", why);
    for (int minor = 0; minor <= MP_PY_MAX_MINOR; minor = minor ? minor + 1 : 11) {
        struct rss_cfg cfg = {.tgid = 1, .sample_every = 128};
        if (minor) {
            const struct pyabi *abi = pyabi_for((uint32_t)3 << 24 | (uint32_t)minor << 16);
            if (!abi || rss_cfg_abi(&cfg, abi) < 0) continue;
            cfg.runtime = 0x1000; /* any: an address the programs would read in the target */
            cfg.pidns_dev = 1;
            cfg.pidns_ino = RSS_PID_INIT_INO;
        }
        for (int ns = 0; ns < 2; ns++) {
            if (ns) {
                cfg.matchns_dev = 1;
                cfg.matchns_ino = RSS_PID_INIT_INO;
                cfg.ns_tgid = 1;
            }
            if (minor) snprintf(what, sizeof what, "CPython 3.%d%s", minor, ns ? ", memprof in a pid namespace" : "");
            else snprintf(what, sizeof what, "no Python frames%s", ns ? ", memprof in a pid namespace" : "");
            n++;
            if (rss_trace_check(&cfg, err) < 0) {
                printf("%-45s %s\n", what, err);
                bad++;
            } else {
                printf("%-45s loads\n", what);
            }
        }
    }
    fflush(stdout);
    if (bad) return cli_fail("rss: the kernel refused memprof's BPF programs for %d of %d kinds of target", bad, n);
    return 0;
}

static int rss_run(const struct rss_args *a)
{
    struct rss_opts o = {.pid = a->pid, .once = a->once, .json = a->json, .limit = a->limit,
                         .interval = a->interval, .by = (enum rss_by)a->by};
    struct rss_cfg cfg = {0};
    struct rss_trace *trace = NULL;
    struct rss_view *v;
    char err[MP_ERRLEN], why[MP_ERRLEN] = "", nspath[64];
    double duration = a->duration, start, next;
    int sample = (int)a->sample, rc = 0;
    struct stat st;
    uint64_t pages[RSS_NMEMBERS];

    const char *cannot;
    if (a->check) return rss_check();
    if (!pid_alive(o.pid)) return cli_fail("pid %d: no such process", o.pid);
    if ((cannot = cannot_load())) return cli_fail("rss: %s", cannot);

    cfg.tgid = (__u32)o.pid;
    cfg.sample_every = (__u32)sample;
    snprintf(nspath, sizeof nspath, "/proc/%d/ns/pid", o.pid);
    if (rss_python_cfg(o.pid, &cfg, &o.abi, o.version, sizeof o.version, why) < 0) {
        memset(&cfg, 0, sizeof cfg);
        cfg.tgid = (__u32)o.pid;
        cfg.sample_every = (__u32)sample;
        snprintf(o.no_python, sizeof o.no_python, "%s", why);
    } else if (stat(nspath, &st) == 0) {
        cfg.pidns_dev = st.st_dev;
        cfg.pidns_ino = st.st_ino;
    }
    /* run inside a pid namespace (a container, a sandbox; the initial one's inode is PROC_PID_INIT_INO): the
     * pid given is one of that namespace; the programs match the target in its own, by its pid there */
    if (stat("/proc/self/ns/pid", &st) == 0 && st.st_ino != RSS_PID_INIT_INO) {
        if (stat(nspath, &st) < 0 || !(cfg.ns_tgid = (__u32)ns_pid_of(o.pid)))
            return cli_fail("pid %d: its pid namespace cannot be read (/proc/%d/ns/pid, NSpid)", o.pid, o.pid);
        cfg.matchns_dev = st.st_dev;
        cfg.matchns_ino = st.st_ino;
    }
    o.sample = (unsigned)sample;
    o.rss_stat = a->rss_stat;
    if (!(v = rss_view_new(&o))) return cli_fail("out of memory");
    rss_view_start_pages(v, pages);
    if (rss_trace_open(&trace, &cfg, a->rss_stat, pages, on_event, v, err) < 0) {
        rss_view_free(v);
        return cli_fail("rss: %s", err);
    }
    rss_view_attach(v, trace);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    start = mp_now();
    next = start + o.interval;
    for (;;) {
        double now = mp_now();
        int exited = 0, last;
        if (now < next && !stop) {
            int ms = (int)((next - now) * 1000) + 1;
            int n = rss_trace_poll(trace, ms < 100 ? ms : 100);
            if (n < 0) {
                rc = cli_fail("rss: reading the ring buffer: %s", strerror(-n));
                break;
            }
            if (pid_alive(o.pid)) continue;
            exited = 1;
        }
        rss_trace_poll(trace, 0);
        if (!exited && !pid_alive(o.pid)) exited = 1;
        last = stop || exited || o.once || (duration > 0 && mp_now() - start >= duration - 1e-3);
        rss_view_tick(v, exited, last);
        if (last) break;
        next += o.interval;
        if (next < mp_now()) next = mp_now() + o.interval;
    }
    rss_trace_close(trace);
    if (a->save && rss_view_save(v, a->save, err) < 0) rc = cli_fail("rss: %s", err);
    else if (a->save) fprintf(stderr, "memprof rss: wrote %s (memprof plot --rss %s -o FILE.svg, memprof export "
                                      "--rss %s --format collapsed|pprof|json|speedscope)\n", a->save, a->save, a->save);
    rss_view_free(v);
    return rc;
}
#endif

int cmd_rss(int argc, char **argv)
{
    struct rss_args a = {.limit = 20, .sample = 128, .interval = 1.0};
    int rc;
    const struct opt opts[] = {
        {"pid", 0, OPT_PID, &a.pid, "PID", "the process (nothing is loaded into it)"},
        {"once", 0, OPT_FLAG, &a.once, NULL, "one interval, one view, then exit"},
        {"json", 0, OPT_FLAG, &a.json, NULL, "one JSON object per refresh; the last line is the final one\n"
                                             "(\"final\": true)"},
        {"duration", 0, OPT_SECONDS, &a.duration, "SECONDS", "stop after SECONDS (default: until Ctrl-C or the\n"
                                                             "process exits)"},
        {"interval", 0, OPT_SECONDS, &a.interval, "SECONDS", "refresh every SECONDS (default 1)", .min = 0.1},
        {"by", 0, OPT_CHOICE, &a.by, NULL, "rows by line (default), function, native (leaf native\n"
                                           "frame) or mapping", .choices = "line|function|native|mapping"},
        {"sample", 0, OPT_UINT, &a.sample, "N", "record about one page fault in N (default 128, a\n"
                                                "record per 512 KiB as the allocation sampler; the\n"
                                                "period is drawn again each refresh); each stands\n"
                                                "for N*4 KiB, or for its share of the transparent\n"
                                                "huge pages mapped meanwhile when it mapped one", .min = 1},
        {"rss-stat", 0, OPT_FLAG, &a.rss_stat, NULL, "also follow every change of the RSS counters\n"
                                                     "(kmem:rss_stat): the peak RSS between refreshes; a\n"
                                                     "tracepoint every page fault of the machine pays"},
        {"limit", 0, OPT_INT, &a.limit, "N", "rows shown (default 20)", .min = 1},
        {"save", 0, OPT_STRING, &a.save, "FILE", "at the end, write the rows and the RSS timeline to FILE\n"
                                                 "for memprof plot --rss FILE and memprof export --rss FILE"},
        CLIENT_SOCKET_OPT,
        {"check", 0, OPT_FLAG, &a.check, NULL, "instead of a view: load the programs into the kernel\n"
                                               "(attached to nothing) for each kind of process, say\n"
                                               "which load, exit 1 with the verifier's words if one\n"
                                               "is refused"},
        {0}};
    const struct opt_cmd cmd = {"memprof rss", opts,
                                .synopsis = "--pid PID [--once] [--json] [--duration SECONDS]\n"
                                            "                   [--interval SECONDS] [--by line|function|native|mapping]\n"
                                            "                   [--sample N] [--rss-stat] [--limit N] [--save FILE]\n"
                                            "                   [--socket PATH]\n"
                                            "       memprof rss --check",
                                .about = about_rss};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if (a.check && a.pid) return opts_usage_error(&cmd, "--check takes no --pid");
    if (!a.check && !a.pid) return opts_usage_error(&cmd, "--pid PID is required");
    return rss_run(&a);
}
