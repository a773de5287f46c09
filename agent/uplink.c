/* uplink.c -- the agent's connection to memprofd: connect, hello, the request loop, the allocation reports
 * sent every interval without waiting for the daemon, and the final one at the process's end. */
#include "agent/uplink.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "agent/hooks.h"
#include "agent/install.h"
#include "agent/log.h"
#include "agent/native.h"
#include "agent/pyapi.h"
#include "agent/pycall.h"
#include "agent/requests.h"
#include "agent/state.h"
#include "agent/track.h"
#include "common/version.h"

#define IO_TIMEOUT_MS 5000      /* connect, hello, hello reply */
#define REPLY_TIMEOUT_MS 10000  /* one reply (a census may be megabytes) */
#define RBUF_KEEP (256u << 10)  /* receive buffer kept between messages */

atomic_int agent_sock_fd = -1;

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

/* Answer one request. Returns 1 when the session must end (detach, shutdown,
 * or the reply could not be sent), else 0. */
static int link_request(struct agent_link *s, const Memprof__AgentRequest *req)
{
    Memprof__AgentReply reply = MEMPROF__AGENT_REPLY__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT;
    char err[MP_ERRLEN] = "", serr[MP_ERRLEN] = "";
    Memprof__AgentReply__BodyCase body;
    int rc, stop;

    reply.id = req->id;
    rc = request_run(req, &reply, err, &stop);
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
    request_release(req, &reply);
    return stop;
}

void link_close(struct agent_link *s)
{
    if (s->fd >= 0) {
        /* forget it before closing: a fork in between leaks it in the child
         * rather than letting the child handler close a reused number */
        atomic_store(&agent_sock_fd, -1);
        close(s->fd);
        s->fd = -1;
    }
    wire_rbuf_free(&s->rb);
    free(s->pend);
    s->pend = NULL;
    s->pend_len = s->pend_off = 0;
}

int link_connect(struct agent_link *s, char *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(agent_conf.sock);
    socklen_t len;
    double deadline = mp_now() + IO_TIMEOUT_MS / 1000.0;
    int fd;

    if (agent_conf.fd >= 0) {
        /* memprofd made this socket pair in our process when it injected us (it works
         * across network namespaces, where the abstract socket is not reachable);
         * it is ours from now on, used once */
        s->fd = agent_conf.fd;
        agent_conf.fd = -1;
        atomic_store(&agent_sock_fd, s->fd);
        return 0;
    }
    memcpy(sa.sun_path, agent_conf.sock, n); /* fits: checked by conf_set */
    if (agent_conf.sock[0] == '@') {
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
    atomic_store(&agent_sock_fd, fd);
    while (connect(fd, (struct sockaddr *)&sa, len) < 0) {
        struct timespec ts = {0, AGENT_POLL_NS};
        if (errno == EINTR) continue;
        if (errno == EINPROGRESS) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (poll(&p, 1, IO_TIMEOUT_MS) <= 0 ||
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
                if (soerr) errno = soerr;
                mp_errno(err, "connect to memprofd at %s", agent_conf.sock);
                return -1;
            }
            break;
        }
        /* a full listen backlog gives EAGAIN on a unix socket: retry */
        if (errno != EAGAIN || mp_now() > deadline) {
            mp_errno(err, "connect to memprofd at %s", agent_conf.sock);
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
int link_hello(struct agent_link *s, int want_reply, char *err)
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
    ai.dl_handle = agent_conf.handle;
    ai.exec_ms = (double)agent_conf.busy_us / 1e3;
    ai.native_note = (char *)agent_native_note();
    hello.protocol = MEMPROF_PROTOCOL;
    hello.role = MEMPROF__HELLO__ROLE__AGENT;
    hello.token = agent_conf.token;
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
    if (eventfd_read(agent_wake_fd, &v) < 0 || !atomic_exchange(&agent_final_asked, 0)) return;
    if (pend_flush(s, err) == 0) {
        agent_tick(s, 1);
        if (pend_flush(s, err) < 0) agent_log("final report: %s", err);
        else agent_log("final report sent");
    }
    atomic_store(&agent_final_done, 1);
}

/* Serve requests until detach, an error, or the daemon goes away. */
void link_loop(struct agent_link *s)
{
    char err[MP_ERRLEN];
    double last_tick = mp_now(), next_tick;
    atomic_store(&agent_conn_ready, 1);
    for (;;) {
        struct pollfd pfd[2] = {{.fd = s->fd, .events = POLLIN}, {.fd = agent_wake_fd, .events = POLLIN}};
        struct pollfd *p = &pfd[0];
        int ms, r;
        Envelope *env;
        /* from the last tick: the daemon's TrackingConfig (on_tracking) may change the interval */
        next_tick = last_tick + agent_conf.interval_ms / 1000.0;
        ms = (int)((next_tick - mp_now()) * 1000) + 1;
        if (ms < 0) ms = 0;
        r = poll(pfd, agent_wake_fd >= 0 ? 2 : 1, ms);
        if (r < 0 && errno != EINTR) {
            agent_log("poll: %s", strerror(errno));
            return;
        }
        if (r > 0 && agent_wake_fd >= 0 && (pfd[1].revents & POLLIN)) final_flush(s);
        if (r > 0 && (p->revents & POLLNVAL)) {
            /* someone in the target closed our descriptor: it is not ours anymore */
            agent_log("connection descriptor %d closed under us", s->fd);
            atomic_store(&agent_sock_fd, -1);
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
        if (mp_now() >= last_tick + agent_conf.interval_ms / 1000.0) {
            agent_tick(s, 0);
            last_tick = mp_now();
        }
    }
}
