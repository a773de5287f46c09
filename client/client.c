/* client.c -- connecting to memprofd (starting it when needed) and request/reply calls. */
#include "client/client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/exitcodes.h"
#include "common/util.h"
#include "probe/procfs.h"

const char *client_socket_opt;

/* The directory part of a socket path (no trailing slash), or -1 with err when there is none. */
static int socket_dir(const char *path, char *dir, size_t len, char *err)
{
    char *slash;
    snprintf(dir, len, "%s", path);
    slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        mp_err(err, "socket path %s: must be an absolute path inside a directory", path);
        return -1;
    }
    *slash = 0;
    return 0;
}

/* Who listens at the other end must be us or root (SO_PEERCRED: the listener's credentials when it called listen),
 * checked before a byte is sent: anyone else could name a library for memprof run to preload. */
static int check_peer(int fd, const char *path, char *err)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    char who[160];
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
        mp_errno(err, "cannot tell who listens on %s", path);
        return -1;
    }
    if (cr.uid != geteuid() && cr.uid != 0) {
        mp_err(err, "the process listening on %s (pid %d) runs as %s, not as you or root: refusing to talk to it "
                    "(use a socket directory of your own: --socket, MEMPROF_SOCKET or XDG_RUNTIME_DIR)",
               path, (int)cr.pid, mp_user_name(cr.uid, who, sizeof who));
        return -1;
    }
    return 0;
}

/* Connect to path once its directory has passed the client's checks (mp_open_socket_dir) and check who answers.
 * -1 with errno ENOENT or ECONNREFUSED when no daemon is there. */
static int connect_path(const char *path, char *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char dir[PATH_MAX];
    int fd, dfd;
    if (strlen(path) >= sizeof sa.sun_path) {
        mp_err(err, "socket path %s is too long", path);
        return -1;
    }
    if (socket_dir(path, dir, sizeof dir, err) < 0) return -1;
    if ((dfd = mp_open_socket_dir(dir, 0, 0, err)) < 0) return -1; /* ENOENT: memprofd is not running */
    close(dfd);
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        mp_errno(err, "socket");
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        mp_errno(err, "cannot connect to memprofd at %s", path);
        close(fd);
        return -1;
    }
    if (check_peer(fd, path, err) < 0) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
}

/* memprofd next to this program, else on PATH. */
static void daemon_binary(char *out, size_t outlen)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        char *slash;
        self[n] = 0;
        slash = strrchr(self, '/');
        if (slash && strcmp(slash + 1, "memprofd") == 0) {
            snprintf(out, outlen, "%s", self);
            return;
        }
        if (slash) {
            *slash = 0;
            snprintf(out, outlen, "%s/memprofd", self);
            if (access(out, X_OK) == 0) return;
        }
    }
    snprintf(out, outlen, "memprofd");
}

/* Whether the daemon spawn_daemon orphans may be left to pid 1 of this pid namespace, which adopts it. Yes when pid 1
 * reaps the children it adopts (it catches or ignores SIGCHLD, /proc/1/status: systemd, init, a shell, tini, pause
 * do), or when it is of our own container (same mount namespace: the zombie ends with it). Not when it is another
 * container's process that does not reap, a Python that is pid 1 with a debug container sharing its namespace
 * (`kubectl debug --target`, `podman run --pid=container:app`): the daemon would end a zombie in the app, and the
 * debug container's cgroup could not be removed. 0 with err then. */
static int init_reaps(char *err)
{
    char status[8192], cmd[128];
    const char *cgt, *ign;
    unsigned long long sigchld = 1ULL << (SIGCHLD - 1);
    struct stat ours, its;
    /* no /proc, or no such lines: nothing to go by */
    if (getpid() == 1 || procfs_status(1, 0, status, sizeof status) < 0 || !(cgt = procfs_field(status, "SigCgt")) ||
        !(ign = procfs_field(status, "SigIgn")) || (strtoull(cgt, NULL, 16) | strtoull(ign, NULL, 16)) & sigchld)
        return 1;
    /* pid 1's namespace unreadable (another uid's without CAP_SYS_PTRACE; some VMs' init, even to root): nothing
     * to go by, the daemon is started */
    if (stat("/proc/self/ns/mnt", &ours) < 0 || stat("/proc/1/ns/mnt", &its) < 0 ||
        (ours.st_ino == its.st_ino && ours.st_dev == its.st_dev))
        return 1;
    if (mp_proc_cmdline(1, cmd, sizeof cmd) < 0) cmd[0] = 0;
    mp_err(err, "memprofd is not running, and one started from here would be adopted by pid 1 (%s), which does not "
                "reap children: start memprofd serve as this container's command (the memprof image's default) "
                "and run memprof in it (podman exec, kubectl exec)", cmd[0] ? cmd : "?");
    return 0;
}

/* Start `memprofd serve --socket path` in the background, its output appended to memprofd.log beside the socket.
 * The directory is checked first as the daemon will check it (created 0700 if missing), so that the user reads
 * why here rather than in the log, and the log is opened in it without following a symlink. Returns the log's fd
 * and in *from where this daemon's lines start (for daemon_failure), or -1 with err. */
static int spawn_daemon(const char *path, off_t *from, char *err)
{
    char bin[PATH_MAX], dir[PATH_MAX];
    struct stat st;
    pid_t child;
    int status, dfd, log;
    if (!init_reaps(err)) return -1;
    daemon_binary(bin, sizeof bin);
    if (socket_dir(path, dir, sizeof dir, err) < 0 || (dfd = mp_open_socket_dir(dir, 1, 1, err)) < 0) return -1;
    log = openat(dfd, "memprofd.log", O_RDWR | O_CREAT | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    close(dfd);
    if (log < 0 || fstat(log, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid()) {
        if (log < 0) mp_errno(err, "cannot open %s/memprofd.log", dir);
        else mp_err(err, "%s/memprofd.log is not a file of yours: refusing to log to it (remove it)", dir);
        if (log >= 0) close(log);
        return -1;
    }
    *from = lseek(log, 0, SEEK_END); /* the daemon's writes move the offset we share: keep this one */
    child = fork();
    if (child < 0) {
        mp_errno(err, "fork");
        close(log);
        return -1;
    }
    if (child == 0) {
        /* Double fork: the daemon is reparented and never our zombie. */
        int fd;
        setsid();
        if (fork() != 0) _exit(0);
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, 0);
        fcntl(log, F_SETFL, O_APPEND);
        dup2(log, 1);
        dup2(log, 2);
        for (int i = 3; i < 1024; i++) close(i);
        execlp(bin, "memprofd", "serve", "--socket", path, (char *)NULL);
        fprintf(stderr, "memprofd: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    return log;
}

/* A started daemon's fatal error: the first "memprofd: ..." line (main.c's fail(); its log lines start with the
 * date) it wrote to the log since offset from. 0 with err set when there is one. */
static int daemon_failure(int log, off_t from, char *err)
{
    char buf[4096], *line, *save;
    ssize_t n = pread(log, buf, sizeof buf - 1, from);
    if (n <= 0) return -1;
    buf[n] = 0;
    for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        /* a daemon started at the same moment by another client won the race: ours gives way, theirs answers */
        if (strncmp(line, "memprofd: ", 10) || strstr(line, "another memprofd is already serving")) continue;
        mp_err(err, "could not start memprofd: %s", line + 10);
        return 0;
    }
    return -1;
}

static int handshake(int fd, char *err)
{
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply;
    Memprof__Hello h = MEMPROF__HELLO__INIT;
    h.protocol = MEMPROF_PROTOCOL;
    h.role = MEMPROF__HELLO__ROLE__CLIENT;
    env.msg_case = MEMPROF__ENVELOPE__MSG_HELLO;
    env.hello = &h;
    if (wire_send(fd, &env, 5000, err) < 0 || wire_recv(fd, &reply, 5000, err) < 0) return -1;
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_HELLO_REPLY) {
        mp_err(err, "memprofd answered the hello with %s", wire_name(reply));
        wire_free(reply);
        return -1;
    }
    if (reply->hello_reply->error && *reply->hello_reply->error) {
        mp_err(err, "memprofd refused the connection: %s", reply->hello_reply->error);
        wire_free(reply);
        return -1;
    }
    if (reply->hello_reply->protocol != MEMPROF_PROTOCOL) {
        mp_err(err, "memprofd speaks protocol %u, this program %u: restart memprofd from the same build (memprofd stop)",
               reply->hello_reply->protocol, MEMPROF_PROTOCOL);
        wire_free(reply);
        return -1;
    }
    wire_free(reply);
    return 0;
}

int client_connect(const char *socket, int spawn, char *err)
{
    char path[PATH_MAX];
    int fd;
    if (socket) {
        snprintf(path, sizeof path, "%s", socket);
    } else if (mp_default_socket(path, sizeof path) < 0) {
        mp_err(err, "cannot work out the daemon's socket path");
        return -1;
    }
    fd = connect_path(path, err);
    if (fd < 0 && spawn && (errno == ENOENT || errno == ECONNREFUSED)) {
        double deadline = mp_now() + 5.0;
        off_t from = 0;
        int log = spawn_daemon(path, &from, err);
        if (log < 0) return -1;
        while ((fd = connect_path(path, err)) < 0 && (errno == ENOENT || errno == ECONNREFUSED) && mp_now() < deadline) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            if (daemon_failure(log, from, err) == 0) break;
            nanosleep(&ts, NULL);
        }
        if (fd < 0 && (errno == ENOENT || errno == ECONNREFUSED) && daemon_failure(log, from, err) < 0) {
            char dir[PATH_MAX];
            socket_dir(path, dir, sizeof dir, err);
            mp_err(err, "started memprofd but it is not answering on %s (see %s/memprofd.log)", path, dir);
        }
        close(log);
        if (fd < 0) return -1;
    } else if (fd < 0 && (errno == ENOENT || errno == ECONNREFUSED)) {
        mp_err(err, "memprofd is not running (socket %s); start it with: memprofd serve, or attach with: memprofd attach --pid PID",
               path);
        return -1;
    }
    if (fd < 0) return -1;
    if (handshake(fd, err) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int client_call(int fd, const Envelope *req, Envelope **reply, int timeout_ms, char *err)
{
    client_error_set(MEMPROF__ERROR_REPLY__CODE__UNKNOWN);
    if (wire_send(fd, req, 5000, err) < 0) return -1;
    if (wire_recv(fd, reply, timeout_ms, err) < 0) {
        if (strcmp(err, "timed out") == 0) mp_err(err, "memprofd did not answer within %d s", timeout_ms / 1000);
        return -1;
    }
    if ((*reply)->msg_case == MEMPROF__ENVELOPE__MSG_ERROR) {
        mp_err(err, "%s", (*reply)->error->message);
        client_error_set((*reply)->error->code);
        wire_free(*reply);
        *reply = NULL;
        return -1;
    }
    return 0;
}

int client_agent_call(int fd, int pid, Memprof__AgentRequest *req, Envelope **env, Memprof__AgentReply **reply,
                      int timeout_ms, char *err)
{
    Envelope e = MEMPROF__ENVELOPE__INIT;
    Memprof__AgentCall call = MEMPROF__AGENT_CALL__INIT;
    call.pid = pid;
    call.request = req;
    e.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_CALL;
    e.agent_call = &call;
    *env = NULL;
    *reply = NULL;
    if (client_call(fd, &e, env, timeout_ms, err) < 0) return -1;
    if ((*env)->msg_case != MEMPROF__ENVELOPE__MSG_AGENT_REPLY) {
        mp_err(err, "memprofd answered with %s", wire_name(*env));
        wire_free(*env);
        *env = NULL;
        return -1;
    }
    *reply = (*env)->agent_reply;
    if (client_reply_error((*reply)->error, (*reply)->code, err) < 0) {
        wire_free(*env);
        *env = NULL;
        *reply = NULL;
        return -1;
    }
    return 0;
}

/* Why st (of path, a file when !dir) could be replaced by someone else, or NULL: owned by root or us, and writable by
 * no one else -- a directory may be, with the sticky bit (/tmp): others cannot rename or remove what is ours there. */
static const char *replaceable(const struct stat *st, int dir)
{
    if (dir ? !S_ISDIR(st->st_mode) : !S_ISREG(st->st_mode)) return dir ? "is not a directory" : "is not a regular file";
    if (st->st_uid != 0 && st->st_uid != geteuid()) return "is not owned by root or you";
    if ((st->st_mode & 022) && !(dir && (st->st_mode & S_ISVTX))) return "is writable by others";
    return NULL;
}

int client_check_agent(const char *lib, char *real, size_t reallen, char *err)
{
    char buf[PATH_MAX], who[160], *slash;
    struct stat st;
    const char *why;
    if (!lib || lib[0] != '/') {
        mp_err(err, "memprofd named the agent library \"%s\", not an absolute path: refusing to load it", lib ? lib : "");
        return -1;
    }
    if (!realpath(lib, buf)) {
        mp_errno(err, "memprofd named the agent library %s", lib);
        return -1;
    }
    snprintf(real, reallen, "%s", buf);
    /* the file, then each directory up to / (after realpath: no symlink left to follow) */
    for (int dir = 0;; dir = 1) {
        const char *at = buf[0] ? buf : "/";
        if (lstat(at, &st) < 0) {
            mp_errno(err, "agent library %s: %s", real, at);
            return -1;
        }
        if ((why = replaceable(&st, dir))) {
            mp_err(err, "agent library %s: %s %s (owner %s, mode %03o), so it may not be the installed agent: refusing to load "
                        "it (install memprof as root, or as yourself with no group/other write permission)",
                   real, at, why, mp_user_name(st.st_uid, who, sizeof who), (unsigned)(st.st_mode & 07777));
            return -1;
        }
        if (!buf[0]) return 0;
        slash = strrchr(buf, '/');
        *slash = 0;
    }
}
