/* main.c -- memprofd: `serve` runs the daemon; `attach`, `detach`, `stop` ask it. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "defaults.h"
#include "http.h"
#include "server.h"
#include "pyversions.h"
#include "util.h"
#include "version.h"

#ifndef MEMPROF_AGENT_PATH
#error "MEMPROF_AGENT_PATH is set by the Makefile from PREFIX"
#endif

static const char *usage_main =
    "usage: memprofd COMMAND [OPTIONS]\n"
    "\n"
    "The memprof daemon: injects the agent into running Python processes and\n"
    "collects what it reports. One daemon per user; `attach` starts it if needed.\n"
    "\n"
    "commands:\n"
    "  serve    run the daemon in the foreground\n"
    "  attach   attach to a running Python process (starts the daemon if needed)\n"
    "  detach   remove the agent from a process; it carries on as before\n"
    "  stop     detach from every process and stop the daemon\n"
    "\n"
    "Run `memprofd COMMAND --help` for a command's options; `memprofd --version`\n"
    "prints the version.\n";

static const char *usage_serve =
    "usage: memprofd serve [--socket PATH] [--agent LIB] [--http HOST:PORT [--http-allow-remote]\n"
    "                      [--http-token-file FILE] [--metrics-top N]]\n"
    "\n"
    "Run the daemon in the foreground, logging to stderr.\n"
    "  --socket PATH   listen here (default: /run/memprof/memprofd.sock for root,\n"
    "                  $XDG_RUNTIME_DIR/memprof/memprofd.sock or /tmp/memprof-UID/...)\n"
    "  --agent LIB     agent library to inject (default: $MEMPROF_AGENT, else\n"
    "                  libmemprof_agent.so next to memprofd, in ../lib/memprof/\n"
    "                  beside it, or " MEMPROF_AGENT_PATH ")\n"
    "  --http HOST:PORT  also serve HTTP (off by default): /metrics (Prometheus),\n"
    "                  /debug/pprof/heap?pid=N and /allocs?pid=N (pprof, for go tool\n"
    "                  pprof, Parca, Pyroscope), /debug/pprof/ (the sessions).\n"
    "                  A loopback address, e.g. 127.0.0.1:9464, unless:\n"
    "  --http-allow-remote  allow a non-loopback address (anyone reaching it reads\n"
    "                  the profiles: use a token and a firewall)\n"
    "  --http-token-file FILE  require \"Authorization: Bearer <FILE's content>\"\n"
    "  --metrics-top N  sites by live bytes and census types per process in\n"
    "                  /metrics (default 10; 0: none)\n";

static const char *usage_attach =
    "usage: memprofd attach --pid PID [OPTIONS]\n"
    "\n"
    "Inject the agent into a running CPython " MP_PY_RANGE_SHORT " process and start a session.\n"
    "  --pid PID            the process\n"
    "  --sample-rate BYTES  mean bytes between allocation samples (default " MP_STR(MP_DEFAULT_SAMPLE_RATE) ")\n"
    "  --exact              count every allocation (slower) instead of sampling\n"
    "  --max-frames N       Python frames kept per sample (default " MP_STR(MP_DEFAULT_MAX_FRAMES) ")\n"
    "  --interval MS        how often the agent reports (default " MP_STR(MP_DEFAULT_INTERVAL_MS) ")\n"
    "  --no-track           attach without allocation tracking\n"
    "  --method M           how the agent gets in: auto (default: remote-exec where it\n"
    "                       works, else ptrace), ptrace (stop a thread briefly and\n"
    "                       load it), remote-exec (Python 3.14+, PEP 768: the main\n"
    "                       thread loads it at its next safe point; nothing is stopped)\n"
    "  --native             also native allocations (malloc, mmap... of C extensions),\n"
    "                       attributed to the Python line running (not with --exact)\n"
    "  --native-frames      with --native: each sampled native allocation keeps its\n"
    "                       native call chain, named by memprofd (libdw): C functions\n"
    "                       under the Python line in memprof export and flamegraph\n"
    "  --socket PATH        the daemon's socket\n"
    "\n"
    "example:\n"
    "  $ memprofd attach --pid 4242\n"
    "  attached to pid 4242: Python 3.11.2, target stopped 1.1 ms, attach took 61 ms\n";

static const char *usage_detach =
    "usage: memprofd detach --pid PID [--socket PATH]\n"
    "\n"
    "Remove the agent from the process; it carries on exactly as before.\n";

static const char *usage_stop =
    "usage: memprofd stop [--socket PATH]\n"
    "\n"
    "Detach from every process and stop the daemon.\n";

static void die(const char *msg)
{
    fprintf(stderr, "memprofd: %s\n", msg);
    exit(1);
}

static int wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

static unsigned long long parse_num(const char *opt, const char *s)
{
    char *end, msg[128];
    unsigned long long v;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || !*s || s[0] == '-') {
        snprintf(msg, sizeof msg, "%s: expected a positive number, got '%s'", opt, s);
        die(msg);
    }
    return v;
}

/* Default agent library: $MEMPROF_AGENT, next to this binary, ../lib/memprof/, or
 * where `make install` put it (MEMPROF_AGENT_PATH, from PREFIX). */
static const char *find_agent(void)
{
    static char path[PATH_MAX];
    char self[PATH_MAX], *slash;
    const char *env = getenv("MEMPROF_AGENT");
    ssize_t n;
    if (env && *env) return env;
    n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    slash = strrchr(self, '/');
    if (slash) {
        *slash = 0;
        snprintf(path, sizeof path, "%s/libmemprof_agent.so", self);
        if (access(path, R_OK) == 0) return path;
        snprintf(path, sizeof path, "%s/../lib/memprof/libmemprof_agent.so", self);
        if (access(path, R_OK) == 0) return realpath(path, self) ? strcpy(path, self) : path;
    }
    if (access(MEMPROF_AGENT_PATH, R_OK) == 0) return MEMPROF_AGENT_PATH;
    return NULL;
}

static int cmd_serve(int argc, char **argv)
{
    static struct option opts[] = {{"socket", required_argument, 0, 's'},
                                   {"agent", required_argument, 0, 'a'},
                                   {"http", required_argument, 0, 'H'},
                                   {"http-allow-remote", no_argument, 0, 'R'},
                                   {"http-token-file", required_argument, 0, 'T'},
                                   {"metrics-top", required_argument, 0, 'N'},
                                   {0}};
    char path[PATH_MAX], err[MP_ERRLEN];
    const char *sock = NULL, *agent = NULL;
    int c;
    if (wants_help(argc, argv)) {
        fputs(usage_serve, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 's') sock = optarg;
        else if (c == 'a') agent = optarg;
        else if (c == 'H') http_config.listen = optarg;
        else if (c == 'R') http_config.allow_remote = 1;
        else if (c == 'T') http_config.token_file = optarg;
        else if (c == 'N') {
            unsigned long long n = parse_num("--metrics-top", optarg);
            if (n > 1000) die("--metrics-top: at most 1000 (every value is a Prometheus series)");
            http_config.top_n = (unsigned)n;
        } else {
            fputs(usage_serve, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        snprintf(err, sizeof err, "serve: unexpected argument '%s' (see memprofd serve --help)", argv[optind]);
        die(err);
    }
    if (http_check(err) < 0) die(err);
    if (!sock) {
        if (mp_default_socket(path, sizeof path) < 0) die("cannot work out the socket path");
        sock = path;
    }
    server_agent_lib = agent ? agent : find_agent();
    if (!server_agent_lib)
        die("cannot find libmemprof_agent.so next to memprofd nor at " MEMPROF_AGENT_PATH
            " (set MEMPROF_AGENT or use --agent)");
    if (access(server_agent_lib, R_OK) < 0) {
        mp_errno(err, "agent library %s", server_agent_lib);
        die(err);
    }
    if (server_run(sock, err) < 0) die(err);
    return 0;
}

static pid_t pid_option(const char *s)
{
    char msg[128];
    pid_t pid = mp_parse_pid(s);
    if (pid < 0) {
        snprintf(msg, sizeof msg, "--pid: not a process id: '%s'", s);
        die(msg);
    }
    return pid;
}

static int cmd_attach(int argc, char **argv)
{
    static struct option opts[] = {{"pid", required_argument, 0, 'p'},         {"socket", required_argument, 0, 's'},
                                   {"sample-rate", required_argument, 0, 'r'}, {"exact", no_argument, 0, 'e'},
                                   {"max-frames", required_argument, 0, 'f'},  {"interval", required_argument, 0, 'i'},
                                   {"no-track", no_argument, 0, 'n'},          {"method", required_argument, 0, 'm'},
                                   {"native", no_argument, 0, 'N'},
                                   {"native-frames", no_argument, 0, 'F'},
                                   {0}};
    Memprof__AttachRequest req = MEMPROF__ATTACH_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    char err[MP_ERRLEN];
    double t0 = mp_now();
    int c, fd;
    if (wants_help(argc, argv)) {
        fputs(usage_attach, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "p:", opts, NULL)) != -1) {
        switch (c) {
        case 'p': req.pid = pid_option(optarg); break;
        case 's': client_socket_opt = optarg; break;
        case 'r': req.sample_rate = parse_num("--sample-rate", optarg); break;
        case 'e': req.exact = 1; break;
        case 'f': req.max_frames = (uint32_t)parse_num("--max-frames", optarg); break;
        case 'i': req.interval_ms = (uint32_t)parse_num("--interval", optarg); break;
        case 'n': req.no_tracking = 1; break;
        case 'm':
            if (strcmp(optarg, "auto") && strcmp(optarg, "ptrace") && strcmp(optarg, "remote-exec"))
                die("attach: --method is auto, ptrace or remote-exec");
            req.method = optarg;
            break;
        case 'N': req.native = 1; break;
        case 'F': req.native_frames = 1; break;
        default: fputs(usage_attach, stderr); return 2;
        }
    }
    if (!req.pid) die("attach: --pid is required (see memprofd attach --help)");
    if (req.native_frames && !req.native) die("attach: --native-frames goes with --native");
    if (req.native && (req.exact || req.no_tracking))
        die("attach: --native samples native allocations: not with --exact or --no-track");
    fd = client_connect(client_socket_opt, 1, err);
    if (fd < 0) die(err);
    env.msg_case = MEMPROF__ENVELOPE__MSG_ATTACH;
    env.attach = &req;
    if (client_call(fd, &env, &reply, 60000, err) < 0) die(err);
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_ATTACH_REPLY) die("unexpected reply from memprofd");
    Memprof__AttachReply *r = reply->attach_reply;
    if (r->error && *r->error) die(r->error);
    if (r->already) {
        fprintf(stderr, "memprofd: pid %d is already attached (Python %s, %s mode, session since %.0f s ago)\n",
                req.pid, r->session->python_version, wire_mode_name(r->session->mode), mp_wallclock() - r->session->attached_since);
        wire_free(reply);
        return 3;
    }
    if (r->note && *r->note) fprintf(stderr, "memprofd: pid %d: %s; attached by ptrace\n", req.pid, r->note);
    if (r->native_note && *r->native_note) fprintf(stderr, "memprofd: pid %d: %s\n", req.pid, r->native_note);
    printf("attached to pid %d: Python %s, target stopped %.2f ms, attach took %.0f ms", req.pid,
           r->session->python_version, r->stop_ms, (mp_now() - t0) * 1000.0);
    if (r->method && !strcmp(r->method, "remote-exec"))
        printf(" (remote-exec: its main thread ran the loader for %.1f ms)", r->exec_ms);
    putchar('\n');
    wire_free(reply);
    close(fd);
    return 0;
}

static int cmd_detach(int argc, char **argv)
{
    static struct option opts[] = {{"pid", required_argument, 0, 'p'}, {"socket", required_argument, 0, 's'}, {0}};
    Memprof__DetachRequest req = MEMPROF__DETACH_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    char err[MP_ERRLEN];
    int c, fd;
    if (wants_help(argc, argv)) {
        fputs(usage_detach, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "p:", opts, NULL)) != -1) {
        if (c == 'p') req.pid = pid_option(optarg);
        else if (c == 's') client_socket_opt = optarg;
        else {
            fputs(usage_detach, stderr);
            return 2;
        }
    }
    if (!req.pid) die("detach: --pid is required (see memprofd detach --help)");
    fd = client_connect(client_socket_opt, 0, err);
    if (fd < 0) die(err);
    env.msg_case = MEMPROF__ENVELOPE__MSG_DETACH;
    env.detach = &req;
    if (client_call(fd, &env, &reply, 30000, err) < 0) die(err);
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_DETACH_REPLY) die("unexpected reply from memprofd");
    if (reply->detach_reply->error && *reply->detach_reply->error) die(reply->detach_reply->error);
    printf("detached from pid %d%s (target stopped %.2f ms)\n", req.pid,
           reply->detach_reply->unloaded ? ", agent unloaded" : "", reply->detach_reply->stop_ms);
    wire_free(reply);
    close(fd);
    return 0;
}

static int cmd_stop(int argc, char **argv)
{
    static struct option opts[] = {{"socket", required_argument, 0, 's'}, {0}};
    Memprof__StopRequest req = MEMPROF__STOP_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    char err[MP_ERRLEN], probe[MP_ERRLEN];
    int c, fd;
    if (wants_help(argc, argv)) {
        fputs(usage_stop, stdout);
        return 0;
    }
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 's') client_socket_opt = optarg;
        else {
            fputs(usage_stop, stderr);
            return 2;
        }
    }
    fd = client_connect(client_socket_opt, 0, err);
    if (fd < 0) die(err);
    env.msg_case = MEMPROF__ENVELOPE__MSG_STOP;
    env.stop = &req;
    if (client_call(fd, &env, &reply, 10000, err) < 0) die(err);
    wire_free(reply);
    /* Wait until it has let go of its sessions and the socket. */
    for (int i = 0; i < 400; i++) {
        Envelope *e;
        if (wire_recv(fd, &e, 50, probe) == 0) {
            wire_free(e);
            continue;
        }
        if (strcmp(probe, "timed out") != 0) break;
    }
    printf("memprofd stopped\n");
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;
    if (!cmd || !strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage_main, cmd ? stdout : stderr);
        return cmd ? 0 : 2;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("memprofd %s\n", MEMPROF_VERSION);
        return 0;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "attach")) return cmd_attach(argc - 1, argv + 1);
    if (!strcmp(cmd, "detach")) return cmd_detach(argc - 1, argv + 1);
    if (!strcmp(cmd, "stop")) return cmd_stop(argc - 1, argv + 1);
    fprintf(stderr, "memprofd: unknown command '%s' (try memprofd --help)\n", cmd);
    return 2;
}
