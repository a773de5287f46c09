/* conn.c -- memprofd's transport on the event loop (loop.c): a private client socket and an abstract socket
 * for agents, per-connection output queues so that no peer can block the daemon, and the work between two
 * rounds of the loop. What messages mean is the callbacks' business (conn.h); nothing here calls above it. */
#include "daemon/conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/logging.h"
#include "daemon/loop.h"

char conn_agent_sock[108];

/* A connection's id is its fd in the low bits and a sequence number above them: O(1) lookups, and an id
 * of a closed connection never names the next one on the same fd. */
#define CONN_FD_BITS 24
/* Replies a peer has not read yet. Past this it is dropped, never waited for (4 maximal messages). */
#define CONN_OUT_MAX (4 * (size_t)(WIRE_MAX_MSG + WIRE_HDR))
/* File descriptors kept for the daemon's clients and its own work (injection, /proc, HTTP): past this the
 * admit callback decides (hello.c evicts or turns away a stranger). */
#define FD_RESERVE 64
#define ACCEPT_BURST 64 /* accepts per turn of the loop, so that a flood cannot keep it from the rest */
#define STOP_GRACE_S 3.0

static struct conn_callbacks cb;
static struct conn *conns;     /* all, for shutdown and reaping */
static struct conn **conn_fd;  /* by fd */
static int nconn_fd;
static struct conn *closed_head, **closed_tail = &closed_head; /* closed callbacks to run, oldest first */
static uint64_t next_conn_seq = 1;
static int stop_requested;
static double stop_deadline;
static int client_lfd = -1;
static int agent_lfd = -1;
static const char *client_path;
static long nofile;       /* RLIMIT_NOFILE's soft limit, as raised at start */
static int spare_fd = -1; /* given up to accept and close a connection when we are out of fds */
static long long tick_timer;

void conn_set_callbacks(const struct conn_callbacks *c) { cb = *c; }

void conn_request_stop(void) { stop_requested = 1; }

long conn_fd_limit(void) { return nofile; }

void conn_counts(unsigned *clients, unsigned *agents)
{
    *clients = *agents = 0;
    for (struct conn *c = conns; c; c = c->next) {
        if (c->closing) continue;
        *clients += c->kind == CONN_CLIENT;
        *agents += c->kind == CONN_AGENT;
    }
}

int conn_peer_is_client(pid_t pid)
{
    for (struct conn *c = conns; c; c = c->next)
        if (!c->closing && c->kind != CONN_AGENT && c->peer_pid == pid) return 1;
    return 0;
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

void conn_close(struct conn *c)
{
    if (c->closing) return;
    c->closing = 1;
    loop_del_fd(c->fd, LOOP_READ | LOOP_WRITE);
    conn_fd[c->fd] = NULL;
    close(c->fd);
    c->fd = -1;
    *closed_tail = c;
    closed_tail = &c->close_next;
}

void conn_drop(struct conn *c, const char *why)
{
    if (c->kind == CONN_NEW)
        log_refusal("dropping connection %llu (pid %d, uid %d): %s", (unsigned long long)c->id, (int)c->peer_pid,
                    (int)c->peer_uid, why);
    else
        server_log("dropping connection %llu (pid %d): %s", (unsigned long long)c->id, (int)c->peer_pid, why);
    conn_close(c);
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

/* The closed callbacks of the connections closed since the last round (and of those they close), in order;
 * then their memory. */
static void finish_closed(void)
{
    struct conn **pp = &conns;
    while (closed_head) {
        struct conn *c = closed_head;
        closed_head = c->close_next;
        if (!closed_head) closed_tail = &closed_head;
        c->close_next = NULL;
        if (cb.closed) cb.closed(c);
    }
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
    unlink(path); /* stale: the caller holds the lock, so no daemon owns it */
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
    snprintf(conn_agent_sock, sizeof conn_agent_sock, "memprofd-%u-%d-%02x%02x%02x%02x%02x%02x%02x%02x",
             (unsigned)geteuid(), (int)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    memcpy(sa.sun_path + 1, conn_agent_sock, strlen(conn_agent_sock));
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(conn_agent_sock));
    return listen_unix(&sa, len, err);
}

static struct conn *conn_new(int fd, const struct ucred *cred, int from_agent_socket, int listed, char *err)
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
    if (loop_add_fd(fd, LOOP_READ, conn_event, c, err) < 0) {
        free(c);
        return NULL;
    }
    conn_fd[fd] = c;
    c->next = conns;
    conns = c;
    if (cb.accepted) cb.accepted(c, listed);
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
    if (errno == EMFILE && cb.make_room && cb.make_room("out of file descriptors")) return 1;
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
 * numbered lowest first: fd >= nofile - FD_RESERVE means fewer than FD_RESERVE are left) the admit
 * callback decides. */
static void accept_conns(int lfd, int mask, void *data)
{
    int from_agent_socket = data != NULL;
    (void)mask;
    for (int burst = 0; burst < ACCEPT_BURST; burst++) {
        char err[MP_ERRLEN];
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
        if (cb.admit && !cb.admit(from_agent_socket, fd >= nofile - FD_RESERVE, cred.pid, cred.uid)) {
            close(fd);
            continue;
        }
        if (!conn_new(fd, &cred, from_agent_socket, 1, err)) {
            log_refusal("refused a connection from pid %d: %s", (int)cred.pid, err);
            close(fd);
        }
    }
}

uint64_t conn_adopt_agent(int fd)
{
    char err[MP_ERRLEN];
    struct ucred cred;
    socklen_t len = sizeof cred;
    struct conn *c = NULL;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || !(c = conn_new(fd, &cred, 1, 0, err))) {
        close(fd);
        return 0;
    }
    return c->id;
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
        cb.message(c, env);
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

/* Deadlines (the tick callback): a timer armed only while one is pending. */
static long tick(long long id, void *data)
{
    long next = cb.tick ? cb.tick() : -1;
    (void)data;
    if (next < 0 && tick_timer == id) tick_timer = 0;
    return next < 0 ? LOOP_NOMORE : next;
}

void conn_wake_tick(void)
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

/* Between two rounds of the loop: on a stop, no new clients and the stopping callback; the closed callbacks
 * of what closed; then leave once nothing is busy or the grace is over. */
static void before_sleep(void)
{
    if (stop_requested && !stop_deadline) {
        stop_deadline = mp_now() + STOP_GRACE_S;
        loop_del_fd(client_lfd, LOOP_READ); /* no new clients */
        close(client_lfd);
        client_lfd = -1;
        unlink(client_path);
        if (cb.stopping) cb.stopping();
        conn_wake_tick();
        loop_add_timer((long)(STOP_GRACE_S * 1000), wake_only, NULL); /* wakes the loop at the deadline */
    }
    finish_closed();
    if (stop_requested && (!cb.busy || !cb.busy() || mp_now() > stop_deadline)) loop_stop();
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

int conn_listen(const char *path, char *err)
{
    raise_nofile();
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if ((client_lfd = listen_clients(path, err)) < 0) return -1;
    if ((agent_lfd = listen_agents(err)) < 0) return -1;
    client_path = path;
    if (loop_add_fd(client_lfd, LOOP_READ, accept_conns, NULL, err) < 0 ||
        loop_add_fd(agent_lfd, LOOP_READ, accept_conns, (void *)1, err) < 0)
        return -1;
    return 0;
}

void conn_run(void) { loop_run(before_sleep); }

void conn_shutdown(void)
{
    char err[MP_ERRLEN];
    for (struct conn *c = conns; c; c = c->next) {
        if (!c->closing && c->ooff < c->olen) /* last replies (stop's) get a short chance to leave */
            wire_write_all(c->fd, c->obuf + c->ooff, c->olen - c->ooff, 200, err);
        conn_close(c);
    }
    finish_closed();
    free(conn_fd);
    conn_fd = NULL;
    nconn_fd = 0;
    if (client_lfd >= 0) close(client_lfd);
    client_lfd = -1;
    if (agent_lfd >= 0) close(agent_lfd);
    agent_lfd = -1;
    if (spare_fd >= 0) close(spare_fd);
    spare_fd = -1;
}
