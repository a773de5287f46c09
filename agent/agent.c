/* agent.c -- the agent's entry point and its one native thread: handshake with
 * memprofd, the request loop, detach. Of all this only memprof_agent_start runs
 * on a thread of the target (the hijacked one), and it just starts the thread. */
#include "agent.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "defaults.h"
#include "gil.h"
#include "hooks.h"
#include "native.h"
#include "launch.h"
#include "log.h"
#include "pyapi.h"
#include "pycall.h"
#include "track.h"
#include "version.h"
#include "wire.h"

/* Pages are only committed when touched, so this costs what is used. It is
 * larger than the agent core needs because request handlers run the target's
 * C API (and through it, Python code such as __sizeof__) on this stack. */
#define AGENT_STACK_SIZE (2u << 20)
#define AGENT_ARG_MAX 8192
#define INIT_WAIT_S 30.0        /* for Py_IsInitialized in a process still starting */
#define INIT_POLL_NS 10000000L
#define IO_TIMEOUT_MS 5000      /* connect, hello, hello reply */
#define REPLY_TIMEOUT_MS 10000  /* one reply (a census may be megabytes) */
#define RBUF_KEEP (256u << 10)  /* receive buffer kept between messages */
#define LAUNCH_WAIT_S 15.0      /* memprof run: for the tracking settings, before the first line */
#define AGENT_THREAD_NAME "memprof-agent" /* memprofd's attach.c looks for it (AGENT_THREAD) */

/* The agent's link to the daemon: one connection, owned by the agent thread. */
struct agent_link {
    int fd;
    struct wire_rbuf rb;
    double gil_wait_ms;
    uint8_t *pend;        /* an allocation report not yet fully written */
    size_t pend_len, pend_off;
    uint64_t coalesced;   /* ticks skipped because the daemon was not reading */
};

static struct agent_conf conf;
static atomic_int running;          /* 1 from a successful start to the thread's end */
static atomic_int sock_fd = -1;     /* the session's socket, for the fork-child handler */
static int atfork_registered;
static int launched;                /* started by memprof run (preloaded), not injected */
static int wake_fd = -1;            /* eventfd the agent thread polls: a final report is wanted */
static atomic_int final_asked, final_done, conn_ready;

/* ------------------------------------------------------------ hook points */

/* Write what the socket takes now of the pending report. 1: all written. */
static int pend_push(struct agent_link *s)
{
    while (s->pend && s->pend_off < s->pend_len) {
        ssize_t w = send(s->fd, s->pend + s->pend_off, s->pend_len - s->pend_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return 0;
        s->pend_off += (size_t)w;
    }
    free(s->pend);
    s->pend = NULL;
    s->pend_len = s->pend_off = 0;
    return 1;
}

/* Before a reply: the rest of a half-sent report must go first. */
static int pend_flush(struct agent_link *s, char *err)
{
    int rc = 0;
    if (s->pend && s->pend_off < s->pend_len)
        rc = wire_write_all(s->fd, s->pend + s->pend_off, s->pend_len - s->pend_off, REPLY_TIMEOUT_MS, err);
    free(s->pend);
    s->pend = NULL;
    s->pend_len = s->pend_off = 0;
    return rc;
}

/* Runs every flush interval on the agent thread, without the GIL: sends the
 * allocation deltas. Never waits for the daemon: while a report is still
 * being written, the deltas keep accumulating in the tables (coalesced). */
static void agent_tick(struct agent_link *s, int final)
{
    Memprof__AllocReport r;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    char err[MP_ERRLEN], late[512];
    if (!hooks_installed() || s->fd < 0) return;
    native_rescan();
    if (!pend_push(s)) {
        s->coalesced++;
        return;
    }
    if (track_collect(&r) < 0) return;
    r.reports_coalesced = s->coalesced;
    r.final = final;
    r.n_profiled = pycall_profiled_take(&r.profiled);
    if (native_late_note(late, sizeof late)) r.native_late_note = late; /* in every report: the daemon keeps the last */
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_REPORT;
    env.alloc_report = &r;
    if (wire_encode(&env, &s->pend, &s->pend_len, err) < 0) agent_log("report: %s", err);
    pycall_profiled_free(r.profiled, r.n_profiled);
    r.profiled = NULL, r.n_profiled = 0;
    track_report_free(&r);
    s->pend_off = 0;
    pend_push(s);
}

static char native_off[MP_ERRLEN + 32]; /* why native tracking (or its frames) is off, for the reply to the daemon's TrackingConfig (and a later hello) */

/* Native tracking when asked for (after hooks_install); what went wrong is
 * logged and told to the daemon in the TrackingConfig reply (native_note). */
static void native_start(void)
{
    char err[MP_ERRLEN];
    if (!conf.native) return;
    if (conf.native_frames && native_frames_enable(err) < 0) {
        agent_log("%s", err);
        snprintf(native_off, sizeof native_off, "%s", err);
    }
    if (native_install(err) < 0) {
        agent_log("native tracking off: %s", err);
        snprintf(native_off, sizeof native_off, "native tracking off: %s", err);
    }
}

/* Install the allocation hooks, with the GIL, when the daemon's settings ask for them. */
static void agent_track(void)
{
    struct hooks_conf hc = {.rate = conf.rate, .frames = conf.frames, .exact = conf.exact};
    char err[MP_ERRLEN];
    int state;
    if (!conf.track || gil_take(&state) < 0) return;
    if (hooks_install(&hc, err) < 0) {
        agent_log("allocation tracking off: %s", err);
    } else {
        agent_log("allocation hooks installed (%s, rate %llu)", conf.exact ? "exact" : "sampling",
                  (unsigned long long)conf.rate);
        if (pycall_atexit_register(agent_final_report) < 0) agent_log("no atexit callback: the last figures may be partial");
        native_start();
    }
    gil_give(state);
}

/* Keep this library mapped for good (something in the target still points into it). */
static void pin_self(void)
{
    Dl_info self;
    if (dladdr((void *)pin_self, &self) && self.dli_fname)
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* Removes everything the agent installed in the target (allocator hooks, ...)
 * so that the library can be unloaded. Runs on the agent thread without the
 * GIL, on every way out: detach, lost daemon, finalization, errors. Must be
 * idempotent. */
static void agent_undo(void)
{
    int state;
    /* first: the native hooks write into the tables hooks_release frees */
    if (native_uninstall() < 0) pin_self();
    if (hooks_installed() || pycall_atexit_registered()) {
        if (gil_take(&state) == 0) {
            hooks_uninstall();
            /* the callback lives in this library: if it stays registered, so must the library */
            if (pycall_atexit_unregister() < 0) pin_self();
            gil_give(state);
        } else {
            hooks_abandon(); /* finalizing: the process is going away anyway */
            pin_self();
        }
    }
    hooks_release();
}

/* ------------------------------------------------------------ handlers */

/* ---------------------------------------------------------- requests */

/* A request's handler fills reply (its body) or err; returns 0, -1 (error), or -2 (the interpreter is
 * finalizing: the session ends). */
typedef int request_fn(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err);

static int on_detach(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    static Memprof__DetachReply detach = MEMPROF__DETACH_REPLY__INIT; /* static: the reply points at it until
                                                                       * sent; only the agent thread answers */
    (void)req;
    (void)err;
    agent_undo();
    detach.unloaded = 0; /* the daemon unloads the library once this thread is gone */
    reply->body_case = MEMPROF__AGENT_REPLY__BODY_DETACH;
    reply->detach = &detach;
    return 0;
}

/* memprof run: the Python thread setting up before the program's first line (agent_launch_setup,
 * GIL held) waits for the settings the agent thread gets from the daemon, then installs the hooks
 * itself; the agent thread answers the daemon once that is done. */
enum { LAUNCH_NONE, LAUNCH_WAITING, LAUNCH_GOT, LAUNCH_DONE };
static pthread_mutex_t launch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t launch_cv = PTHREAD_COND_INITIALIZER;
static int launch_state; /* under launch_mu */

/* Wait on launch_cv while the state is `while_state` (and cond holds), until deadline. Returns the state. */
static int launch_wait(int while_state, double deadline)
{
    int st;
    pthread_mutex_lock(&launch_mu);
    while (launch_state == while_state && mp_now() < deadline && (while_state != LAUNCH_WAITING || atomic_load(&running))) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20000000L; /* a slice: the deadline is monotonic */
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&launch_cv, &launch_mu, &ts);
    }
    st = launch_state;
    pthread_mutex_unlock(&launch_mu);
    return st;
}

static void launch_set(int st)
{
    pthread_mutex_lock(&launch_mu);
    launch_state = st;
    pthread_cond_broadcast(&launch_cv);
    pthread_mutex_unlock(&launch_mu);
}

/* The daemon's settings: the first ones install the hooks (nothing is hooked before them); once the
 * hooks are in, only the interval changes. The reply is what is in force. */
static int on_tracking(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    static Memprof__TrackingConfig tracking;
    int handed = 0;
    (void)err;
    conf.interval_ms = conf_interval(req->tracking->interval_ms);
    if (!hooks_installed()) {
        conf_tracking(&conf, req->tracking);
        pthread_mutex_lock(&launch_mu);
        if (launch_state == LAUNCH_WAITING) {
            launch_state = LAUNCH_GOT; /* agent_launch_setup installs them, holding the GIL */
            pthread_cond_broadcast(&launch_cv);
            handed = 1;
        }
        pthread_mutex_unlock(&launch_mu);
        if (handed) launch_wait(LAUNCH_GOT, mp_now() + LAUNCH_WAIT_S);
        if (!hooks_installed()) agent_track(); /* injected, or the launch gave up waiting */
    }
    memprof__tracking_config__init(&tracking);
    tracking.enabled = hooks_installed();
    tracking.exact = conf.exact;
    tracking.sample_rate = conf.rate;
    tracking.max_frames = conf.frames;
    tracking.interval_ms = conf.interval_ms;
    tracking.native = native_installed();
    tracking.native_frames = native_installed() && conf.native_frames;
    tracking.native_note = (char *)(native_off[0] ? native_off : native_note());
    reply->body_case = MEMPROF__AGENT_REPLY__BODY_TRACKING;
    reply->tracking = &tracking;
    return 0;
}

static int on_census(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    return census_handle(req->census, reply, err);
}

static int on_backrefs(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err)
{
    return backrefs_handle(req->backrefs, reply, err);
}

/* The agent's dispatch table: a new request is a schema entry, one handler and one row. */
static const struct request_route {
    Memprof__AgentRequest__BodyCase body;
    request_fn *fn;
    int needs_gil;                               /* run with the GIL held, timed into gil_ms */
    void (*release)(Memprof__AgentReply *reply); /* frees the reply's body after it was sent */
    int ends_session;
} request_routes[] = {
    {MEMPROF__AGENT_REQUEST__BODY_DETACH, on_detach, 0, NULL, 1},
    {MEMPROF__AGENT_REQUEST__BODY_CENSUS, on_census, 1, census_free, 0},
    {MEMPROF__AGENT_REQUEST__BODY_BACKREFS, on_backrefs, 1, backrefs_free, 0},
    {MEMPROF__AGENT_REQUEST__BODY_TRACKING, on_tracking, 0, NULL, 0},
};

/* Run a handler with the GIL held, timing how long it is held. -2 when the interpreter is finalizing. */
static int handle_locked(const struct request_route *r, const Memprof__AgentRequest *req,
                         Memprof__AgentReply *reply, char *err)
{
    int rc;
    double t0;
    if (gil_handler_enter() < 0) {
        mp_err(err, "the Python interpreter is shutting down");
        return -2;
    }
    t0 = mp_now();
    rc = r->fn(req, reply, err);
    reply->gil_ms = (mp_now() - t0 - gil_handler_released()) * 1e3;
    if (gil_handler_leave() < 0) { /* a yield found the interpreter finalizing */
        mp_err(err, "the Python interpreter is shutting down");
        return -2;
    }
    return rc;
}

/* Answer one request. Returns 1 when the session must end (detach, shutdown,
 * or the reply could not be sent), else 0. */
static int link_request(struct agent_link *s, const Memprof__AgentRequest *req)
{
    Memprof__AgentReply reply = MEMPROF__AGENT_REPLY__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    const struct request_route *route = NULL;
    char err[MP_ERRLEN] = "", serr[MP_ERRLEN] = "";
    Memprof__AgentReply__BodyCase body;
    int rc, stop = 0;

    reply.id = req->id;
    for (size_t i = 0; i < sizeof request_routes / sizeof request_routes[0]; i++)
        if (request_routes[i].body == req->body_case) route = &request_routes[i];
    if (!route) {
        mp_err(err, "unknown request (body %d): this agent is older than the daemon", (int)req->body_case);
        rc = -1;
    } else {
        rc = route->needs_gil ? handle_locked(route, req, &reply, err) : route->fn(req, &reply, err);
        stop = route->ends_session || rc == -2;
    }
    agent_log("request %llu (body %d): %s%s", (unsigned long long)req->id, (int)req->body_case,
              rc < 0 ? "error: " : "ok", rc < 0 ? err : "");

    body = reply.body_case;
    if (rc < 0) {
        reply.error = err[0] ? err : "request failed";
        reply.body_case = MEMPROF__AGENT_REPLY__BODY__NOT_SET; /* an error has no body */
    }
    env.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_REPLY;
    env.agent_reply = &reply;
    if (pend_flush(s, serr) < 0 || wire_send(s->fd, &env, REPLY_TIMEOUT_MS, serr) < 0) {
        agent_log("sending reply %llu: %s", (unsigned long long)req->id, serr);
        stop = 1;
    }
    reply.body_case = body;
    if (route && route->release) route->release(&reply);
    return stop;
}

/* ------------------------------------------------------------ connection */

static void link_close(struct agent_link *s)
{
    if (s->fd >= 0) {
        /* forget it before closing: a fork in between leaks it in the child
         * rather than letting the child handler close a reused number */
        atomic_store(&sock_fd, -1);
        close(s->fd);
        s->fd = -1;
    }
    wire_rbuf_free(&s->rb);
    free(s->pend);
    s->pend = NULL;
    s->pend_len = s->pend_off = 0;
}

static int link_connect(struct agent_link *s, char *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(conf.sock);
    socklen_t len;
    double deadline = mp_now() + IO_TIMEOUT_MS / 1000.0;
    int fd;

    if (conf.fd >= 0) {
        /* memprofd made this socket pair in our process when it injected us (it works
         * across network namespaces, where the abstract socket is not reachable);
         * it is ours from now on, used once */
        s->fd = conf.fd;
        conf.fd = -1;
        atomic_store(&sock_fd, s->fd);
        return 0;
    }
    memcpy(sa.sun_path, conf.sock, n); /* fits: checked by conf_set */
    if (conf.sock[0] == '@') {
        sa.sun_path[0] = 0; /* Linux abstract namespace: no trailing NUL */
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        mp_errno(err, "socket");
        return -1;
    }
    s->fd = fd;
    atomic_store(&sock_fd, fd);
    while (connect(fd, (struct sockaddr *)&sa, len) < 0) {
        struct timespec ts = {0, INIT_POLL_NS};
        if (errno == EINTR) continue;
        if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (poll(&p, 1, IO_TIMEOUT_MS) <= 0 ||
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
                if (soerr) errno = soerr;
                mp_errno(err, "connect to memprofd at %s", conf.sock);
                return -1;
            }
            break;
        }
        /* a full listen backlog gives EAGAIN on a unix socket: retry */
        if (errno != EAGAIN || mp_now() > deadline) {
            mp_errno(err, "connect to memprofd at %s", conf.sock);
            return -1;
        }
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Who we are, for the Hello. Buffers in *buf, freed by the caller. */
struct self_info {
    char exe[PATH_MAX];
    char cmdline[32768];
    char *argv[256];
};

static void self_info_fill(struct self_info *si, Memprof__AgentInfo *ai)
{
    ssize_t n = readlink("/proc/self/exe", si->exe, sizeof si->exe - 1);
    si->exe[n > 0 ? n : 0] = 0;
    ai->executable = si->exe;
    n = mp_read_file("/proc/self/cmdline", si->cmdline, sizeof si->cmdline);
    ai->n_argv = 0;
    for (ssize_t i = 0; i < n && ai->n_argv < sizeof si->argv / sizeof si->argv[0];) {
        si->argv[ai->n_argv++] = si->cmdline + i;
        i += (ssize_t)strlen(si->cmdline + i) + 1;
    }
    ai->argv = si->argv;
    ai->pid = (int32_t)getpid();
    ai->agent_tid = (int32_t)syscall(SYS_gettid);
}

/* Send our Hello; with want_reply, wait for and check the daemon's answer. */
static int link_hello(struct agent_link *s, int want_reply, char *err)
{
    Memprof__Hello hello = MEMPROF__HELLO__INIT;
    Memprof__AgentInfo ai = MEMPROF__AGENT_INFO__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *rep = NULL;
    char version[32];
    struct self_info *si = malloc(sizeof *si);
    int rc;

    if (!si) {
        mp_err(err, "out of memory");
        return -1;
    }
    self_info_fill(si, &ai);
    ai.py_hexversion = pyapi_hexversion();
    ai.python_version = (char *)pyapi_version();
    if (!ai.py_hexversion && (ai.py_hexversion = pyapi_exported_hexversion())) {
        snprintf(version, sizeof version, "%u.%u.%u", ai.py_hexversion >> 24,
                 ai.py_hexversion >> 16 & 0xff, ai.py_hexversion >> 8 & 0xff);
        ai.python_version = version;
    }
    ai.gil_wait_ms = s->gil_wait_ms;
    ai.agent_version = (char *)MEMPROF_VERSION;
    ai.dl_handle = conf.handle;
    ai.exec_ms = (double)conf.busy_us / 1e3;
    ai.native_note = (char *)(native_off[0] ? native_off : native_note());
    hello.protocol = MEMPROF_PROTOCOL;
    hello.role = MEMPROF__HELLO__ROLE__AGENT;
    hello.token = conf.token;
    hello.agent = &ai;
    env.msg_case = MEMPROF__ENVELOPE__MSG_HELLO;
    env.hello = &hello;
    rc = wire_send(s->fd, &env, IO_TIMEOUT_MS, err);
    agent_log("hello: python %s (0x%08x), tid %d, gil wait %.3f ms%s", ai.python_version,
              ai.py_hexversion, ai.agent_tid, ai.gil_wait_ms, rc < 0 ? ", not sent" : "");
    free(si);
    if (rc < 0 || !want_reply) return rc;

    if (wire_recv(s->fd, &rep, IO_TIMEOUT_MS, err) < 0) return -1;
    rc = -1;
    if (rep->msg_case != MEMPROF__ENVELOPE__MSG_HELLO_REPLY)
        mp_err(err, "daemon answered the hello with %s", wire_name(rep));
    else if (rep->hello_reply->error && rep->hello_reply->error[0])
        mp_err(err, "daemon refused the agent: %s", rep->hello_reply->error);
    else if (rep->hello_reply->protocol != MEMPROF_PROTOCOL)
        mp_err(err, "daemon speaks protocol %u, this agent %u", rep->hello_reply->protocol,
               MEMPROF_PROTOCOL);
    else
        rc = 0;
    wire_free(rep);
    return rc;
}

/* The process is exiting (agent_final_report): everything counted so far goes
 * out now, written in full. */
static void final_flush(struct agent_link *s)
{
    char err[MP_ERRLEN];
    eventfd_t v;
    if (eventfd_read(wake_fd, &v) < 0 || !atomic_exchange(&final_asked, 0)) return;
    if (pend_flush(s, err) == 0) {
        agent_tick(s, 1);
        if (pend_flush(s, err) < 0) agent_log("final report: %s", err);
        else agent_log("final report sent");
    }
    atomic_store(&final_done, 1);
}

void agent_final_report(double wait_s)
{
    struct timespec ts = {0, 200000};
    double deadline = mp_now() + wait_s;
    hooks_freeze();
    /* a thread just started (a forked child's) may still be saying hello */
    while (atomic_load(&running) && !atomic_load(&conn_ready) && mp_now() < deadline) nanosleep(&ts, NULL);
    if (!atomic_load(&running) || !atomic_load(&conn_ready) || wake_fd < 0) return;
    atomic_store(&final_done, 0);
    atomic_store(&final_asked, 1);
    if (eventfd_write(wake_fd, 1) < 0) return;
    while (!atomic_load(&final_done) && atomic_load(&running) && mp_now() < deadline) nanosleep(&ts, NULL);
}

/* Serve requests until detach, an error, or the daemon goes away. */
static void link_loop(struct agent_link *s)
{
    char err[MP_ERRLEN];
    double last_tick = mp_now(), next_tick;
    atomic_store(&conn_ready, 1);
    for (;;) {
        struct pollfd pfd[2] = {{.fd = s->fd, .events = POLLIN}, {.fd = wake_fd, .events = POLLIN}};
        struct pollfd *p = &pfd[0];
        int ms, r;
        Envelope *env;
        /* from the last tick: the daemon's TrackingConfig (on_tracking) may change the interval */
        next_tick = last_tick + conf.interval_ms / 1000.0;
        ms = (int)((next_tick - mp_now()) * 1000) + 1;
        if (ms < 0) ms = 0;
        r = poll(pfd, wake_fd >= 0 ? 2 : 1, ms);
        if (r < 0 && errno != EINTR) {
            agent_log("poll: %s", strerror(errno));
            return;
        }
        if (r > 0 && wake_fd >= 0 && (pfd[1].revents & POLLIN)) final_flush(s);
        if (r > 0 && (p->revents & POLLNVAL)) {
            /* someone in the target closed our descriptor: it is not ours anymore */
            agent_log("connection descriptor %d closed under us", s->fd);
            atomic_store(&sock_fd, -1);
            s->fd = -1;
            return;
        }
        if (r > 0 && (p->revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = wire_rbuf_fill(&s->rb, s->fd, err);
            if (n == 0 || (n < 0 && errno == ECONNRESET)) {
                /* a reset when it went away with our reports unread */
                agent_log("daemon closed the connection");
                return;
            }
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                agent_log("reading from daemon: %s", err);
                return;
            }
            while ((r = wire_take(&s->rb, &env, err)) == 1) {
                int stop = 0;
                if (env->msg_case == MEMPROF__ENVELOPE__MSG_AGENT_REQUEST)
                    stop = link_request(s, env->agent_request);
                else
                    agent_log("ignoring a %s message", wire_name(env));
                wire_free(env);
                if (stop) return;
            }
            if (r < 0) {
                agent_log("from daemon: %s", err);
                return;
            }
            if (s->rb.len == 0 && s->rb.cap > RBUF_KEEP) wire_rbuf_free(&s->rb);
        }
        if (mp_now() >= last_tick + conf.interval_ms / 1000.0) {
            agent_tick(s, 0);
            last_tick = mp_now();
        }
    }
}

/* ------------------------------------------------------------ the thread */

/* In a forked child there is no agent thread: forget the session so that an
 * attach to the child starts afresh, and do not keep the parent's daemon
 * connection open. glibc drops this handler when the library is dlclosed. */
static int spawn_thread(void);

static void agent_atfork_child(void)
{
    native_atfork_child();
    int fd = atomic_exchange(&sock_fd, -1);
    int was_running = atomic_load(&running);
    if (fd >= 0) close(fd);
    gil_atfork_child(); /* no agent thread here to wait for */
    /* the parent's agent thread may have held it at the fork */
    pthread_mutex_init(&launch_mu, NULL);
    pthread_cond_init(&launch_cv, NULL);
    atomic_store(&conn_ready, 0);
    atomic_store(&final_asked, 0);
    atomic_store(&running, 0);
    if (launched && conf.follow && was_running && hooks_installed() && !hooks_frozen()) {
        /* memprof run --follow-fork: the child is a session of its own, with
         * a fresh agent thread (it needs no GIL to connect and report) */
        hooks_atfork_follow();
        pycall_atfork_child();
        if (wake_fd >= 0) close(wake_fd);
        wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        atomic_store(&running, 1);
        if (spawn_thread() != 0) {
            atomic_store(&running, 0);
            hooks_atfork_child();
        }
        return;
    }
    hooks_atfork_child(); /* the child is not tracked: wrappers pass through */
}

/* Wait for a starting interpreter. 0 when initialized, -1 when it never is or
 * is going away. */
static int wait_initialized(char *err)
{
    double deadline = mp_now() + INIT_WAIT_S;
    while (!PY.IsInitialized()) {
        struct timespec ts = {0, INIT_POLL_NS};
        if (PY.IsFinalizing()) {
            mp_err(err, "the interpreter is finalizing");
            return -1;
        }
        if (mp_now() > deadline) {
            mp_err(err, "Python not initialized after %.0f s", INIT_WAIT_S);
            return -1;
        }
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Take the GIL once: proves we can, measures how long it takes, reads the version. */
static int gil_probe(struct agent_link *s, char *err)
{
    int state;
    double t0 = mp_now();
    if (gil_take(&state) < 0) {
        mp_err(err, "the interpreter is finalizing");
        return -1;
    }
    s->gil_wait_ms = (mp_now() - t0) * 1e3;
    if (pyapi_load_version(err) < 0) agent_log("%s", err); /* go on without a version */
    else if (!pyapi_abi()) agent_log("%s", pyapi_abi_error()); /* go on: no stacks, no census */
    gil_give(state);
    return 0;
}

static void agent_run(struct agent_link *s)
{
    char err[MP_ERRLEN] = "";
    prctl(PR_SET_NAME, AGENT_THREAD_NAME, 0, 0, 0); /* in top -H, py-spy, gdb (named so from birth: spawn_thread) */
    agent_debug = conf.debug || conf_environ_flag("MEMPROF_AGENT_DEBUG");
    agent_log("thread started (sock=%s pylib=%s interval=%u ms)", conf.sock,
              conf.pylib[0] ? conf.pylib : "-", conf.interval_ms);
    if (!atfork_registered && pthread_atfork(NULL, NULL, agent_atfork_child) == 0)
        atfork_registered = 1;

    if (launched) {
        /* memprof run: the API and the version were set up on a Python thread
         * before the program's first line (launch.c), which waits for the
         * tracking settings the daemon sends after the hello (on_tracking) */
        if (link_connect(s, err) < 0 || link_hello(s, 1, err) < 0) {
            agent_log("%s", err);
            return;
        }
        agent_log("connected (memprof run)");
        link_loop(s);
        return;
    }
    if (pyapi_init(conf.pylib, err) < 0) {
        /* Not a Python we can drive: say who we are, then leave. */
        agent_log("%s", err);
        if (link_connect(s, err) == 0) link_hello(s, 0, err);
        return;
    }
    agent_log("C API found in the %s", pyapi_where());
    if (wait_initialized(err) < 0 || gil_probe(s, err) < 0) {
        agent_log("%s", err);
        return;
    }
    /* No hook yet: the daemon's first request is the tracking settings
     * (on_tracking); it reports the attach done once they are in force. */
    if (link_connect(s, err) < 0 || link_hello(s, 1, err) < 0) {
        agent_log("%s", err);
        return;
    }
    agent_log("attached");
    link_loop(s);
}

/* Runs on the normal way out and when CPython ends the thread inside
 * PyGILState_Ensure during finalization. After the store to `running` no code
 * of this library runs on this thread (only the return into libc). */
static void agent_cleanup(void *arg)
{
    struct agent_link *s = arg;
    gil_exit();
    atomic_store(&conn_ready, 0);
    agent_undo();
    link_close(s);
    if (!launched) pyapi_fini(); /* memprof run: launch.c's audit hook and the exit path keep using it */
    agent_log("thread exits");
    pthread_mutex_lock(&launch_mu);
    atomic_store(&running, 0);
    pthread_cond_broadcast(&launch_cv); /* a launch waiting for the settings gives up */
    pthread_mutex_unlock(&launch_mu);
}

static void *agent_main(void *unused)
{
    struct agent_link s = {.fd = -1};
    (void)unused;
    gil_thread_start();
    pthread_cleanup_push(agent_cleanup, &s);
    agent_run(&s);
    pthread_cleanup_pop(1);
    return NULL;
}

static int configure(const char *arg)
{
    static char argbuf[AGENT_ARG_MAX];
    size_t n;
    if (!arg || (n = strnlen(arg, sizeof argbuf)) == sizeof argbuf) return -1;
    memcpy(argbuf, arg, n + 1);
    return conf_parse(&conf, argbuf);
}

/* Start the thread; the caller owns the `running` flag. */
static int spawn_thread(void)
{
    pthread_attr_t attr;
    pthread_t th;
    sigset_t all, old;
    char name[17] = "";
    int rc, renamed;

    if (wake_fd < 0) wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (pthread_attr_init(&attr)) return -2;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, AGENT_STACK_SIZE);
    /* The new thread inherits this mask: with every signal blocked in it, the
     * kernel keeps delivering the target's signals to the target's threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* Named from birth (a thread inherits its creator's name): memprofd tells by the name whether a
     * thread of ours still runs code of this library before it unloads it, also when the agent never
     * said hello (a failed attach); the creator gets its own name back at once. */
    renamed = prctl(PR_GET_NAME, name, 0, 0, 0) == 0 && prctl(PR_SET_NAME, AGENT_THREAD_NAME, 0, 0, 0) == 0;
    rc = pthread_create(&th, &attr, agent_main, NULL);
    if (renamed) prctl(PR_SET_NAME, name, 0, 0, 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc ? -2 : 0;
}

/* dlclose after a detach: the library goes away, its eventfd with it (a new copy
 * makes its own). Not while an agent thread may still poll it (process exit). */
__attribute__((destructor)) static void agent_unloaded(void)
{
    if (!atomic_load(&running) && wake_fd >= 0) {
        close(wake_fd);
        wake_fd = -1;
    }
}

AGENT_API int memprof_agent_start(const char *arg)
{
    int saved_errno = errno; /* the hijacked thread may be about to read it */
    int idle = 0, rc;
    if (!atomic_compare_exchange_strong(&running, &idle, 1)) return 1;
    rc = configure(arg) < 0 ? -1 : spawn_thread();
    if (rc) atomic_store(&running, 0);
    errno = saved_errno;
    return rc;
}

/* ------------------------------------------------------------ memprof run */

int agent_launch_configure(const char *arg, int *follow, char *err)
{
    if (configure(arg) < 0) {
        mp_err(err, "malformed MEMPROF_RUN settings");
        return -1;
    }
    *follow = conf.follow;
    agent_debug = conf.debug || conf_environ_flag("MEMPROF_AGENT_DEBUG");
    return 0;
}

/* Start the agent thread, wait for the daemon's tracking settings (it connects and says hello
 * meanwhile; it needs no GIL for that), install the hooks with them. Without the settings in
 * LAUNCH_WAIT_S (or the thread gave up: no daemon, refused) nothing is hooked. */
int agent_launch_setup(char *err)
{
    struct hooks_conf hc;
    int idle = 0, rc;
    if (pyapi_load_version(err) < 0) return -1;
    if (!pyapi_abi()) {
        mp_err(err, "%s", pyapi_abi_error());
        return -1;
    }
    launched = 1;
    if (!atomic_compare_exchange_strong(&running, &idle, 1)) return 0;
    launch_set(LAUNCH_WAITING);
    if (spawn_thread() != 0) {
        atomic_store(&running, 0);
        launch_set(LAUNCH_DONE);
        mp_err(err, "cannot start the agent thread");
        return -1;
    }
    if (launch_wait(LAUNCH_WAITING, mp_now() + LAUNCH_WAIT_S) != LAUNCH_GOT) {
        launch_set(LAUNCH_DONE);
        if (atomic_load(&running))
            mp_err(err, "no tracking settings from memprofd within %.0f s", LAUNCH_WAIT_S);
        else
            mp_err(err, "the agent's session with memprofd ended before its tracking settings came "
                        "(MEMPROF_AGENT_DEBUG=1 says why)");
        return -1;
    }
    rc = 0;
    if (conf.track) {
        hc = (struct hooks_conf){.rate = conf.rate, .frames = conf.frames, .exact = conf.exact};
        if ((rc = hooks_install(&hc, err)) == 0) {
            if (pycall_atexit_register(agent_final_report) < 0) agent_log("no atexit callback: the last figures may be partial");
            int prc = pycall_profile_install();
            agent_log("hooks installed before the first line (%s, rate %llu)%s", conf.exact ? "exact" : "sampling",
                      (unsigned long long)conf.rate,
                      prc < 0 ? "; no profile builtin" : prc > 0 ? "; profile builtin already defined" : "");
            native_start();
        }
    }
    launch_set(LAUNCH_DONE); /* the agent thread answers the daemon with what is in force */
    return rc;
}

int agent_launched(void) { return launched; }
