/* cmd_run.c -- `memprof run`: start a program with the agent preloaded, so that
 * tracking covers it from its first line, pass its exit status through, and
 * print memory_profiler-style reports of the chosen functions at the end. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/alloc_view.h"
#include "cli/commands.h"
#include "client/client.h"
#include "common/defaults.h"
#include "common/pyversions.h"

#define SETTLE_S 5.0        /* after the program ends, for its sessions' final reports */
#define MAX_FUNCS 64

static const char *about_run =
    "Run PROGRAM (a Python " MP_PY_RANGE_SHORT " interpreter, or anything that starts one)\n"
    "with memprof's agent preloaded: allocations are tracked from the script's\n"
    "first line, no restart or gdb needed. At the end, a memory_profiler-style\n"
    "report (Line #, Mem usage, Increment, Occurrences, Line Contents) of every\n"
    "function decorated with @profile -- the builtin memory_profiler scripts use,\n"
    "provided without importing anything; `from memory_profiler import profile`\n"
    "gives the same one (memory_profiler's tracer does not run) -- and of every\n"
    "--function NAME.\n"
    "\n"
    "The program's stdin, stdout, stderr, exit status and signals pass through\n"
    "untouched; memprof writes only to stderr (or FILE). The sessions stay in\n"
    "memprofd afterwards: memprof status, top, lines, plot, export.\n"
    "\n"
    "In a report, Increment is the most memory the line's allocations held at\n"
    "once (memory_profiler: the RSS change while the line ran), Mem usage the\n"
    "running sum from the top of the function, and Occurrences the allocations\n"
    "the line made (memory_profiler: how often it ran).\n";

static const char *example_run =
    "example:\n"
    "  $ memprof run -- python3 primes.py\n"
    "  78498\n"
    "  Filename: primes.py  (function primes, pid 4242, sampling mode: ...)\n"
    "\n"
    "  Line #    Mem usage    Increment  Occurrences   Line Contents\n"
    "  =============================================================\n"
    "       5                                           @profile\n"
    "       6                                           def primes(n):\n"
    "      ...\n"
    "      11      19.1 MiB     19.1 MiB          291       s = list(range(3, n + 1, 2))\n";

static volatile sig_atomic_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0) kill(child_pid, sig);
}

/* The daemon's answer to a RunRequest. */
static int request_run(int fd, const Memprof__RunRequest *rq, Envelope **reply, char *err)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    env.msg_case = MEMPROF__ENVELOPE__MSG_RUN;
    env.run = (Memprof__RunRequest *)rq;
    if (client_call(fd, &env, reply, 10000, err) < 0) return -1;
    if ((*reply)->msg_case != MEMPROF__ENVELOPE__MSG_RUN_REPLY) {
        mp_err(err, "memprofd does not know memprof run (is it older than this memprof?)");
        return -1;
    }
    if ((*reply)->run_reply->error && (*reply)->run_reply->error[0]) {
        mp_err(err, "%s", (*reply)->run_reply->error);
        return -1;
    }
    return 0;
}

static void start_child(char **argv, const char *agent_env, const char *agent_lib)
{
    const char *old = getenv("LD_PRELOAD");
    char *pre = malloc(strlen(agent_lib) + (old ? strlen(old) : 0) + 2);
    sigset_t none;
    if (pre) {
        sprintf(pre, "%s%s%s", agent_lib, old && *old ? " " : "", old && *old ? old : "");
        setenv("LD_PRELOAD", pre, 1);
    }
    setenv("MEMPROF_RUN", agent_env, 1);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execvp(argv[0], argv);
    fprintf(stderr, "memprof: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

/* The sessions of run id, in StatusReply order reversed (oldest first). */
static Envelope *run_sessions(int fd, uint32_t run, size_t *live, char *err)
{
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply = NULL;
    Memprof__StatusRequest sr = MEMPROF__STATUS_REQUEST__INIT;
    env.msg_case = MEMPROF__ENVELOPE__MSG_STATUS;
    env.status = &sr;
    *live = 0;
    if (client_call(fd, &env, &reply, 10000, err) < 0) return NULL;
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_STATUS_REPLY) {
        mp_err(err, "unexpected reply from memprofd");
        wire_free(reply);
        return NULL;
    }
    for (size_t i = 0; i < reply->status_reply->n_sessions; i++) {
        const Memprof__SessionInfo *si = reply->status_reply->sessions[i];
        if (si->run == run && (si->state == MEMPROF__SESSION_INFO__STATE__ATTACHING || si->state == MEMPROF__SESSION_INFO__STATE__ATTACHED)) (*live)++;
    }
    return reply;
}

/* Whether d has any frame of function name (in file, def line first, when given). */
static int has_function(const Memprof__AllocData *d, const char *name, const char *file, unsigned first)
{
    for (size_t i = 0; i < d->n_frames; i++) {
        const Memprof__AllocFrame *f = d->frames[i];
        if ((file ? !strcmp(f->function, name) : alloc_name_match(f->function, name) > 0) &&
            (!file || (!strcmp(f->file, file) && f->first_line == first)))
            return 1;
    }
    return 0;
}

/* One session's reports: the program's (child 0) or a --follow-fork child's; forked: the run has children. */
static void report_session(FILE *o, const Memprof__SessionInfo *si, char **funcs, size_t nfuncs, int child,
                           int forked)
{
    Envelope *reply;
    char err[MP_ERRLEN];
    const Memprof__AllocData *d;
    size_t printed = 0;
    if (alloc_fetch(si->pid, si->id, 0, &reply, err) < 0) {
        char line[4 * MP_ERRLEN];
        fprintf(o, "memprof: pid %d: %s\n", (int)si->pid, cli_esc(err, line, sizeof line));
        return;
    }
    d = reply->alloc_data;
    if (d->session && d->session->native_note && *d->session->native_note) /* --native could not patch all */
        fprintf(stderr, "memprof: pid %d: %s\n", (int)si->pid, d->session->native_note);
    if (d->session && d->session->native_late_note && *d->session->native_late_note) /* nor a library loaded later */
        fprintf(stderr, "memprof: pid %d: %s\n", (int)si->pid, d->session->native_late_note);
    for (size_t i = 0; i < d->n_profiled; i++) {
        const Memprof__AllocFrame *f = d->profiled[i];
        if (child && !has_function(d, f->function, f->file, f->first_line)) continue;
        if (printed++) fputc('\n', o);
        if (forked && !has_function(d, f->function, f->file, f->first_line)) { /* a pool's parent: not "no allocations" */
            fprintf(o, "memprof: pid %d: %s (%s:%u) did not run in this process; its children's reports follow\n",
                    (int)si->pid, f->function, f->file, f->first_line);
            continue;
        }
        alloc_lines_report(o, d, f->function, f->file, f->first_line);
    }
    for (size_t i = 0; i < nfuncs; i++) {
        int dup = 0;
        for (size_t k = 0; k < d->n_profiled && !dup; k++) dup = !strcmp(d->profiled[k]->function, funcs[i]);
        if (dup || (child && !has_function(d, funcs[i], NULL, 0))) continue;
        if (printed++) fputc('\n', o);
        alloc_lines_report(o, d, funcs[i], NULL, 0); /* an unknown name: said on stderr, near matches */
    }
    if (!printed && !child)
        fprintf(o, "memprof: pid %d: no function to report: decorate one with @profile or pass --function NAME\n",
                (int)si->pid);
    if (printed || !child)
        fprintf(o, "%smemprof: pid %d%s kept as session %u: memprof top --pid %d, memprof plot --session %u -o mem.svg\n",
                printed ? "\n" : "", (int)si->pid, child ? " (child)" : "", si->id, (int)si->pid, si->id);
    wire_free(reply);
}

/* Exit as the program did: same code, or killed by the same signal. */
static int pass_status(int status)
{
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        struct rlimit none = {0, 0};
        sigset_t set;
        fflush(NULL);
        setrlimit(RLIMIT_CORE, &none); /* the program dumped its own core, if any */
        signal(sig, SIG_DFL);
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        kill(getpid(), sig);
        return 128 + sig;
    }
    return MP_EXIT_FAIL;
}

/* --function NAME, repeatable: into struct funcs */
struct funcs {
    char *name[MAX_FUNCS];
    size_t n;
};

static int add_function(const char *arg, void *dest)
{
    struct funcs *f = dest;
    if (f->n == MAX_FUNCS) return -1;
    f->name[f->n++] = (char *)arg;
    return 0;
}

int cmd_run(int argc, char **argv)
{
    Memprof__RunRequest rq = MEMPROF__RUN_REQUEST__INIT;
    Envelope *reply = NULL, *st;
    struct funcs funcs = {{0}, 0};
    char err[MP_ERRLEN], agent[PATH_MAX];
    const char *out_path = NULL;
    size_t live = 0;
    int i, fd, status = 0, exact = 0, native = 0, native_frames = 0, follow = 0;
    unsigned max_frames = 0;
    uint64_t sample_rate = MP_RUN_SAMPLE_RATE;
    struct sigaction sa = {0};
    FILE *o = stderr;
    pid_t pid;
    double deadline;
    const struct opt opts[] = {
        {"function", 0, OPT_CALL, &funcs, "NAME", "report this function too (repeatable; qualified or its last part)",
         .what = "a function name (at most 64 of them)", .set = add_function},
        {"exact", 0, OPT_FLAG, &exact, NULL, "count every allocation (slower), instead of sampling"},
        {"native", 0, OPT_FLAG, &native, NULL, "also native allocations (malloc, mmap... of C extensions)"},
        {"native-frames", 0, OPT_FLAG, &native_frames, NULL, "and their native call chains (C functions under the\n"
                                                              "Python line: memprof export, flamegraph)"},
        {"sample-rate", 0, OPT_U64, &sample_rate, "BYTES", "mean bytes between samples (default 64 KiB)", 1, 0},
        {"max-frames", 0, OPT_UINT, &max_frames, "N",
         "Python frames kept per sample (default " MP_STR(MP_DEFAULT_MAX_FRAMES) ")", 1, MP_MAX_FRAMES},
        {"follow-fork", 0, OPT_FLAG, &follow, NULL, "children (os.fork, multiprocessing) are sessions too,\n"
                                                     "each with its own reports"},
        {"output", 'o', OPT_STRING, &out_path, "FILE", "write the reports to FILE instead of stderr"},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof run", opts, .args = "-- PROGRAM [ARGS...]", .max_args = -1,
                                .stop_at_arg = 1, .about = about_run, .more = example_run};

    if ((i = opts_parse(&cmd, argc, argv, &status)) < 0) return status;
    if (i >= argc) return opts_usage_error(&cmd, "no program to run (memprof run -- python3 script.py)");
    rq.exact = exact;
    rq.native = native;
    rq.native_frames = native_frames;
    rq.follow_fork = follow;
    rq.max_frames = max_frames;
    rq.sample_rate = sample_rate;
    if (rq.native && rq.exact) return opts_usage_error(&cmd, "--native samples native allocations: not with --exact");
    if (rq.native_frames && !rq.native) return opts_usage_error(&cmd, "--native-frames goes with --native");
    if (out_path && !(o = fopen(out_path, "w"))) return cli_fail("cannot write %s: %s", out_path, strerror(errno));
    if ((fd = client_connect(client_socket_opt, 1, err)) < 0 || request_run(fd, &rq, &reply, err) < 0 ||
        client_check_agent(reply->run_reply->agent_lib, agent, sizeof agent, err) < 0) {
        if (o != stderr) fclose(o);
        return cli_fail("%s", err);
    }
    /* orphaned descendants come back to us, so the daemon's ancestry check
     * holds for them too, and we reap them */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    fflush(NULL);
    pid = fork();
    if (pid < 0) return cli_fail("fork: %s", strerror(errno));
    if (pid == 0) start_child(argv + i, reply->run_reply->agent_env, agent);
    child_pid = pid;
    /* a terminal's ^C and ^\ go to the whole group: the program decides */
    signal(SIGINT, SIG_IGN);
    signal(SIGQUIT, SIG_IGN);
    sa.sa_handler = forward;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    for (;;) {
        int s;
        pid_t w = waitpid(-1, &s, 0);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) break;
        if (w == pid) {
            status = s;
            break;
        }
    }
    child_pid = 0;

    /* the sessions' final reports are in once the daemon has seen them end */
    deadline = mp_now() + SETTLE_S;
    while ((st = run_sessions(fd, reply->run_reply->run, &live, err)) && live && mp_now() < deadline) {
        struct timespec ts = {0, 50000000};
        wire_free(st);
        nanosleep(&ts, NULL);
    }
    if (!st) {
        char line[4 * MP_ERRLEN];
        fprintf(o, "memprof: %s\n", cli_esc(err, line, sizeof line));
    } else {
        size_t n = 0;
        int forked = 0;
        for (size_t i = 0; i < st->status_reply->n_sessions; i++)
            forked |= st->status_reply->sessions[i]->run == reply->run_reply->run && st->status_reply->sessions[i]->ppid;
        /* StatusReply lists the newest first: the program, then its children */
        for (size_t i = st->status_reply->n_sessions; i-- > 0;) {
            const Memprof__SessionInfo *si = st->status_reply->sessions[i];
            if (si->run != reply->run_reply->run) continue;
            if (n++) fputc('\n', o);
            report_session(o, si, funcs.name, funcs.n, si->ppid != 0, forked);
        }
        if (!n && !(WIFEXITED(status) && WEXITSTATUS(status) >= 126)) /* exec failed: said so */
            fprintf(o, "memprof: no Python process reported to memprofd (%s is not CPython " MP_PY_RANGE_SHORT ", or it never "
                       "started one)\n", argv[i]);
        wire_free(st);
    }
    if (o != stderr) fclose(o);
    wire_free(reply);
    close(fd);
    return pass_status(status);
}
