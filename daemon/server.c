/* server.c -- memprofd's single-threaded epoll loop: a private client socket, an
 * abstract socket for agents, signals through signalfd, and timers per session. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "attach.h"
#include "session.h"
#include "util.h"

char server_agent_sock[108];
const char *server_agent_lib;

static struct conn *conns;
static uint64_t next_conn_id = 1;
static int epfd = -1;
static int stop_requested;

enum { TAG_CLIENT_LISTEN = 1, TAG_AGENT_LISTEN = 2, TAG_SIGNAL = 3 };

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

void server_request_stop(void) { stop_requested = 1; }

struct conn *conn_by_id(uint64_t id)
{
    for (struct conn *c = conns; c; c = c->next)
        if (c->id == id && !c->closing) return c;
    return NULL;
}

void conn_close(struct conn *c)
{
    if (c->closing) return;
    c->closing = 1;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->kind == CONN_AGENT) attach_agent_gone(c);
    attach_client_gone(c);
}

void conn_send(struct conn *c, const Envelope *env)
{
    char err[MP_ERRLEN];
    if (!c || c->closing) return;
    if (wire_send(c->fd, env, 1000, err) < 0) {
        server_log("dropping connection %llu (pid %d): %s", (unsigned long long)c->id, (int)c->peer_pid, err);
        conn_close(c);
    }
}

void conn_send_error(struct conn *c, const char *msg)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__ErrorReply e = MEMPROF__ERROR_REPLY__INIT;
    e.message = (char *)msg;
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
            free(c);
        } else {
            pp = &c->next;
        }
    }
}

/* The socket directory must be ours and private; create it if missing. */
static int prepare_dir(const char *socket_path, char *dir, char *err)
{
    struct stat st;
    char *slash;
    snprintf(dir, PATH_MAX, "%s", socket_path);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        mp_err(err, "socket path %s: must be an absolute path inside a directory", socket_path);
        return -1;
    }
    *slash = 0;
    if (mp_mkdirs(dir, 0700) < 0) {
        mp_errno(err, "cannot create socket directory %s", dir);
        return -1;
    }
    if (lstat(dir, &st) < 0) {
        mp_errno(err, "socket directory %s", dir);
        return -1;
    }
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid()) {
        mp_err(err, "socket directory %s is not a directory owned by uid %u; refusing to use it", dir,
               (unsigned)geteuid());
        return -1;
    }
    if ((st.st_mode & 077) != 0) {
        mp_err(err, "socket directory %s has mode %03o, must be private (chmod 700 %s)", dir,
               (unsigned)(st.st_mode & 0777), dir);
        return -1;
    }
    return 0;
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

/* A new connection on fd (closed on failure); the kind it may take is decided by the
 * socket it came in on. Its peer is who the kernel says (SO_PEERCRED). */
static struct conn *add_conn(int fd, enum conn_kind expect)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    struct conn *c;
    struct epoll_event ev = {.events = EPOLLIN};
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
        close(fd);
        return NULL;
    }
    /* Clients must be us or root; the 0700 directory already ensures it. */
    if (expect == CONN_CLIENT && cred.uid != geteuid() && cred.uid != 0) {
        close(fd);
        return NULL;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->id = next_conn_id++;
    c->fd = fd;
    c->kind = CONN_NEW;
    c->peer_pid = cred.pid;
    c->peer_uid = cred.uid;
    c->next = conns;
    conns = c;
    c->closing = 0;
    ev.data.u64 = c->id << 8 | (expect == CONN_AGENT ? 1 : 0);
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return c;
}

static void accept_conns(int lfd, enum conn_kind expect)
{
    int fd;
    while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) add_conn(fd, expect);
}

uint64_t server_adopt_agent(int fd)
{
    struct conn *c = add_conn(fd, CONN_AGENT);
    return c ? c->id : 0;
}

static void hello_reply(struct conn *c, const char *error)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__HelloReply r = MEMPROF__HELLO_REPLY__INIT;
    r.protocol = MEMPROF_PROTOCOL;
    r.error = (char *)(error ? error : "");
    r.daemon_pid = getpid();
    env.msg_case = MEMPROF__ENVELOPE__MSG_HELLO_REPLY;
    env.hello_reply = &r;
    conn_send(c, &env);
    if (error) conn_close(c);
}

static void handle_hello(struct conn *c, const Memprof__Hello *h, int from_agent_socket)
{
    char err[MP_ERRLEN];
    if (h->protocol != MEMPROF_PROTOCOL) {
        snprintf(err, sizeof err, "protocol mismatch: peer speaks %u, memprofd %d speaks %u (use matching memprof versions)",
                 h->protocol, (int)getpid(), MEMPROF_PROTOCOL);
        hello_reply(c, err);
        return;
    }
    if (h->role == MEMPROF__HELLO__ROLE__AGENT) {
        if (!from_agent_socket || attach_agent_hello(c, h, err) < 0) {
            server_log("refused agent connection from pid %d: %s", (int)c->peer_pid,
                       from_agent_socket ? err : "agents connect on the agent socket");
            hello_reply(c, from_agent_socket ? err : "wrong socket");
            return;
        }
        c->kind = CONN_AGENT;
        hello_reply(c, NULL);
        attach_agent_ready(c);
        return;
    }
    if (from_agent_socket) {
        hello_reply(c, "clients connect on the daemon's socket");
        return;
    }
    c->kind = CONN_CLIENT;
    hello_reply(c, NULL);
}

static void handle_message(struct conn *c, Envelope *env, int from_agent_socket)
{
    if (c->kind == CONN_NEW) {
        if (env->msg_case != MEMPROF__ENVELOPE__MSG_HELLO) {
            hello_reply(c, "expected a hello first");
            return;
        }
        handle_hello(c, env->hello, from_agent_socket);
        return;
    }
    if (c->kind == CONN_AGENT) {
        attach_agent_message(c, env);
        return;
    }
    switch (env->msg_case) {
    case MEMPROF__ENVELOPE__MSG_STOP: {
        Envelope r = MEMPROF__ENVELOPE__INIT;
        Memprof__StopReply sr = MEMPROF__STOP_REPLY__INIT;
        r.msg_case = MEMPROF__ENVELOPE__MSG_STOP_REPLY;
        r.stop_reply = &sr;
        server_log("stop requested by pid %d", (int)c->peer_pid);
        conn_send(c, &r);
        stop_requested = 1;
        break;
    }
    default:
        attach_client_message(c, env);
    }
}

static void conn_readable(struct conn *c, int from_agent_socket)
{
    char err[MP_ERRLEN] = "";
    ssize_t r = wire_rbuf_fill(&c->rb, c->fd, err);
    Envelope *env;
    int t;
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
        if (r < 0) server_log("connection from pid %d: %s", (int)c->peer_pid, err);
        conn_close(c);
        return;
    }
    while (!c->closing && (t = wire_take(&c->rb, &env, err)) != 0) {
        if (t < 0) {
            server_log("connection from pid %d sent a bad message: %s", (int)c->peer_pid, err);
            if (c->kind != CONN_AGENT) conn_send_error(c, err);
            conn_close(c);
            return;
        }
        handle_message(c, env, from_agent_socket);
        wire_free(env);
    }
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

static int take_lock(const char *dir, char *err)
{
    char path[PATH_MAX];
    int fd;
    snprintf(path, sizeof path, "%s/memprofd.lock", dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        mp_errno(err, "cannot open %s", path);
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
    int lock_fd, cfd, afd, sfd;
    struct epoll_event ev = {.events = EPOLLIN};
    double stop_deadline = 0;

    if (prepare_dir(socket_path, dir, err) < 0) return -1;
    if ((lock_fd = take_lock(dir, err)) < 0) return -1;
    if ((sfd = setup_signals(err)) < 0) return -1;
    if ((cfd = listen_clients(socket_path, err)) < 0) return -1;
    if ((afd = listen_agents(err)) < 0) return -1;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    ev.data.u64 = TAG_CLIENT_LISTEN;
    epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev);
    ev.data.u64 = TAG_AGENT_LISTEN;
    epoll_ctl(epfd, EPOLL_CTL_ADD, afd, &ev);
    ev.data.u64 = TAG_SIGNAL;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev);
    server_log("listening on %s (agents on @%s), agent library %s", socket_path, server_agent_sock,
               server_agent_lib);

    for (;;) {
        struct epoll_event evs[32];
        int n = epoll_wait(epfd, evs, 32, 100);
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == TAG_CLIENT_LISTEN) {
                accept_conns(cfd, CONN_CLIENT);
            } else if (tag == TAG_AGENT_LISTEN) {
                accept_conns(afd, CONN_AGENT);
            } else if (tag == TAG_SIGNAL) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) == sizeof si) {
                    if (si.ssi_signo == SIGCHLD) continue;
                    server_log("signal %d: stopping", (int)si.ssi_signo);
                    stop_requested = 1;
                }
            } else {
                struct conn *c = conn_by_id(tag >> 8);
                if (c) conn_readable(c, (int)(tag & 1));
            }
        }
        attach_tick();
        reap_closed();
        if (stop_requested) {
            if (!stop_deadline) {
                stop_deadline = mp_now() + 3.0;
                close(cfd); /* no new clients */
                cfd = -1;
                unlink(socket_path);
                attach_detach_all();
            }
            if (!attach_busy() || mp_now() > stop_deadline) break;
        }
    }
    server_log("stopped");
    for (struct conn *c = conns; c; c = c->next) conn_close(c);
    reap_closed();
    close(afd);
    close(sfd);
    close(epfd);
    close(lock_fd);
    return 0;
}
