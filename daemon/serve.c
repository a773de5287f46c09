/* serve.c -- memprofd serve: the wiring. The transport (conn.c on loop.c) gets its callbacks here: messages
 * to the dispatch table, closed connections to hello.c and attach.c, deadlines and the stop to attach.c; and
 * the daemon's own setup around it: its socket directory and lock, signals, the HTTP endpoint, the watch. */
#include "daemon/serve.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "common/util.h"
#include "common/version.h"
#include "daemon/attach.h"
#include "daemon/conn.h"
#include "daemon/dispatch.h"
#include "daemon/hello.h"
#include "daemon/http.h"
#include "daemon/logging.h"
#include "daemon/loop.h"
#include "daemon/session.h"
#include "daemon/watch.h"

/* A closed connection: a stranger leaves its list; an agent's session and a client's requests hear of it. */
static void closed(struct conn *c)
{
    hello_forget(c);
    if (c->kind == CONN_AGENT) attach_agent_gone(c);
    attach_client_gone(c);
}

/* A stop: the watch attaches nothing more, every session is detached. */
static void stopping(void)
{
    watch_stop();
    attach_detach_all();
}

static const struct conn_callbacks wiring = {
    .message = dispatch,
    .closed = closed,
    .tick = attach_tick,
    .stopping = stopping,
    .busy = attach_busy,
    .admit = hello_admit,
    .accepted = hello_accepted,
    .make_room = hello_make_room,
};

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

static void signal_event(int fd, int mask, void *data)
{
    struct signalfd_siginfo si;
    (void)mask;
    (void)data;
    while (read(fd, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGCHLD) continue;
        server_log("signal %d: stopping", (int)si.ssi_signo);
        conn_request_stop();
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

int serve_run(const char *socket_path, char *err)
{
    char dir[PATH_MAX];
    int lock_fd, sfd, dir_fd;

    if ((dir_fd = prepare_dir(socket_path, dir, err)) < 0) return -1;
    lock_fd = take_lock(dir_fd, dir, err);
    close(dir_fd);
    if (lock_fd < 0) return -1;
    if ((sfd = setup_signals(err)) < 0) return -1;
    conn_set_callbacks(&wiring);
    if (loop_init(err) < 0 || conn_listen(socket_path, err) < 0 ||
        loop_add_fd(sfd, LOOP_READ, signal_event, NULL, err) < 0 || http_start(err) < 0)
        return -1;
    server_log("memprofd " MEMPROF_VERSION " listening on %s (agents on @%s), agent library %s, %ld file descriptors",
               socket_path, conn_agent_sock, session_agent_lib, conn_fd_limit());
    if (watch_start(err) < 0) return -1;
    conn_run();
    server_log("stopped");
    conn_shutdown();
    http_stop();
    loop_free();
    watch_free();
    close(sfd);
    close(lock_fd);
    return 0;
}
