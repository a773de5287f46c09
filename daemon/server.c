/* server.c -- memprofd's connections on the event loop (loop.c): a private client socket, an abstract socket
 * for agents, signals through signalfd; per-connection output queues so that no peer can block the daemon. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "attach.h"
#include "dispatch.h"
#include "http.h"
#include "loop.h"
#include "session.h"
#include "util.h"
#include "version.h"

char server_agent_sock[108];
const char *server_agent_lib;

/* A connection's id is its fd in the low bits and a sequence number above them: O(1) lookups, and an id
 * of a closed connection never names the next one on the same fd. */
#define CONN_FD_BITS 24
/* Replies a peer has not read yet. Past this it is dropped, never waited for (4 maximal messages). */
#define CONN_OUT_MAX (4 * (size_t)(WIRE_MAX_MSG + WIRE_HDR))

static struct conn *conns;     /* all, for shutdown and reaping */
static struct conn **conn_fd;  /* by fd */
static int nconn_fd;
static uint64_t next_conn_seq = 1;
static int stop_requested;
static double stop_deadline;
static int client_lfd = -1;
static int agent_lfd = -1;
static const char *client_path;

/* Bounded before trust. Until its hello a connection is a stranger (the agent socket's name is readable by
 * every local user in /proc/net/unix): it may buffer one frame of HELLO_MAX bytes, must say hello within
 * HELLO_DEADLINE_S, and each listening socket keeps at most STRANGERS_MAX of them. A new stranger past
 * that evicts the oldest: a real peer says hello at once, so the oldest are those that keep quiet, and
 * turning new ones away instead would let a few idle connections lock every agent out. */
#define HELLO_MAX (64u << 10) /* a hello's frame: an agent's carries its command line (up to 32 KiB) */
#define HELLO_DEADLINE_S 5.0
#define STRANGERS_MAX 64
/* File descriptors kept for the daemon's clients and its own work (injection, /proc, HTTP): an agent
 * stranger accepted into them evicts the oldest agent stranger, or is turned away. */
#define FD_RESERVE 64
#define ACCEPT_BURST 64 /* accepts per turn of the loop, so that a flood cannot keep it from the rest */
#define REFUSALS_PER_S 1

struct strangers {
    struct conn *oldest, *newest;
    unsigned n;
};
static struct strangers client_strangers, agent_strangers;
static long long strangers_timer;
static long nofile;    /* RLIMIT_NOFILE's soft limit, as raised at start */
static int spare_fd = -1; /* given up to accept and close a connection when we are out of fds */

void server_log(const char *fmt, ...)
{
    char ts[32];
    time_t now = time(NULL);
    va_list ap;
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", localtime(&now));
    fprintf(stderr, "%s memprofd[%d]: ", ts, (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

/* Lines about peers turned away before their hello: at most REFUSALS_PER_S a second; the rest are counted
 * and told in one line when the second is over. */
static struct {
    double quiet_until;
    unsigned suppressed;
    long long timer;
} refusals;

static long refusals_flush(long long id, void *data)
{
    (void)id;
    (void)data;
    refusals.timer = 0;
    if (refusals.suppressed) {
        server_log("%u more connections refused in the last second (not logged one by one)", refusals.suppressed);
        refusals.suppressed = 0;
        refusals.quiet_until = mp_now() + 1.0 / REFUSALS_PER_S;
    }
    return LOOP_NOMORE;
}

static void log_refusal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_refusal(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    double now = mp_now();
    if (now < refusals.quiet_until) {
        refusals.suppressed++;
        if (!refusals.timer)
            refusals.timer = loop_add_timer((long)((refusals.quiet_until - now) * 1000) + 1, refusals_flush, NULL);
        return;
    }
    refusals.quiet_until = now + 1.0 / REFUSALS_PER_S;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    server_log("%s", line);
}

void server_request_stop(void) { stop_requested = 1; }

void server_conn_counts(unsigned *clients, unsigned *agents)
{
    *clients = *agents = 0;
    for (struct conn *c = conns; c; c = c->next) {
        if (c->closing) continue;
        *clients += c->kind == CONN_CLIENT;
        *agents += c->kind == CONN_AGENT;
    }
}

struct conn *conn_by_id(uint64_t id)
{
    int fd = (int)(id & ((1u << CONN_FD_BITS) - 1));
    struct conn *c = fd < nconn_fd ? conn_fd[fd] : NULL;
    return c && c->id == id && !c->closing ? c : NULL;
}

int conn_hung_up(uint64_t id)
{
    struct conn *c = conn_by_id(id);
    char b;
    ssize_t r;
    if (!c) return 1;
    r = recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    /* EOF, or a reset: a peer that closed with our data unread (AF_UNIX tells ECONNRESET then) */
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void stranger_remove(struct conn *c)
{
    struct strangers *l = c->strangers;
    if (!l) return;
    if (c->sprev) c->sprev->snext = c->snext; else l->oldest = c->snext;
    if (c->snext) c->snext->sprev = c->sprev; else l->newest = c->sprev;
    c->snext = c->sprev = NULL;
    c->strangers = NULL;
    l->n--;
}

void conn_close(struct conn *c)
{
    if (c->closing) return;
    stranger_remove(c);
    c->closing = 1;
    loop_del_fd(c->fd, LOOP_READ | LOOP_WRITE);
    conn_fd[c->fd] = NULL;
    close(c->fd);
    c->fd = -1;
    if (c->kind == CONN_AGENT) attach_agent_gone(c);
    attach_client_gone(c);
}

static void conn_drop(struct conn *c, const char *why)
{
    if (c->kind == CONN_NEW)
        log_refusal("dropping connection %llu (pid %d, uid %d): %s", (unsigned long long)c->id, (int)c->peer_pid,
                    (int)c->peer_uid, why);
    else
        server_log("dropping connection %llu (pid %d): %s", (unsigned long long)c->id, (int)c->peer_pid, why);
    conn_close(c);
}

/* Closes the strangers whose time for a hello is over; runs again at the next one's deadline. */
static long strangers_tick(long long id, void *data)
{
    struct strangers *lists[] = {&client_strangers, &agent_strangers};
    double now = mp_now(), next = 0;
    char why[64];
    (void)data;
    snprintf(why, sizeof why, "no hello within %.0f s", HELLO_DEADLINE_S);
    for (int i = 0; i < 2; i++) {
        while (lists[i]->oldest && lists[i]->oldest->hello_by <= now) conn_drop(lists[i]->oldest, why);
        if (lists[i]->oldest && (!next || lists[i]->oldest->hello_by < next)) next = lists[i]->oldest->hello_by;
    }
    if (!next) {
        if (strangers_timer == id) strangers_timer = 0;
        return LOOP_NOMORE;
    }
    return (long)((next - now) * 1000) + 1;
}

static void stranger_add(struct conn *c, struct strangers *l)
{
    c->strangers = l;
    c->hello_by = mp_now() + HELLO_DEADLINE_S;
    c->sprev = l->newest;
    if (l->newest) l->newest->snext = c; else l->oldest = c;
    l->newest = c;
    l->n++;
    if (!strangers_timer) strangers_timer = loop_add_timer((long)(HELLO_DEADLINE_S * 1000) + 1, strangers_tick, NULL);
}

/* Makes room by closing the oldest stranger of l. 0 if there was none. */
static int evict_stranger(struct strangers *l, const char *why)
{
    if (!l->oldest) return 0;
    conn_drop(l->oldest, why);
    return 1;
}

static void conn_event(int fd, int mask, void *data);

/* Writes what the socket takes now; arms or disarms the writable event. */
static void conn_flush(struct conn *c)
{
    char err[MP_ERRLEN];
    while (c->ooff < c->olen) {
        ssize_t w = send(c->fd, c->obuf + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w <= 0) {
            mp_errno(err, "send");
            conn_drop(c, err);
            return;
        }
        c->ooff += (size_t)w;
    }
    if (c->ooff == c->olen) {
        c->ooff = c->olen = 0;
        if (c->ocap > (1u << 20)) { /* do not keep a census-sized buffer for an idle peer */
            free(c->obuf);
            c->obuf = NULL;
            c->ocap = 0;
        }
        loop_del_fd(c->fd, LOOP_WRITE);
        if (c->close_when_flushed) conn_close(c);
    } else if (loop_add_fd(c->fd, LOOP_WRITE, conn_event, c, err) < 0) {
        conn_drop(c, err);
    }
}

static int conn_queue(struct conn *c, const uint8_t *buf, size_t len)
{
    size_t pending = c->olen - c->ooff;
    if (pending + len > CONN_OUT_MAX) return -1;
    if (c->ooff && c->olen + len > c->ocap) { /* reclaim what was sent */
        memmove(c->obuf, c->obuf + c->ooff, pending);
        c->olen = pending;
        c->ooff = 0;
    }
    if (c->olen + len > c->ocap) {
        size_t ncap = c->ocap ? c->ocap : 65536;
        uint8_t *nb;
        while (ncap < c->olen + len) ncap *= 2;
        if (!(nb = realloc(c->obuf, ncap))) return -1;
        c->obuf = nb;
        c->ocap = ncap;
    }
    memcpy(c->obuf + c->olen, buf, len);
    c->olen += len;
    return 0;
}

void conn_send(struct conn *c, const Envelope *env)
{
    char err[MP_ERRLEN];
    uint8_t *buf;
    size_t len;
    if (!c || c->closing) return;
    if (wire_encode(env, &buf, &len, err) < 0) {
        server_log("connection %llu: cannot send %s: %s", (unsigned long long)c->id, wire_name(env), err);
        return;
    }
    if (conn_queue(c, buf, len) < 0) {
        snprintf(err, sizeof err, "it fell behind: %zu bytes of replies unread", c->olen - c->ooff + len);
        free(buf);
        conn_drop(c, err);
        return;
    }
    free(buf);
    conn_flush(c);
}

void conn_send_error(struct conn *c, const char *msg)
{
    conn_send_error_code(c, MEMPROF__ERROR_REPLY__CODE__UNKNOWN, msg);
}

void conn_send_error_code(struct conn *c, Memprof__ErrorReply__Code code, const char *msg)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__ErrorReply e = MEMPROF__ERROR_REPLY__INIT;
    e.message = (char *)msg;
    e.code = code;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ERROR;
    env.error = &e;
    conn_send(c, &env);
}

static void reap_closed(void)
{
    struct conn **pp = &conns;
    while (*pp) {
        struct conn *c = *pp;
        if (c->closing) {
            *pp = c->next;
            wire_rbuf_free(&c->rb);
            free(c->obuf);
            free(c);
        } else {
            pp = &c->next;
        }
    }
}

/* The socket directory must be ours and private (mp_open_socket_dir); created if missing. Returns its fd. */
static int prepare_dir(const char *socket_path, char *dir, char *err)
{
    char *slash;
    snprintf(dir, PATH_MAX, "%s", socket_path);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        mp_err(err, "socket path %s: must be an absolute path inside a directory", socket_path);
        return -1;
    }
    *slash = 0;
    return mp_open_socket_dir(dir, 1, 1, err);
}

static int listen_unix(const struct sockaddr_un *sa, socklen_t len, char *err)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        mp_errno(err, "socket");
        return -1;
    }
    if (bind(fd, (const struct sockaddr *)sa, len) < 0 || listen(fd, 64) < 0) {
        mp_errno(err, "cannot listen on %s%s", sa->sun_path[0] ? "" : "@", sa->sun_path[0] ? sa->sun_path : sa->sun_path + 1);
        close(fd);
        return -1;
    }
    return fd;
}

static int listen_clients(const char *path, char *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    mode_t old;
    int fd;
    if (strlen(path) >= sizeof sa.sun_path) {
        mp_err(err, "socket path %s is too long", path);
        return -1;
    }
    strcpy(sa.sun_path, path);
    unlink(path); /* stale: we hold the lock, so no daemon owns it */
    old = umask(0177);
    fd = listen_unix(&sa, sizeof sa, err);
    umask(old);
    if (fd >= 0) chmod(path, 0600);
    return fd;
}

static int listen_agents(char *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    unsigned char rnd[8];
    socklen_t len;
    if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd) {
        mp_errno(err, "getrandom");
        return -1;
    }
    snprintf(server_agent_sock, sizeof server_agent_sock, "memprofd-%u-%d-%02x%02x%02x%02x%02x%02x%02x%02x",
             (unsigned)geteuid(), (int)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    memcpy(sa.sun_path + 1, server_agent_sock, strlen(server_agent_sock));
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(server_agent_sock));
    return listen_unix(&sa, len, err);
}

static struct conn *conn_new(int fd, const struct ucred *cred, int from_agent_socket, struct strangers *l, char *err)
{
    struct conn *c;
    if (fd >= (1 << CONN_FD_BITS)) {
        mp_err(err, "fd %d out of range", fd);
        return NULL;
    }
    if (fd >= nconn_fd) {
        int n = nconn_fd ? nconn_fd : 64;
        struct conn **nt;
        while (n <= fd) n *= 2;
        if (!(nt = realloc(conn_fd, (size_t)n * sizeof *nt))) {
            mp_err(err, "out of memory");
            return NULL;
        }
        memset(nt + nconn_fd, 0, (size_t)(n - nconn_fd) * sizeof *nt);
        conn_fd = nt;
        nconn_fd = n;
    }
    if (!(c = calloc(1, sizeof *c))) {
        mp_err(err, "out of memory");
        return NULL;
    }
    c->id = next_conn_seq++ << CONN_FD_BITS | (uint64_t)fd;
    c->fd = fd;
    c->kind = CONN_NEW;
    c->from_agent_socket = from_agent_socket;
    c->peer_pid = cred->pid;
    c->peer_uid = cred->uid;
    c->rb.max = HELLO_MAX;
    if (loop_add_fd(fd, LOOP_READ, conn_event, c, err) < 0) {
        free(c);
        return NULL;
    }
    conn_fd[fd] = c;
    c->next = conns;
    conns = c;
    if (l) stranger_add(c, l);
    return c;
}

static void accept_conns(int lfd, int mask, void *data);

static long listen_again(long long id, void *data)
{
    char err[MP_ERRLEN];
    int lfd = data ? agent_lfd : client_lfd;
    (void)id;
    if (lfd >= 0 && loop_add_fd(lfd, LOOP_READ, accept_conns, data, err) < 0) server_log("%s", err);
    return LOOP_NOMORE;
}

/* accept4 failed with errno: make room, or stop listening for a moment. 1: try again now. */
static int accept_failed(int lfd, void *data)
{
    int fd;
    if (errno == EINTR || errno == ECONNABORTED) return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EMFILE && evict_stranger(&agent_strangers, "out of file descriptors")) return 1;
    if (errno == EMFILE && spare_fd >= 0) {
        /* nothing to evict: take the connection with the fd kept for this and close it, so that the
         * listener does not stay readable (the loop would spin on it) */
        close(spare_fd);
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) close(fd);
        spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        log_refusal("refused a connection on the %s socket: out of file descriptors (limit %ld)",
                    data ? "agent" : "client", nofile);
        return fd >= 0;
    }
    /* ENFILE, ENOBUFS, ENOMEM, no spare fd: the listener rests 100 ms rather than spin */
    log_refusal("cannot accept on the %s socket (%s): pausing it for 100 ms", data ? "agent" : "client", strerror(errno));
    loop_del_fd(lfd, LOOP_READ);
    loop_add_timer(100, listen_again, data);
    return 0;
}

/* The kind a connection may take is decided by the socket it came in on. Near the fd limit (fds are
 * numbered lowest first: fd >= nofile - FD_RESERVE means fewer than FD_RESERVE are left), an agent
 * socket's stranger costs the oldest one its place; a client makes room the same way but is never turned
 * away for it. */
static void accept_conns(int lfd, int mask, void *data)
{
    int from_agent_socket = data != NULL;
    struct strangers *l = from_agent_socket ? &agent_strangers : &client_strangers;
    (void)mask;
    for (int burst = 0; burst < ACCEPT_BURST; burst++) {
        char err[MP_ERRLEN];
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int short_of_fds;
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (fd < 0) {
            if (accept_failed(lfd, data)) continue;
            return;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
            close(fd);
            continue;
        }
        /* Clients must be us or root; the 0700 directory already ensures it. */
        if (!from_agent_socket && cred.uid != geteuid() && cred.uid != 0) {
            log_refusal("refused a client connection from pid %d: uid %d is neither %d nor root", (int)cred.pid,
                        (int)cred.uid, (int)geteuid());
            close(fd);
            continue;
        }
        short_of_fds = fd >= nofile - FD_RESERVE;
        if (short_of_fds && !evict_stranger(&agent_strangers, "file descriptors run short") && from_agent_socket) {
            log_refusal("refused an agent connection from pid %d (uid %d): file descriptors run short (limit %ld)",
                        (int)cred.pid, (int)cred.uid, nofile);
            close(fd);
            continue;
        }
        if (l->n >= STRANGERS_MAX) evict_stranger(l, "too many connections without a hello");
        if (!conn_new(fd, &cred, from_agent_socket, l, err)) {
            log_refusal("refused a connection from pid %d: %s", (int)cred.pid, err);
            close(fd);
        }
    }
}

/* An agent's end of a socket pair the injector made in the target (it came in on no socket: it is an
 * agent's by construction, and its peer is who SO_PEERCRED says). Returns its id, 0 on failure (fd closed). */
uint64_t server_adopt_agent(int fd)
{
    char err[MP_ERRLEN];
    struct ucred cred;
    socklen_t len = sizeof cred;
    struct conn *c = NULL;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || !(c = conn_new(fd, &cred, 1, NULL, err))) {
        close(fd);
        return 0;
    }
    return c->id;
}

static void hello_reply(struct conn *c, const char *error)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__HelloReply r = MEMPROF__HELLO_REPLY__INIT;
    r.protocol = MEMPROF_PROTOCOL;
    r.error = (char *)(error ? error : "");
    r.daemon_pid = getpid();
    r.daemon_version = (char *)MEMPROF_VERSION;
    env.msg_case = MEMPROF__ENVELOPE__MSG_HELLO_REPLY;
    env.hello_reply = &r;
    if (error) c->close_when_flushed = 1; /* the peer gets the reason, then EOF */
    conn_send(c, &env);
}

void server_refuse_hello(struct conn *c, const char *why) { hello_reply(c, why); }

/* Its hello was taken: no deadline any more, and frames up to WIRE_MAX_MSG. */
static void trusted(struct conn *c)
{
    stranger_remove(c);
    c->rb.max = 0;
}

void server_on_hello(struct conn *c, const Envelope *env)
{
    const Memprof__Hello *h = env->hello;
    char err[MP_ERRLEN];
    if (h->protocol != MEMPROF_PROTOCOL) {
        snprintf(err, sizeof err, "protocol mismatch: peer speaks %u, memprofd %d speaks %u (use matching memprof versions)",
                 h->protocol, (int)getpid(), MEMPROF_PROTOCOL);
        hello_reply(c, err);
        return;
    }
    if (h->role == MEMPROF__HELLO__ROLE__AGENT) {
        if (!c->from_agent_socket || attach_agent_hello(c, h, err) < 0) {
            log_refusal("refused agent connection from pid %d (uid %d): %s", (int)c->peer_pid, (int)c->peer_uid,
                        c->from_agent_socket ? err : "agents connect on the agent socket");
            hello_reply(c, c->from_agent_socket ? err : "wrong socket");
            return;
        }
        c->kind = CONN_AGENT;
        trusted(c);
        hello_reply(c, NULL);
        attach_agent_hello_done(c);
        return;
    }
    if (c->from_agent_socket) {
        hello_reply(c, "clients connect on the daemon's socket");
        return;
    }
    c->kind = CONN_CLIENT;
    trusted(c);
    hello_reply(c, NULL);
}

void server_on_stop(struct conn *c, const Envelope *env)
{
    Envelope r = MEMPROF__ENVELOPE__INIT;
    Memprof__StopReply sr = MEMPROF__STOP_REPLY__INIT;
    (void)env;
    r.msg_case = MEMPROF__ENVELOPE__MSG_STOP_REPLY;
    r.stop_reply = &sr;
    server_log("stop requested by pid %d", (int)c->peer_pid);
    conn_send(c, &r);
    server_request_stop();
}

static void conn_readable(struct conn *c)
{
    char err[MP_ERRLEN] = "";
    ssize_t r = wire_rbuf_fill(&c->rb, c->fd, err);
    Envelope *env;
    int t;
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        if (r < 0 && c->kind == CONN_NEW)
            log_refusal("connection from pid %d (uid %d) before its hello: %s", (int)c->peer_pid, (int)c->peer_uid, err);
        else if (r < 0)
            server_log("connection from pid %d: %s", (int)c->peer_pid, err);
        conn_close(c);
        return;
    }
    while (!c->closing && !c->close_when_flushed && (t = wire_take(&c->rb, &env, err)) != 0) {
        if (t < 0) {
            if (c->kind == CONN_NEW)
                log_refusal("connection from pid %d (uid %d) sent a bad message before its hello: %s", (int)c->peer_pid,
                            (int)c->peer_uid, err);
            else
                server_log("connection from pid %d sent a bad message: %s", (int)c->peer_pid, err);
            if (c->kind != CONN_AGENT) {
                c->close_when_flushed = 1;
                conn_send_error_code(c, MEMPROF__ERROR_REPLY__CODE__BAD_REQUEST, err);
            } else {
                conn_close(c);
            }
            return;
        }
        dispatch(c, env);
        wire_free(env);
    }
}

static void conn_event(int fd, int mask, void *data)
{
    struct conn *c = data;
    (void)fd;
    if ((mask & LOOP_WRITE) && !c->closing) conn_flush(c);
    if ((mask & LOOP_READ) && !c->closing) conn_readable(c);
}

static void signal_event(int fd, int mask, void *data)
{
    struct signalfd_siginfo si;
    (void)mask;
    (void)data;
    while (read(fd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGCHLD) continue;
        server_log("signal %d: stopping", (int)si.ssi_signo);
        server_request_stop();
    }
}

/* Deadlines of attaches, detaches and agent calls: a timer armed only while one is pending. */
static long long tick_timer;
static long tick(long long id, void *data)
{
    long next = attach_tick();
    (void)data;
    if (next < 0 && tick_timer == id) tick_timer = 0;
    return next < 0 ? LOOP_NOMORE : next;
}

/* Runs attach_tick at the next turn of the loop, whenever it was due before. */
void server_wake_tick(void)
{
    if (tick_timer) loop_del_timer(tick_timer);
    tick_timer = loop_add_timer(0, tick, NULL);
}

static long wake_only(long long id, void *data)
{
    (void)id;
    (void)data;
    return LOOP_NOMORE;
}

/* After every round of events: free closed connections; on stop, detach everything, then leave. */
static void before_sleep(void)
{
    reap_closed();
    if (!stop_requested) return;
    if (!stop_deadline) {
        stop_deadline = mp_now() + 3.0;
        loop_del_fd(client_lfd, LOOP_READ); /* no new clients */
        close(client_lfd);
        client_lfd = -1;
        unlink(client_path);
        attach_detach_all();
        server_wake_tick();
        loop_add_timer(3000, wake_only, NULL); /* wakes the loop at the deadline */
    }
    if (!attach_busy() || mp_now() > stop_deadline) loop_stop();
}

static int setup_signals(char *err)
{
    sigset_t set;
    int fd;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) mp_errno(err, "signalfd");
    return fd;
}

/* As many fds as we may have (soft limit to hard): a root daemon serves every process of the host. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    nofile = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << CONN_FD_BITS) ? (1L << CONN_FD_BITS) : (long)rl.rlim_cur;
    if (nofile < 2 * FD_RESERVE)
        server_log("warning: only %ld file descriptors (ulimit -n); agents will be turned away early", nofile);
}

static int take_lock(int dir_fd, const char *dir, char *err)
{
    int fd = openat(dir_fd, "memprofd.lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        mp_errno(err, "cannot open %s/memprofd.lock", dir);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        mp_err(err, "another memprofd is already serving %s", dir);
        close(fd);
        return -1;
    }
    return fd;
}

int server_run(const char *socket_path, char *err)
{
    char dir[PATH_MAX];
    int lock_fd, afd, sfd, dir_fd;

    raise_nofile();
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if ((dir_fd = prepare_dir(socket_path, dir, err)) < 0) return -1;
    lock_fd = take_lock(dir_fd, dir, err);
    close(dir_fd);
    if (lock_fd < 0) return -1;
    if ((sfd = setup_signals(err)) < 0) return -1;
    if ((client_lfd = listen_clients(socket_path, err)) < 0) return -1;
    if ((afd = agent_lfd = listen_agents(err)) < 0) return -1;
    client_path = socket_path;
    if (loop_init(err) < 0 || loop_add_fd(client_lfd, LOOP_READ, accept_conns, NULL, err) < 0 ||
        loop_add_fd(afd, LOOP_READ, accept_conns, (void *)1, err) < 0 ||
        loop_add_fd(sfd, LOOP_READ, signal_event, NULL, err) < 0 || http_start(err) < 0)
        return -1;
    server_log("memprofd " MEMPROF_VERSION " listening on %s (agents on @%s), agent library %s, %ld file descriptors",
               socket_path, server_agent_sock, server_agent_lib, nofile);
    loop_run(before_sleep);
    server_log("stopped");
    for (struct conn *c = conns; c; c = c->next) {
        if (!c->closing && c->ooff < c->olen) /* last replies (stop's) get a short chance to leave */
            wire_write_all(c->fd, c->obuf + c->ooff, c->olen - c->ooff, 200, err);
        conn_close(c);
    }
    reap_closed();
    http_stop();
    loop_free();
    free(conn_fd);
    conn_fd = NULL;
    nconn_fd = 0;
    if (client_lfd >= 0) close(client_lfd);
    close(afd);
    agent_lfd = -1;
    close(sfd);
    if (spare_fd >= 0) close(spare_fd);
    spare_fd = -1;
    close(lock_fd);
    return 0;
}
