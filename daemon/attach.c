/* attach.c -- session lifecycle: inject, wait for the agent's hello, forward
 * requests, detach and unload, notice exits; and status/ps for clients. */
#include "daemon/attach.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/defaults.h"
#include "common/pyabi.h"
#include "common/util.h"
#include "common/version.h"
#include "daemon/alloc.h"
#include "daemon/inject.h"
#include "daemon/logging.h"
#include "daemon/metrics.h"
#include "daemon/procinfo.h"
#include "daemon/remote_exec.h"
#include "daemon/run.h"
#include "daemon/session.h"
#include "probe/elfsym.h"
#include "probe/procfs.h"
#include "probe/pyprobe.h"

#define ATTACH_TIMEOUT 15.0   /* seconds for the agent to say hello */
#define DETACH_TIMEOUT 5.0
#define CALL_TIMEOUT 120.0    /* a census of a huge heap may take a while */
#define UNDO_POLL_MS 200      /* how often an undo looks whether the agent's thread has ended */
#define AGENT_THREAD "memprof-agent" /* the name agent/start.c gives its thread from birth (agent_spawn_thread) */

enum { ATTACH_AUTO, ATTACH_PTRACE, ATTACH_REMOTE_EXEC };

/* Requests forwarded to agents, waiting for their replies. */
struct call {
    uint64_t id;          /* our id, sent to the agent */
    uint64_t client_id;   /* the id the client used */
    uint64_t client_conn; /* 0: the daemon's own request (detach) */
    pid_t pid;
    double deadline;
    struct call *next;
};
static struct call *calls;
static uint64_t next_call_id = 1;

/* A session's life ends here, its allocation data first (alloc.c's, which session.c does not know). */
static void end_session(struct session *s)
{
    alloc_free(s->alloc);
    session_free(s);
}

/* Ended: kept for status (its allocation data too, for queries), its native frames no longer named; the
 * oldest ended sessions beyond the history bound go. */
static void retire(struct session *s, enum sess_state state)
{
    struct session *old;
    session_retire(s, state);
    alloc_session_ended(s);
    while ((old = session_beyond_history())) end_session(old);
}

static void send_env(struct conn *c, Envelope *env) { conn_send(c, env); }

/* A refused attach: msg for the user, code its category (ErrorReply.Code). */
static void reply_attach_error(uint64_t conn_id, Memprof__ErrorReply__Code code, const char *msg)
{
    struct conn *c = conn_by_id(conn_id);
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AttachReply r = MEMPROF__ATTACH_REPLY__INIT;
    if (!c) return;
    r.error = (char *)msg;
    r.code = code;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ATTACH_REPLY;
    env.attach_reply = &r;
    send_env(c, &env);
}

static void reply_attach_ok(uint64_t conn_id, struct session *s, int already)
{
    struct conn *c = conn_by_id(conn_id);
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AttachReply r = MEMPROF__ATTACH_REPLY__INIT;
    Memprof__SessionInfo info;
    if (!c) return;
    session_fill_info(s, &info);
    r.already = already;
    r.session = &info;
    r.stop_ms = s->stop_ms;
    r.total_ms = already ? 0 : (mp_now() - s->attach_started) * 1000.0;
    r.retries = s->retries;
    r.method = (char *)(already ? "" : s->method == ATTACH_REMOTE_EXEC ? "remote-exec" : "ptrace");
    r.note = s->note;
    r.native_note = s->native_note;
    r.exec_ms = s->exec_ms;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ATTACH_REPLY;
    env.attach_reply = &r;
    send_env(c, &env);
}

static void reply_detach(uint64_t conn_id, Memprof__ErrorReply__Code code, const char *error, double stop_ms,
                         int unloaded)
{
    struct conn *c = conn_by_id(conn_id);
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__DetachReply r = MEMPROF__DETACH_REPLY__INIT;
    if (!c) return;
    r.error = (char *)(error ? error : "");
    r.code = code;
    r.stop_ms = stop_ms;
    r.unloaded = unloaded;
    env.msg_case = MEMPROF__ENVELOPE__MSG_DETACH_REPLY;
    env.detach_reply = &r;
    send_env(c, &env);
}

static void fail_calls_of(pid_t pid, Memprof__ErrorReply__Code code, const char *why);

/* What an undo waits for, from /proc/PID/task/TID/stat: does a thread of the agent still run code of its
 * library (its tid once its hello told it, else by its name), and is the process stopped (SIGSTOP, or a
 * debugger's stop: no ptrace of ours then)? */
static void undo_scan(const struct session *s, int *agent_runs, int *stopped)
{
    char path[64];
    struct dirent *de;
    DIR *d;
    *agent_runs = *stopped = 0;
    if (s->agent_tid) { /* its hello told: no need to read every thread's */
        char st = proc_state(s->pid);
        *stopped = st == 'T' || st == 't';
        *agent_runs = proc_thread_alive(s->pid, s->agent_tid);
        return;
    }
    snprintf(path, sizeof path, "/proc/%d/task", (int)s->pid);
    if (!(d = opendir(path))) return;
    while ((de = readdir(d))) {
        int tid = atoi(de->d_name);
        struct procfs_stat st;
        if (tid <= 0 || procfs_stat(s->pid, tid, &st) < 0) continue;
        if (st.state == 'T' || st.state == 't') *stopped = 1;
        if (st.state == 'Z' || st.state == 'X') continue;
        if (!strcmp(st.comm, AGENT_THREAD)) *agent_runs = 1;
    }
    closedir(d);
}

/* A session that cannot be given back to its client (a failed attach, a detach not finished in time) undoes
 * itself: it stays, detaching, with no waiter and no deadline, until the agent's thread has ended and the
 * process runs; then attach_tick unloads the library (finish_detach). However long the target is stopped or
 * its main thread holds the GIL, the agent is never left loaded with no session owning it. */
static void undo_later(struct session *s, const char *why, int close_conn)
{
    struct conn *ac = s->agent_conn ? conn_by_id(s->agent_conn) : NULL;
    s->state = SESS_DETACHING;
    s->undo = 1;
    s->detach_waiter = s->attach_waiter = 0;
    s->deadline = 0;
    if (close_conn && ac) { /* the agent undoes itself at EOF */
        s->agent_conn = 0;
        conn_close(ac);
    }
    server_log("pid %d: %s; memprofd unloads the agent once its thread has ended", (int)s->pid, why);
    conn_wake_tick();
}

static int starting; /* in attach_start: a refusal is its caller's to tell */

/* A watched session's attach that failed after attach_start returned, said once here (watch.c tries a process
 * once). */
static void log_watch_failure(const struct session *s, const char *msg)
{
    if (s->watch_rule && !starting) server_log("watch: %s (rule '%s'; not retried)", msg, s->watch_rule);
}

/* An attach that failed: the client hears why; what got into the target is undone (undo_later) unless
 * nothing did (no agent thread started: inject.c unloaded the library itself). */
static void attach_fail(struct session *s, Memprof__ErrorReply__Code code, const char *msg)
{
    char full[MP_ERRLEN];
    int undo = (s->handle || s->method == ATTACH_REMOTE_EXEC || s->agent_conn) && proc_alive(s->pid);
    log_watch_failure(s, msg);
    fail_calls_of(s->pid, code, msg); /* the tracking settings' call, if sent */
    s->config_call = 0;
    snprintf(full, sizeof full, "%s%s", msg,
             undo ? "; memprofd unloads the agent once its thread has ended (memprof status shows the session "
                    "detaching until then)"
                  : "");
    reply_attach_error(s->attach_waiter, code, full);
    rx_done(&s->rx);
    if (!undo) {
        struct conn *ac = s->agent_conn ? conn_by_id(s->agent_conn) : NULL;
        s->agent_conn = 0; /* so that closing it finds no session */
        if (ac) conn_close(ac);
        end_session(s);
        return;
    }
    undo_later(s, "the attach failed", 1);
}

/* Checks that need no ptrace: who may attach to what, and is it a Python we support. 0, or -1 with err
 * and *code, the failure's category, told by what is true of pid (proc_error_code), never by err's text. */
static int attach_precheck(uid_t uid, pid_t pid, struct pyinfo *py, char *err, Memprof__ErrorReply__Code *code)
{
    char st;
    *code = MEMPROF__ERROR_REPLY__CODE__UNSUPPORTED_TARGET;
    if (pid == getpid()) {
        mp_err(err, "pid %d: is memprofd itself", (int)pid);
        return -1;
    }
    if (proc_may_access(uid, pid, err) < 0) {
        *code = proc_error_code(pid, MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED);
        return -1;
    }
    st = proc_state(pid);
    if (st == 'Z' || st == 'X') {
        mp_err(err, "pid %d: is a zombie (it has exited)", (int)pid);
        *code = MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS;
        return -1;
    }
    if (pyprobe(pid, py, err) < 0 || proc_root_check(pid, err) < 0 || inject_libc_check(pid, err) < 0) {
        *code = proc_error_code(pid, MEMPROF__ERROR_REPLY__CODE__UNSUPPORTED_TARGET);
        return -1;
    }
    if (!pyabi_supported(py->major, py->minor)) {
        mp_err(err, "pid %d: unsupported Python %d.%d (memprof supports " MP_PY_RANGE ")", (int)pid, py->major,
               py->minor);
        return -1;
    }
    if (py->abi_error[0]) {
        mp_err(err, "pid %d: %s", (int)pid, py->abi_error);
        return -1;
    }
    return 0;
}

static int attach_method_of(const char *name, int *method)
{
    if (!name || !*name || !strcmp(name, "auto")) *method = ATTACH_AUTO;
    else if (!strcmp(name, "ptrace")) *method = ATTACH_PTRACE;
    else if (!strcmp(name, "remote-exec")) *method = ATTACH_REMOTE_EXEC;
    else return -1;
    return 0;
}

/* memprof_agent_start's argument: what the agent needs to connect and say hello (its tracking
 * settings follow on the wire, attach_agent_hello_done). */
static const char *agent_arg(const struct session *s, char *arg, size_t len)
{
    snprintf(arg, len, "sock=@%s token=%s pylib=%s", conn_agent_sock, s->token, s->py.pylib);
    return arg;
}

/* Does the warnings spec (action:message:category:module:lineno) apply to os.fork()'s "This process (pid=N)
 * is multi-threaded" DeprecationWarning? 1 when it makes it an error, 0 when it makes it something else, -1
 * when it does not apply. Python takes an abbreviated action ("e") and a message as a case-insensitive prefix. */
static int fork_warning_action(const char *spec, size_t len)
{
    static const char *const actions[] = {"default", "always", "all", "ignore", "module", "once", "error"};
    static const char msg[] = "this process";
    const char *f[3] = {spec, NULL, NULL};
    size_t fl[3] = {len, 0, 0}, n = 1;
    const char *act = NULL;
    for (size_t i = 0; i < len && n < 3; i++)
        if (spec[i] == ':') {
            fl[n - 1] = (size_t)(spec + i - f[n - 1]);
            f[n] = spec + i + 1;
            fl[n] = len - i - 1;
            n++;
        }
    if (n == 3) fl[2] = strcspn(f[2], ":") < fl[2] ? strcspn(f[2], ":") : fl[2];
    for (size_t i = 0; i < sizeof actions / sizeof actions[0] && !act; i++)
        if (fl[0] && !strncmp(actions[i], spec, fl[0]) && strlen(actions[i]) >= fl[0]) act = actions[i];
    if (!act) return -1;
    if (n > 1 && fl[1] && strncasecmp(f[1], msg, fl[1] < sizeof msg - 1 ? fl[1] : sizeof msg - 1)) return -1;
    if (n > 1 && fl[1] > sizeof msg - 1) return -1;
    if (n > 2 && fl[2] && !(fl[2] == 18 && !strncmp(f[2], "DeprecationWarning", 18)) &&
        !(fl[2] == 7 && !strncmp(f[2], "Warning", 7)))
        return -1;
    return !strcmp(act, "error");
}

/* Python 3.15's os.fork() raises its "multi-threaded" DeprecationWarning where warnings are errors (3.12 to
 * 3.14 warn, and clear it: measured), and the agent's thread makes the process multi-threaded. Seen from
 * outside: its -W options and PYTHONWARNINGS (later ones win; -W over the environment, which -E/-I ignore);
 * filters its code sets are not. The note for the client, or "". */
static void fork_note(const struct session *s, char *note, size_t len)
{
    char path[64], buf[16384];
    ssize_t n;
    int verdict = -1, ignore_env = 0;
    note[0] = 0;
    if (s->py.major != 3 || s->py.minor < 15) return;
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)s->pid);
    if ((n = mp_read_file(path, buf, sizeof buf)) <= 0) return;
    for (const char *a = buf + strlen(buf) + 1; a < buf + n; a += strlen(a) + 1) { /* argv[1] on */
        if (a[0] != '-' || !strcmp(a, "-") || !strncmp(a, "--", 2)) break;
        for (const char *o = a + 1; *o; o++) {
            const char *next = a + strlen(a) + 1, *arg = o[1] ? o + 1 : next < buf + n ? next : NULL;
            if (*o == 'E' || *o == 'I') ignore_env = 1;
            if (*o == 'c' || *o == 'm') goto options_done;
            if (*o == 'W' || *o == 'X') {
                int v = *o == 'W' && arg ? fork_warning_action(arg, strlen(arg)) : -1;
                if (!arg) goto options_done;
                if (v >= 0) verdict = v;
                if (!o[1]) a = arg; /* the next argument was this option's */
                break;
            }
        }
    }
options_done:
    snprintf(path, sizeof path, "/proc/%d/environ", (int)s->pid);
    if (!ignore_env && (n = mp_read_file(path, buf, sizeof buf - 1)) > 0) {
        int env_verdict = -1;
        buf[n] = 0;
        for (const char *e = buf; e < buf + n; e += strlen(e) + 1)
            if (!strncmp(e, "PYTHONWARNINGS=", 15))
                for (const char *w = e + 15, *c; *w; w = *c ? c + 1 : c) {
                    c = strchrnul(w, ',');
                    int v = fork_warning_action(w, (size_t)(c - w));
                    if (v >= 0) env_verdict = v;
                }
        if (verdict < 0) verdict = env_verdict;
    }
    if (verdict == 1)
        snprintf(note, len,
                 "its warnings are errors (-W error or PYTHONWARNINGS): while the agent's thread runs, os.fork() "
                 "in it raises DeprecationWarning (\"This process is multi-threaded\", Python 3.15+); detach "
                 "before it forks");
}

/* ptrace: stop a thread, load the agent, start it (inject.c); the hello follows. */
static int attach_by_ptrace(struct session *s, char *err)
{
    char arg[PATH_MAX + 512];
    struct inject_result res;
    pid_t pid = s->pid;
    memset(&res, 0, sizeof res);
    s->method = ATTACH_PTRACE;
    /* The agent is handed a connected socket (it works across network namespaces);
     * the abstract socket name stays its way in when that cannot be made. */
    if (inject_load(pid, session_agent_lib, "memprof_agent_start", agent_arg(s, arg, sizeof arg), INJECT_SOCKET, &res,
                    err) < 0) {
        server_log("attach to pid %d failed: %s", (int)pid, err);
        s->handle = res.handle; /* its thread started all the same: attach_fail undoes it */
        return -1;
    }
    s->handle = res.handle;
    s->stop_ms = res.stop_ms;
    if (res.sock_fd >= 0 && !conn_adopt_agent(res.sock_fd))
        server_log("pid %d: could not keep the socket made in it; the agent connects by name", (int)pid);
    if (res.sock_note[0]) server_log("pid %d: no socket pair (%s); the agent connects by name", (int)pid, res.sock_note);
    s->retries = res.retries;
    if (res.start_rc != 0) {
        snprintf(err, MP_ERRLEN, "pid %d: %s", (int)pid,
                 res.start_rc == 1 ? "an agent is already running in it (attached by another memprofd?)"
                                   : "the agent failed to start in the target");
        return -1;
    }
    s->deadline = mp_now() + ATTACH_TIMEOUT;
    conn_wake_tick();
    server_log("injected agent into pid %d (Python %s) by %s: stopped %.2f ms, %u retries", (int)pid, s->py.version,
               res.how, res.stop_ms, res.retries);
    return 0;
}

const char *const attach_methods[3] = {"auto", "ptrace", "remote-exec"};

int attach_settings_check(const Memprof__AttachRequest *req, const char *dashes, char *err)
{
    if (req->native && (req->exact || req->no_tracking)) {
        mp_err(err, "%snative samples native allocations: not with %sexact or %sno-track", dashes, dashes, dashes);
        return -1;
    }
    if (req->native_frames && !req->native) {
        mp_err(err, "%snative-frames goes with %snative", dashes, dashes);
        return -1;
    }
    return 0;
}

void attach_on_attach(struct conn *c, const Envelope *in)
{
    char err[MP_ERRLEN];
    attach_start(c->peer_uid, c->id, in->attach, NULL, err);
}

/* A refusal: the waiter hears it, attach_start's caller too (err). */
static int refuse(uint64_t waiter, Memprof__ErrorReply__Code code, const char *msg, char *err)
{
    if (msg != err) snprintf(err, MP_ERRLEN, "%s", msg);
    reply_attach_error(waiter, code, err);
    return -1;
}

int attach_start(uid_t uid, uint64_t waiter, const Memprof__AttachRequest *req, const char *watch_rule, char *err)
{
    char arg[PATH_MAX + 512];
    struct pyinfo py;
    struct session *s = session_find(req->pid);
    pid_t pid = req->pid;

    if (s && (s->state == SESS_ATTACHED || s->state == SESS_ATTACHING || s->state == SESS_DETACHING)) {
        if (proc_may_access(uid, pid, err) < 0)
            return refuse(waiter, proc_error_code(pid, MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED), err, err);
        if (s->state == SESS_ATTACHED) {
            reply_attach_ok(waiter, s, 1);
            return 0;
        }
        if (s->undo) {
            snprintf(err, MP_ERRLEN,
                     "pid %d: memprofd is still undoing an attach or detach that did not finish (the agent's thread "
                     "has not ended: is the process stopped, or is its main thread holding the GIL?); retry once "
                     "memprof status shows it detached", (int)pid);
            return refuse(waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, err, err);
        }
        snprintf(err, MP_ERRLEN, "pid %d: a session is %s", (int)pid, session_state_name(s->state));
        return refuse(waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, err, err);
    }
    Memprof__ErrorReply__Code code;
    if (attach_precheck(uid, pid, &py, err, &code) < 0) return refuse(waiter, code, err, err);
    s = session_new(pid);
    if (!s) return refuse(waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, "out of memory", err);
    s->py = py;
    s->watch_rule = watch_rule;
    proc_uid(pid, &s->uid);
    s->ns_pid = proc_ns_pid(pid);
    proc_container(pid, s->container, sizeof s->container);
    proc_ident(pid, &s->ident);
    s->attach_started = mp_now();
    s->attach_waiter = waiter;
    session_tracking(&s->track, !req->no_tracking, req->exact, req->sample_rate, req->max_frames, req->interval_ms,
                     MP_DEFAULT_INTERVAL_MS);
    s->track.native = req->native && !req->exact;
    s->track.native_frames = s->track.native && req->native_frames;
    if (session_make_token(s->token) < 0) {
        end_session(s);
        return refuse(waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, "no randomness for a token", err);
    }
    if (attach_method_of(req->method, &s->method_asked) < 0) {
        snprintf(err, MP_ERRLEN, "unknown attach method '%s' (auto, ptrace or remote-exec)", req->method);
        end_session(s);
        return refuse(waiter, MEMPROF__ERROR_REPLY__CODE__BAD_REQUEST, err, err);
    }
    if (s->method_asked != ATTACH_PTRACE) {
        char why[MP_ERRLEN];
        const struct pyabi *abi = pyabi_for((uint32_t)py.major << 24 | (uint32_t)py.minor << 16);
        int usable = rx_usable(pid, &py, why) == 0;
        if (usable && rx_start(pid, &s->py, session_agent_lib, agent_arg(s, arg, sizeof arg), &s->rx, err) == 0) {
            s->method = ATTACH_REMOTE_EXEC;
            s->deadline = mp_now() + ATTACH_TIMEOUT;
            conn_wake_tick();
            server_log("pid %d (Python %s): remote-exec request written; waiting for its main thread", (int)pid,
                       py.version);
            return 0;
        }
        if (usable) snprintf(why, sizeof why, "%s", err);
        if (s->method_asked == ATTACH_REMOTE_EXEC) {
            snprintf(err, MP_ERRLEN, "pid %d: cannot attach by remote-exec: %s", (int)pid, why);
            code = proc_error_code(pid, MEMPROF__ERROR_REPLY__CODE__UNKNOWN);
            end_session(s);
            return refuse(waiter, code, err, err);
        }
        if (abi && (abi->caps & PYABI_REMOTE_EXEC))
            snprintf(s->note, sizeof s->note, "remote-exec not used: %s; attached by ptrace", why);
    }
    if (attach_by_ptrace(s, err) < 0) {
        /* its session ends (or undoes what got in) here; the waiter hears it from attach_fail */
        starting = 1;
        attach_fail(s, proc_error_code(pid, MEMPROF__ERROR_REPLY__CODE__UNKNOWN), err);
        starting = 0;
        return -1;
    }
    return 0;
}

/* The remote-exec request was not taken in time: withdraw it, and go by ptrace
 * (auto) or give up (remote-exec asked for). 1 when the session went on. */
static int remote_exec_timeout(struct session *s)
{
    char err[MP_ERRLEN];
    if (!rx_cancel(s->pid, &s->rx)) return 1; /* its script runs after all */
    rx_done(&s->rx);
    if (s->method_asked == ATTACH_REMOTE_EXEC) {
        snprintf(err, sizeof err,
                 "pid %d: its main thread did not reach a safe point within %.0f s (blocked in C code?); "
                 "the remote-exec request was withdrawn (--method ptrace attaches anyway)",
                 (int)s->pid, RX_SAFE_POINT_S);
        log_watch_failure(s, err);
        reply_attach_error(s->attach_waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, err);
        return 0;
    }
    snprintf(s->note, sizeof s->note,
             "remote-exec not used: the main thread did not reach a safe point within %.0f s; attached by ptrace",
             RX_SAFE_POINT_S);
    server_log("pid %d: %s", (int)s->pid, s->note);
    s->method = ATTACH_PTRACE;
    if (attach_by_ptrace(s, err) < 0) {
        attach_fail(s, proc_error_code(s->pid, MEMPROF__ERROR_REPLY__CODE__UNKNOWN), err);
        return 1; /* attach_fail freed it, or keeps it */
    }
    return 1;
}

int attach_agent_hello(struct conn *c, const Memprof__Hello *h, char *err)
{
    struct session *s = session_find(c->peer_pid);
    const Memprof__AgentInfo *a = h->agent;
    if (s && s->undo && !s->agent_conn && h->token && mp_token_equal(h->token, s->token)) {
        /* the agent of an attach given up on: learn its thread (and remote-exec's handle) for the unload,
         * and send it away (it leaves at once: nothing is hooked before its settings) */
        if (a && a->agent_tid && !s->agent_tid)
            s->agent_tid = s->ns_pid && s->ns_pid != s->pid ? proc_host_tid(s->pid, a->agent_tid) : a->agent_tid;
        if (a && !s->handle && s->method == ATTACH_REMOTE_EXEC) s->handle = a->dl_handle;
        mp_err(err, "pid %d: the attach was given up", (int)c->peer_pid);
        return -1;
    }
    if ((!s || s->state != SESS_ATTACHING || s->agent_conn) && !(s = run_agent_hello(c, h, err))) return -1;
    if (!h->token || !mp_token_equal(h->token, s->token)) {
        mp_err(err, "bad token from pid %d", (int)c->peer_pid);
        return -1;
    }
    /* In a pid namespace (a container) it knows itself by its pid and tid there. */
    if (!a || (a->pid != s->pid && a->pid != s->ns_pid)) {
        mp_err(err, "agent of pid %d did not say who it is", (int)c->peer_pid);
        return -1;
    }
    s->agent_conn = c->id;
    s->agent_tid = a->agent_tid;
    if (s->ns_pid && s->ns_pid != s->pid && !(s->agent_tid = proc_host_tid(s->pid, a->agent_tid))) {
        mp_err(err, "agent of pid %d: its thread %d is not found", (int)c->peer_pid, (int)a->agent_tid);
        return -1;
    }
    s->gil_wait_ms = a->gil_wait_ms;
    snprintf(s->native_note, sizeof s->native_note, "%s", a->native_note ? a->native_note : "");
    if (s->native_note[0]) server_log("pid %d: %s", (int)s->pid, s->native_note);
    snprintf(s->agent_version, sizeof s->agent_version, "%s", a->agent_version ? a->agent_version : "");
    if (strcmp(s->agent_version, MEMPROF_VERSION) != 0)
        server_log("pid %d: agent version %s differs from memprofd %s", (int)s->pid,
                   *s->agent_version ? s->agent_version : "(unknown)", MEMPROF_VERSION);
    if (s->rx.active) {
        /* remote-exec: the library is mapped, the files can go */
        rx_done(&s->rx);
        s->handle = a->dl_handle;
        s->exec_ms = a->exec_ms;
    }
    free(s->executable);
    s->executable = strdup(a->executable ? a->executable : "");
    for (size_t i = 0; i < s->argc; i++) free(s->argv[i]);
    free(s->argv);
    s->argc = 0;
    s->argv = calloc(a->n_argv ? a->n_argv : 1, sizeof *s->argv);
    for (size_t i = 0; s->argv && i < a->n_argv; i++) s->argv[s->argc++] = strdup(a->argv[i]);
    if (a->python_version && *a->python_version) snprintf(s->py.version, sizeof s->py.version, "%s", a->python_version);
    return 0;
}

static void start_detach(struct session *s, uint64_t waiter, double timeout);
static struct call *call_new(pid_t pid, uint64_t client_conn, uint64_t client_id);
static void send_agent_request(struct session *s, Memprof__AgentRequest *req);

/* The agent's settings are in force (its reply to the TrackingConfig): the attach is done. */
static void attach_agent_ready(struct session *s)
{
    s->state = SESS_ATTACHED;
    s->attached_since = mp_wallclock();
    s->deadline = 0;
    /* Nobody asked for this session any more (memprofd attach was interrupted): its client went away
     * before, or the reply cannot reach it (it closed before we saw its EOF: the send fails). */
    if (!s->cancelled && s->attach_waiter && conn_hung_up(s->attach_waiter)) s->cancelled = 1;
    if (!s->cancelled) {
        char fnote[300];
        fork_note(s, fnote, sizeof fnote);
        if (fnote[0]) {
            size_t l = strlen(s->note);
            snprintf(s->note + l, sizeof s->note - l, "%s%s", l ? "\n" : "", fnote);
            server_log("pid %d: %s", (int)s->pid, fnote);
        }
        server_log("pid %d attached: Python %s, stopped %.2f ms, attach %.1f ms", (int)s->pid, s->py.version,
                   s->stop_ms, (mp_now() - s->attach_started) * 1000.0);
        reply_attach_ok(s->attach_waiter, s, 0);
        s->cancelled = s->attach_waiter && !conn_by_id(s->attach_waiter);
        s->attach_waiter = 0;
    }
    if (s->cancelled) {
        server_log("pid %d: attach cancelled by its client; detaching", (int)s->pid);
        start_detach(s, 0, DETACH_TIMEOUT);
    }
}

void attach_agent_hello_done(struct conn *c)
{
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    struct session *s = session_of_agent(c->id);
    struct call *k;
    if (!s) return;
    if (!(k = call_new(s->pid, 0, 0))) {
        conn_close(c); /* attach_agent_gone answers the attach */
        return;
    }
    s->config_call = k->id;
    req.id = k->id;
    req.body_case = MEMPROF__AGENT_REQUEST__BODY_TRACKING;
    req.tracking = &s->track;
    send_agent_request(s, &req);
}

static void send_agent_request(struct session *s, Memprof__AgentRequest *req)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    env.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_REQUEST;
    env.agent_request = req;
    conn_send(conn_by_id(s->agent_conn), &env);
}

static struct call *call_new(pid_t pid, uint64_t client_conn, uint64_t client_id)
{
    struct call *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    k->id = next_call_id++;
    k->pid = pid;
    k->client_conn = client_conn;
    k->client_id = client_id;
    k->deadline = mp_now() + CALL_TIMEOUT;
    conn_wake_tick();
    k->next = calls;
    calls = k;
    return k;
}

static void call_finish(struct call *k, const Memprof__AgentReply *reply, Memprof__ErrorReply__Code code,
                        const char *error)
{
    struct call **pp;
    struct conn *c = k->client_conn ? conn_by_id(k->client_conn) : NULL;
    if (c) {
        Envelope env = MEMPROF__ENVELOPE__INIT;
        Memprof__AgentReply r = MEMPROF__AGENT_REPLY__INIT;
        if (reply) r = *reply;
        else {
            r.error = (char *)error;
            r.code = code;
        }
        r.id = k->client_id;
        env.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_REPLY;
        env.agent_reply = &r;
        send_env(c, &env);
    }
    for (pp = &calls; *pp; pp = &(*pp)->next)
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    free(k);
}

/* Ask the agent to undo itself; attach_tick finishes (unload) once its thread is gone. */
static void start_detach(struct session *s, uint64_t waiter, double timeout)
{
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    Memprof__DetachRequest d = MEMPROF__DETACH_REQUEST__INIT;
    struct call *k = call_new(s->pid, 0, 0);
    if (!k) {
        reply_detach(waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, "out of memory", 0, 0);
        return;
    }
    s->state = SESS_DETACHING;
    s->detach_waiter = waiter;
    s->detach_acked = 0;
    s->deadline = mp_now() + timeout;
    conn_wake_tick();
    req.id = k->id;
    req.body_case = MEMPROF__AGENT_REQUEST__BODY_DETACH;
    d.pid = s->pid;
    req.detach = &d;
    send_agent_request(s, &req);
}

void attach_on_detach(struct conn *c, const Envelope *in)
{
    pid_t pid = in->detach->pid;
    char err[MP_ERRLEN];
    struct session *s = session_find(pid);
    if (proc_may_access(c->peer_uid, pid, err) < 0 && !(s && (c->peer_uid == 0 || c->peer_uid == s->uid))) {
        reply_detach(c->id, proc_error_code(pid, MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED), err, 0, 0);
        return;
    }
    if (!s || s->state != SESS_ATTACHED) {
        snprintf(err, sizeof err, "pid %d: not attached%s%s", (int)pid, s ? " (session " : "",
                 s ? session_state_name(s->state) : "");
        if (s) strncat(err, ")", sizeof err - strlen(err) - 1);
        reply_detach(c->id, MEMPROF__ERROR_REPLY__CODE__NOT_ATTACHED, err, 0, 0);
        return;
    }
    start_detach(s, c->id, DETACH_TIMEOUT);
}

void attach_on_agent_call(struct conn *c, const Envelope *in)
{
    const Memprof__AgentCall *ac = in->agent_call;
    char err[MP_ERRLEN];
    struct session *s;
    struct call *k;
    Memprof__AgentRequest req;
    Memprof__AgentReply fail = MEMPROF__AGENT_REPLY__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    env.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_REPLY;
    env.agent_reply = &fail;
    if (!ac->request || ac->request->body_case == MEMPROF__AGENT_REQUEST__BODY_DETACH) {
        fail.error = (char *)"malformed agent call";
        send_env(c, &env);
        return;
    }
    fail.id = ac->request->id;
    s = session_find(ac->pid);
    if (proc_may_access(c->peer_uid, ac->pid, err) < 0 && !(s && (c->peer_uid == 0 || c->peer_uid == s->uid))) {
        fail.error = err;
        fail.code = proc_error_code(ac->pid, MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED);
        send_env(c, &env);
        return;
    }
    if (!s || s->state != SESS_ATTACHED || !conn_by_id(s->agent_conn)) {
        if (s && s->state == SESS_EXITED)
            snprintf(err, sizeof err, "pid %d: the process has exited", (int)ac->pid);
        else
            snprintf(err, sizeof err, "pid %d: not attached (attach first: memprofd attach --pid %d)", (int)ac->pid,
                     (int)ac->pid);
        fail.error = err;
        fail.code = s && s->state == SESS_EXITED ? MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS : MEMPROF__ERROR_REPLY__CODE__NOT_ATTACHED;
        send_env(c, &env);
        return;
    }
    k = call_new(ac->pid, c->id, ac->request->id);
    if (!k) {
        fail.error = (char *)"out of memory";
        send_env(c, &env);
        return;
    }
    req = *ac->request;
    req.id = k->id;
    send_agent_request(s, &req);
}

void attach_on_status(struct conn *c, const Envelope *in)
{
    (void)in;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__StatusReply r = MEMPROF__STATUS_REPLY__INIT;
    size_t n = 0;
    for (struct session *s = sessions; s; s = s->next) n++;
    Memprof__SessionInfo *infos, **ptrs;
    if (!WIRE_ARRAYS(infos, ptrs, n)) {
        free(infos);
        free(ptrs);
        conn_send_error(c, "out of memory");
        return;
    }
    for (struct session *s = sessions; s; s = s->next) {
        if (c->peer_uid != 0 && c->peer_uid != s->uid) continue;
        session_fill_info(s, &infos[r.n_sessions]);
        ptrs[r.n_sessions] = &infos[r.n_sessions];
        r.n_sessions++;
    }
    r.sessions = ptrs;
    r.daemon_version = (char *)MEMPROF_VERSION;
    env.msg_case = MEMPROF__ENVELOPE__MSG_STATUS_REPLY;
    env.status_reply = &r;
    send_env(c, &env);
    free(infos);
    free(ptrs);
}

void attach_on_ps(struct conn *c, const Envelope *in)
{
    (void)in;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__PsReply r;
    proc_list_python(c->peer_uid, &r);
    for (size_t i = 0; i < r.n_procs; i++) {
        struct session *s = session_find(r.procs[i]->pid);
        r.procs[i]->attached = s && s->state == SESS_ATTACHED;
    }
    env.msg_case = MEMPROF__ENVELOPE__MSG_PS_REPLY;
    env.ps_reply = &r;
    send_env(c, &env);
    proc_list_free(&r);
}

void attach_on_alloc_report(struct conn *c, const Envelope *env)
{
    struct session *s = session_of_agent(c->id);
    metrics_alloc_report();
    if (!s) return;
    alloc_report(s, env->alloc_report);
    if (env->alloc_report->final) s->exiting = 1;
    if (env->alloc_report->native_late_note && *env->alloc_report->native_late_note &&
        strcmp(s->native_late, env->alloc_report->native_late_note) != 0) {
        snprintf(s->native_late, sizeof s->native_late, "%s", env->alloc_report->native_late_note);
        server_log("pid %d: %s", (int)s->pid, s->native_late);
    }
}

void attach_on_agent_reply(struct conn *c, const Envelope *env)
{
    struct session *s = session_of_agent(c->id);
    const Memprof__AgentReply *r = env->agent_reply;
    if (!s) return;
    if (r->body_case == MEMPROF__AGENT_REPLY__BODY_CENSUS && (!r->error || !*r->error)) metrics_census(s, r->census);
    for (struct call *k = calls; k; k = k->next) {
        if (k->id != r->id || k->pid != s->pid) continue;
        if (!k->client_conn && r->body_case == MEMPROF__AGENT_REPLY__BODY_DETACH) s->detach_acked = 1;
        if (k->id == s->config_call && s->state == SESS_ATTACHING) {
            /* what is in force: tracking may be off (the hooks could not go in) */
            if (r->body_case == MEMPROF__AGENT_REPLY__BODY_TRACKING) {
                uint32_t frames = r->tracking->max_frames;
                s->track.enabled = r->tracking->enabled;
                s->track.exact = r->tracking->exact;
                s->track.native = r->tracking->native;
                s->track.native_frames = r->tracking->native_frames;
                if (r->tracking->native_note && *r->tracking->native_note) {
                    snprintf(s->native_note, sizeof s->native_note, "%s", r->tracking->native_note);
                    server_log("pid %d: %s", (int)s->pid, s->native_note);
                }
                s->track.sample_rate = r->tracking->sample_rate;
                s->track.max_frames = frames;
                s->track.interval_ms = r->tracking->interval_ms;
            } else {
                server_log("pid %d: the agent did not take its tracking settings: %s", (int)s->pid,
                           r->error && *r->error ? r->error : "(no reason)");
                s->track.enabled = s->track.native = s->track.native_frames = 0;
            }
            s->config_call = 0;
            call_finish(k, r, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, NULL);
            attach_agent_ready(s);
            return;
        }
        call_finish(k, r, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, NULL);
        return;
    }
}

static void fail_calls_of(pid_t pid, Memprof__ErrorReply__Code code, const char *why)
{
    struct call *k = calls, *next;
    for (; k; k = next) {
        next = k->next;
        if (k->pid == pid) call_finish(k, NULL, code, why);
    }
}

void attach_agent_gone(struct conn *c)
{
    struct session *s = session_of_agent(c->id);
    char why[160];
    if (!s) return;
    s->agent_conn = 0;
    if (s->state == SESS_DETACHING) return; /* expected: the tick finishes the detach */
    if (s->state == SESS_ATTACHING) { /* between its hello and its settings */
        snprintf(why, sizeof why, "pid %d: the agent %s during the attach", (int)s->pid,
                 proc_alive(s->pid) ? "disconnected" : "exited");
        server_log("%s", why);
        attach_fail(s, proc_error_code(s->pid, MEMPROF__ERROR_REPLY__CODE__UNKNOWN), why);
        return;
    }
    if (proc_exiting(s->pid) || s->exiting) {
        snprintf(why, sizeof why, "pid %d: the process exited", (int)s->pid);
        server_log("pid %d exited; session kept", (int)s->pid);
        fail_calls_of(s->pid, MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS, why);
        retire(s, SESS_EXITED);
    } else {
        snprintf(why, sizeof why, "pid %d: the agent disconnected", (int)s->pid);
        server_log("pid %d: agent connection lost", (int)s->pid);
        fail_calls_of(s->pid, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, why);
        retire(s, SESS_LOST);
    }
}

void attach_client_gone(struct conn *c)
{
    run_client_gone(c);
    for (struct session *s = sessions; s; s = s->next)
        if (s->state == SESS_ATTACHING && s->attach_waiter == c->id) s->cancelled = 1;
    for (struct call *k = calls; k; k = k->next)
        if (k->client_conn == c->id) k->client_conn = 0; /* the reply will be dropped */
}

static void finish_detach(struct session *s)
{
    char err[MP_ERRLEN] = "";
    double stop_ms = 0;
    int unloaded = 0;
    if (s->handle && proc_alive(s->pid)) {
        if (inject_unload(s->pid, s->handle, &stop_ms, err) == 0)
            unloaded = 1;
        else
            server_log("pid %d: agent left loaded: %s", (int)s->pid, err);
    } else if (!s->handle && s->undo && proc_alive(s->pid)) {
        server_log("pid %d: the agent's handle is unknown (it never said hello): it may stay loaded", (int)s->pid);
    }
    server_log("pid %d %s%s", (int)s->pid, s->undo ? "undone" : "detached", unloaded ? ", agent unloaded" : "");
    reply_detach(s->detach_waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, NULL, stop_ms, unloaded);
    s->detach_waiter = 0;
    retire(s, proc_alive(s->pid) ? SESS_DETACHED : SESS_EXITED);
}

long attach_tick(void)
{
    double now = mp_now();
    struct session *s, *next;
    long next_ms = -1;
    for (s = sessions; s; s = next) {
        next = s->next;
        if (s->state == SESS_ATTACHING && s->rx.active && !s->agent_conn && !rx_poll(s->pid, &s->rx) &&
            now > s->rx.deadline && proc_alive(s->pid)) {
            if (!remote_exec_timeout(s)) end_session(s);
            continue;
        }
        if (s->state == SESS_ATTACHING && ((s->deadline && now > s->deadline) || !proc_alive(s->pid)))
            rx_done(&s->rx);
        if (s->state == SESS_ATTACHING && s->deadline && now > s->deadline) {
            char err[MP_ERRLEN];
            struct conn *ac = s->agent_conn ? conn_by_id(s->agent_conn) : NULL;
            if (ac)
                snprintf(err, sizeof err, "pid %d: the agent connected but did not take its tracking settings within %.0f s",
                         (int)s->pid, ATTACH_TIMEOUT);
            else if (s->method == ATTACH_REMOTE_EXEC)
                snprintf(err, sizeof err,
                         "pid %d: its interpreter took the remote-exec request but no agent connected within %.0f s "
                         "(ctypes missing, or an audit hook refused cpython.remote_debugger_script?); "
                         "--method ptrace may work",
                         (int)s->pid, ATTACH_TIMEOUT);
            else
                snprintf(err, sizeof err,
                         "pid %d: the agent was loaded but did not connect within %.0f s "
                         "(interpreter not initialized, or the GIL never released?)",
                         (int)s->pid, ATTACH_TIMEOUT);
            attach_fail(s, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, err);
        } else if (s->state == SESS_ATTACHING && !proc_alive(s->pid) && !s->agent_conn) {
            char err[MP_ERRLEN];
            snprintf(err, sizeof err, "pid %d: the process exited during the attach", (int)s->pid);
            log_watch_failure(s, err);
            reply_attach_error(s->attach_waiter, MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS, err);
            end_session(s);
        } else if (s->state == SESS_DETACHING && !proc_alive(s->pid)) {
            reply_detach(s->detach_waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, NULL, 0, 0);
            server_log("pid %d exited while detaching", (int)s->pid);
            retire(s, SESS_EXITED);
        } else if (s->state == SESS_DETACHING) {
            int agent_runs, stopped;
            undo_scan(s, &agent_runs, &stopped);
            if ((s->detach_acked || !s->agent_conn) && !agent_runs && !stopped) {
                finish_detach(s);
            } else if (s->deadline && now > s->deadline) {
                char err[MP_ERRLEN];
                snprintf(err, sizeof err,
                         "pid %d: the agent did not finish detaching within %.0f s (%s); memprofd unloads it as "
                         "soon as it has (memprof status shows the session detaching until then)",
                         (int)s->pid, DETACH_TIMEOUT,
                         stopped ? "the process is stopped" : "its main thread holds the GIL?");
                reply_detach(s->detach_waiter, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, err, 0, 0);
                undo_later(s, "the detach is taking long", 0);
            }
        }
    }
    for (struct call *k = calls, *kn; k; k = kn) {
        kn = k->next;
        if (now > k->deadline)
            call_finish(k, NULL, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, "the agent did not answer in time");
    }
    /* What is still pending decides when to look again: a detach waits for the agent's thread to end
     * (no event tells), an attach for the process to stay alive; calls only for their deadlines. */
    for (s = sessions; s; s = s->next) {
        long ms = s->state == SESS_DETACHING ? (s->undo ? UNDO_POLL_MS : 10) : s->state == SESS_ATTACHING ? 100 : -1;
        if (ms >= 0 && (next_ms < 0 || ms < next_ms)) next_ms = ms;
    }
    for (struct call *k = calls; k; k = k->next) {
        long ms = (long)((k->deadline - now) * 1000.0) + 1;
        if (ms < 1) ms = 1;
        if (next_ms < 0 || ms < next_ms) next_ms = ms;
    }
    return next_ms;
}

void attach_detach_all(void)
{
    for (struct session *s = sessions; s; s = s->next) {
        if (s->state == SESS_ATTACHED) start_detach(s, 0, 2.5);
        /* a remote-exec request not taken yet is withdrawn; its files go */
        if (s->state == SESS_ATTACHING && s->rx.active && !rx_poll(s->pid, &s->rx) && rx_cancel(s->pid, &s->rx))
            rx_done(&s->rx);
    }
}

int attach_busy(void)
{
    for (struct session *s = sessions; s; s = s->next)
        if (s->state == SESS_ATTACHING || s->state == SESS_DETACHING) return 1;
    return 0;
}
