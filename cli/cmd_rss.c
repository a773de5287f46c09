/* cmd_rss.c -- `memprof rss --pid N`: where resident memory comes from, seen from eBPF with nothing injected. */
#include "rss_config.h"
#ifdef MEMPROF_NO_RSS /* a build that leaves rss out (tests/objects' harness) */
#undef MEMPROF_HAVE_RSS
#define MEMPROF_HAVE_RSS 0
#define MEMPROF_RSS_WHY "left out of this build"
#endif
#include "commands.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static const char usage_text[] =
    "usage: memprof rss --pid N [--once] [--json] [--duration SECONDS] [--interval SECONDS]\n"
    "                   [--by line|function|native|mapping] [--sample N] [--limit N]\n"
    "Live view of a process's resident memory from eBPF (root; no agent is loaded into it): RSS and its parts,\n"
    "the bytes faulted in, mapped and unmapped, by Python line (CPython 3.11+), native function or mapping.\n"
    "  --once             one interval, one view, then exit\n"
    "  --json             one JSON object per refresh; the last line is the final one (\"final\": true)\n"
    "  --duration S       stop after S seconds (default: until Ctrl-C or the process exits)\n"
    "  --interval S       refresh every S seconds (default 1)\n"
    "  --by KEY           rows by line (default), function, native (leaf native frame) or mapping\n"
    "  --sample N         record one page fault in N, at random (default 32); each stands for N*4 KiB\n"
    "  --limit N          rows shown (default 20)\n";

#if !MEMPROF_HAVE_RSS
int cmd_rss(int argc, char **argv)
{
    if (cli_wants_help(argc, argv)) {
        fputs(usage_text, stdout);
        return 0;
    }
    return cli_fail("rss: this memprof was built without it (%s); install bpftool, clang and libbpf-dev "
                    "(make deps) and rebuild on a kernel with BTF", MEMPROF_RSS_WHY);
}
#else
#include "rss.h"
#include "rss_view.h"

/* A bad option value: one line, exit status 2 (usage). */
#define BAD(...) (cli_fail(__VA_ARGS__), 2)

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN): from CapEff. */
static int privileged(void)
{
    char buf[4096], *p;
    unsigned long long eff;
    if (mp_read_file("/proc/self/status", buf, sizeof buf) <= 0 || !(p = strstr(buf, "CapEff:"))) return geteuid() == 0;
    eff = strtoull(p + 7, NULL, 16);
    return (eff >> 21 & 1) || ((eff >> 38 & 1) && (eff >> 39 & 1));
}

static int pid_alive(int pid)
{
    char path[64], buf[512], *p;
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (mp_read_file(path, buf, sizeof buf) <= 0 || !(p = strrchr(buf, ')'))) return 0;
    return p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static int on_event(void *ctx, const struct rss_event *e)
{
    rss_view_event(ctx, e);
    return 0;
}

int cmd_rss(int argc, char **argv)
{
    static const struct option opts[] = {
        {"pid", required_argument, 0, 'p'},      {"once", no_argument, 0, 'o'},
        {"json", no_argument, 0, 'j'},           {"duration", required_argument, 0, 'd'},
        {"interval", required_argument, 0, 'i'}, {"by", required_argument, 0, 'b'},
        {"sample", required_argument, 0, 's'},   {"limit", required_argument, 0, 'l'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    struct rss_opts o = {.interval = 1.0, .limit = 20, .by = RSS_BY_LINE};
    struct rss_cfg cfg = {0};
    struct rss_trace *trace = NULL;
    struct rss_view *v;
    char err[MP_ERRLEN], why[MP_ERRLEN] = "", nspath[64];
    double duration = 0, start, next;
    int c, sample = 32, rc = 0;
    struct stat st;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': if (cli_parse_pid(optarg, &o.pid) < 0) return BAD("--pid: not a pid: %s", optarg); break;
        case 'o': o.once = 1; break;
        case 'j': o.json = 1; break;
        case 'd': if (!((duration = atof(optarg)) > 0)) return BAD("--duration: a number of seconds > 0"); break;
        case 'i': if (!((o.interval = atof(optarg)) >= 0.1)) return BAD("--interval: at least 0.1 seconds"); break;
        case 'b':
            if (!strcmp(optarg, "line")) o.by = RSS_BY_LINE;
            else if (!strcmp(optarg, "function")) o.by = RSS_BY_FUNCTION;
            else if (!strcmp(optarg, "native")) o.by = RSS_BY_NATIVE;
            else if (!strcmp(optarg, "mapping")) o.by = RSS_BY_MAPPING;
            else return BAD("--by: line, function, native or mapping");
            break;
        case 's': if ((sample = atoi(optarg)) < 1) return BAD("--sample: a whole number >= 1"); break;
        case 'l': if ((o.limit = atoi(optarg)) < 1) return BAD("--limit: a whole number >= 1"); break;
        case 'h': fputs(usage_text, stdout); return 0;
        default: fputs(usage_text, stderr); return 2;
        }
    }
    if (optind < argc) return BAD("rss: unexpected argument '%s' (see memprof rss --help)", argv[optind]);
    if (!o.pid) return BAD("rss: --pid N is required (see memprof rss --help)");
    if (!pid_alive(o.pid)) return cli_fail("pid %d: no such process", o.pid);
    if (!privileged()) return cli_fail("rss: needs CAP_BPF and CAP_PERFMON: run as root");
    if (stat("/sys/kernel/btf/vmlinux", &st) < 0)
        return cli_fail("rss: this kernel has no BTF (/sys/kernel/btf/vmlinux): it needs CONFIG_DEBUG_INFO_BTF=y");

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
    o.sample = (unsigned)sample;
    if (!(v = rss_view_new(&o))) return cli_fail("out of memory");
    if (rss_trace_open(&trace, &cfg, on_event, v, err) < 0) {
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
    rss_view_free(v);
    return rc;
}
#endif
