/* main.c -- memprofd: `serve` runs the daemon; `attach`, `detach`, `stop` ask it. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"
#include "common/defaults.h"
#include "common/opts.h"
#include "common/pyversions.h"
#include "common/util.h"
#include "common/version.h"
#include "daemon/attach.h"
#include "daemon/http.h"
#include "daemon/serve.h"
#include "daemon/session.h"
#include "daemon/watch.h"

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
    "prints the version.\n"
    "\n" MP_EXIT_HELP;

static const char *about_serve =
    "Run the daemon in the foreground, logging to stderr.\n";

static const char *about_attach =
    "Inject the agent into a running CPython " MP_PY_RANGE_SHORT " process and start a session.\n";

static const char *example_attach =
    "example:\n"
    "  $ memprofd attach --pid 4242\n"
    "  attached to pid 4242: Python 3.11.2, target stopped 1.1 ms, attach took 61 ms\n";

static const char *about_detach =
    "Remove the agent from the process; it carries on exactly as before.\n";

static const char *about_stop =
    "Detach from every process and stop the daemon.\n";

/* "memprofd: MESSAGE" on stderr; returns MP_EXIT_FAIL for the command to return. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    fputs("memprofd: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return MP_EXIT_FAIL;
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

/* --watch RULE and --watch-file FILE, in the order given: parsed once the options are (watch.c). */
struct watch_args {
    const char *arg[64];
    int is_file[64];
    int n;
};
static struct watch_args watch_args;

static int add_watch_arg(const char *arg, int is_file)
{
    if (watch_args.n == (int)(sizeof watch_args.arg / sizeof watch_args.arg[0])) return -1;
    watch_args.is_file[watch_args.n] = is_file;
    watch_args.arg[watch_args.n++] = arg;
    return 0;
}
static int set_watch(const char *arg, void *dest) { return (void)dest, add_watch_arg(arg, 0); }
static int set_watch_file(const char *arg, void *dest) { return (void)dest, add_watch_arg(arg, 1); }

/* The rules of --watch and --watch-file: 0, or MP_EXIT_USAGE after one line naming the rule (or the file's
 * line) and the problem. */
static int parse_watch_args(void)
{
    char err[MP_ERRLEN], line[MP_ERRLEN + 300];
    for (int i = 0; i < watch_args.n; i++) {
        const char *a = watch_args.arg[i];
        if ((watch_args.is_file[i] ? watch_add_file(a, err) : watch_add_rule(a, err)) == 0) continue;
        if (watch_args.is_file[i]) snprintf(line, sizeof line, "%s", err);
        else snprintf(line, sizeof line, "--watch '%s': %s", a, err);
        for (char *p = line; *p; p++) /* one line, whatever the rule held */
            if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
        fprintf(stderr, "memprofd serve: %s\n", line);
        return MP_EXIT_USAGE;
    }
    return 0;
}

static const char *more_serve =
    "A watch RULE is blank-separated terms that must all match: command=REGEX\n"
    "(POSIX extended, against the command line, arguments joined by spaces;\n"
    "quote a value with blanks: command='a b'), user=NAME|UID, container=ID\n"
    "(a prefix of the 64-digit id in /proc/PID/cgroup), pod=NAME and\n"
    "namespace=NAME (a Kubernetes pod's, shell patterns: pod='web-*'); and\n"
    "memprofd attach's settings without dashes: sample-rate=BYTES, exact,\n"
    "max-frames=N, interval=MS, no-track, method=M, native, native-frames.\n"
    "\n"
    "example:\n"
    "  $ memprofd serve --watch 'command=gunicorn user=www-data native'\n";

static int cmd_serve(int argc, char **argv)
{
    char path[PATH_MAX], err[MP_ERRLEN];
    const char *sock = NULL, *agent = NULL;
    int rc, watch_max_given = 0;
    unsigned wmax = 0;
    const struct opt opts[] = {
        {"socket", 0, OPT_STRING, &sock, "PATH", "listen here (default: /run/memprof/memprofd.sock for root,\n"
                                                 "$XDG_RUNTIME_DIR/memprof/memprofd.sock or /tmp/memprof-UID/...)"},
        {"agent", 0, OPT_STRING, &agent, "LIB", "agent library to inject (default: $MEMPROF_AGENT, else\n"
                                                "libmemprof_agent.so next to memprofd, in ../lib/memprof/\n"
                                                "beside it, or " MEMPROF_AGENT_PATH ")"},
        {"http", 0, OPT_STRING, &http_config.listen, "HOST:PORT",
         "also serve HTTP (off by default): /metrics (Prometheus),\n"
         "/debug/pprof/heap?pid=N and /allocs?pid=N (pprof, for go tool\n"
         "pprof, Parca, Pyroscope), /debug/pprof/ (the sessions; JSON\n"
         "with ?format=json), /debug/pprof/targets (Prometheus HTTP SD).\n"
         "A loopback address, e.g. 127.0.0.1:9464, unless:"},
        {"http-allow-remote", 0, OPT_FLAG, &http_config.allow_remote, NULL,
         "allow a non-loopback address (anyone reaching it reads\n"
         "the profiles: use a token and a firewall)"},
        {"http-token-file", 0, OPT_STRING, &http_config.token_file, "FILE",
         "require \"Authorization: Bearer <FILE's content>\""},
        {"metrics-top", 0, OPT_UINT, &http_config.top_n, "N",
         "sites by live bytes and census types per process in\n"
         "/metrics (default 10; 0: none; at most 1000: each is a series)", 0, 1000},
        {"watch", 0, OPT_CALL, NULL, "RULE",
         "attach to every process that matches RULE, now and as they\n"
         "start (a /proc scan every second), with RULE's settings\n"
         "(repeatable; see below)", .what = "a rule (64 --watch and --watch-file at most)", .set = set_watch},
        {"watch-file", 0, OPT_CALL, NULL, "FILE",
         "rules from FILE, one a line (# comments, blank lines)", .what = "a file (64 --watch and --watch-file at most)", .set = set_watch_file},
        {"watch-max", 0, OPT_UINT, &wmax, "N",
         "at most N sessions attached by rules at once (default 64);\n"
         "a new matching process waits until one ends", 1, 100000},
        {0}};
    const struct opt_cmd cmd = {"memprofd serve", opts, .about = about_serve, .more = more_serve};
    watch_args.n = 0;
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    for (int i = 1; i < argc; i++) watch_max_given |= !strncmp(argv[i], "--watch-max", 11);
    if ((rc = parse_watch_args())) return rc;
    if (watch_max_given && !watch_active()) return opts_usage_error(&cmd, "--watch-max goes with --watch or --watch-file");
    if (wmax) watch_max = wmax;
    {
        /* what the options say (the address, its options) is a usage error; an unreadable token file is not */
        const char *token = http_config.token_file;
        if (token && !http_config.listen) return opts_usage_error(&cmd, "--http-token-file needs --http HOST:PORT");
        http_config.token_file = NULL;
        if (http_check(err) < 0) return opts_usage_error(&cmd, "%s", err);
        http_config.token_file = token;
    }
    if (http_check(err) < 0) return fail("%s", err);
    if (!sock) {
        if (mp_default_socket(path, sizeof path) < 0) return fail("cannot work out the socket path");
        sock = path;
    }
    session_agent_lib = agent ? agent : find_agent();
    if (!session_agent_lib)
        return fail("cannot find libmemprof_agent.so next to memprofd nor at " MEMPROF_AGENT_PATH
                    " (set MEMPROF_AGENT or use --agent)");
    if (access(session_agent_lib, R_OK) < 0) {
        mp_errno(err, "agent library %s", session_agent_lib);
        return fail("%s", err);
    }
    if (serve_run(sock, err) < 0) return fail("%s", err);
    return MP_EXIT_OK;
}

/* Send req to the daemon and wait for its reply: 0 with *reply (wire_free it) and *fd open, or an exit status after
 * printing the error. */
static int call(const Envelope *req, int spawn, int timeout_ms, Envelope **reply, int *fd)
{
    char err[MP_ERRLEN];
    if ((*fd = client_connect(client_socket_opt, spawn, err)) < 0) return fail("%s", err);
    if (client_call(*fd, req, reply, timeout_ms, err) < 0) {
        close(*fd);
        fail("%s", err);
        return client_exit_status(client_error_code());
    }
    return 0;
}

static int cmd_attach(int argc, char **argv)
{
    Memprof__AttachRequest req = MEMPROF__ATTACH_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    char err[MP_ERRLEN];
    double t0 = mp_now();
    int fd, rc, method = 0;
    /* the rows write into req's fields (int32_t, uint32_t, protobuf_c_boolean: int, unsigned, int) */
    const struct opt opts[] = {
        {"pid", 'p', OPT_PID, &req.pid, "PID", "the process", .required = 1},
        ATTACH_SETTINGS_OPTS(&req, &method),
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprofd attach", opts, .about = about_attach, .more = example_attach};
    _Static_assert(sizeof req.pid == sizeof(int) && sizeof req.max_frames == sizeof(unsigned) &&
                       sizeof req.exact == sizeof(int), "the option rows write int and unsigned");
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if (attach_settings_check(&req, "--", err) < 0) return opts_usage_error(&cmd, "%s", err);
    req.method = (char *)attach_methods[method];
    env.msg_case = MEMPROF__ENVELOPE__MSG_ATTACH;
    env.attach = &req;
    if ((rc = call(&env, 1, 60000, &reply, &fd))) return rc;
    Memprof__AttachReply *r = reply->attach_reply;
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_ATTACH_REPLY) rc = fail("unexpected reply from memprofd");
    else if (r->error && *r->error) {
        fail("%s", r->error);
        rc = client_exit_status(r->code);
    } else if (r->already) {
        fprintf(stderr, "memprofd: pid %d is already attached (Python %s, %s mode, session since %.0f s ago)\n",
                req.pid, r->session->python_version, wire_mode_name(r->session->mode), mp_wallclock() - r->session->attached_since);
        rc = MP_EXIT_ALREADY;
    } else {
        /* one line each: why remote-exec was not used, what the agent's thread may change for it (fork) */
        for (const char *l = r->note, *e; l && *l; l = *e ? e + 1 : e) {
            e = strchrnul(l, '\n');
            fprintf(stderr, "memprofd: pid %d: %.*s\n", req.pid, (int)(e - l), l);
        }
        if (r->native_note && *r->native_note) fprintf(stderr, "memprofd: pid %d: %s\n", req.pid, r->native_note);
        printf("attached to pid %d: Python %s, target stopped %.2f ms, attach took %.0f ms", req.pid,
               r->session->python_version, r->stop_ms, (mp_now() - t0) * 1000.0);
        if (r->method && !strcmp(r->method, "remote-exec"))
            printf(" (remote-exec: its main thread ran the loader for %.1f ms)", r->exec_ms);
        putchar('\n');
    }
    wire_free(reply);
    close(fd);
    return rc;
}

static int cmd_detach(int argc, char **argv)
{
    Memprof__DetachRequest req = MEMPROF__DETACH_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    int fd, rc, pid = 0;
    const struct opt opts[] = {{"pid", 'p', OPT_PID, &pid, "PID", "the process", .required = 1},
                               CLIENT_SOCKET_OPT,
                               {0}};
    const struct opt_cmd cmd = {"memprofd detach", opts, .about = about_detach};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    req.pid = pid;
    env.msg_case = MEMPROF__ENVELOPE__MSG_DETACH;
    env.detach = &req;
    if ((rc = call(&env, 0, 30000, &reply, &fd))) return rc;
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_DETACH_REPLY) rc = fail("unexpected reply from memprofd");
    else if (reply->detach_reply->error && *reply->detach_reply->error) {
        fail("%s", reply->detach_reply->error);
        rc = client_exit_status(reply->detach_reply->code);
    } else
        printf("detached from pid %d%s (target stopped %.2f ms)\n", req.pid,
               reply->detach_reply->unloaded ? ", agent unloaded" : "", reply->detach_reply->stop_ms);
    wire_free(reply);
    close(fd);
    return rc;
}

static int cmd_stop(int argc, char **argv)
{
    Memprof__StopRequest req = MEMPROF__STOP_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    char probe[MP_ERRLEN];
    int fd, rc;
    const struct opt opts[] = {CLIENT_SOCKET_OPT, {0}};
    const struct opt_cmd cmd = {"memprofd stop", opts, .about = about_stop};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    env.msg_case = MEMPROF__ENVELOPE__MSG_STOP;
    env.stop = &req;
    if ((fd = client_connect(client_socket_opt, 0, probe)) < 0) {
        char path[PATH_MAX];
        if (errno == ENOENT || errno == ECONNREFUSED) { /* the goal is met: say so, no advice to start one */
            if (client_socket_opt) snprintf(path, sizeof path, "%s", client_socket_opt);
            else if (mp_default_socket(path, sizeof path) < 0) snprintf(path, sizeof path, "?");
            printf("memprofd is not running (socket %s): nothing to stop\n", path);
            return MP_EXIT_OK;
        }
        return fail("%s", probe);
    }
    if (client_call(fd, &env, &reply, 10000, probe) < 0) { /* as call() does, on the connection made here */
        close(fd);
        fail("%s", probe);
        return client_exit_status(client_error_code());
    }
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
    return MP_EXIT_OK;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;
    if (!cmd || !strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage_main, cmd ? stdout : stderr);
        return cmd ? MP_EXIT_OK : MP_EXIT_USAGE;
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
    return MP_EXIT_USAGE;
}
