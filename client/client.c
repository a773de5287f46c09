/* client.c -- connecting to memprofd (starting it when needed) and request/reply calls. */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "util.h"

const char *client_socket_opt;

static int connect_path(const char *path, char *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;
    if (strlen(path) >= sizeof sa.sun_path) {
        mp_err(err, "socket path %s is too long", path);
        return -1;
    }
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

static int spawn_daemon(const char *path, char *err)
{
    char bin[PATH_MAX], dir[PATH_MAX], log[PATH_MAX + 16];
    pid_t child;
    int status;
    char *slash;
    daemon_binary(bin, sizeof bin);
    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    snprintf(log, sizeof log, "%s/memprofd.log", dir);
    child = fork();
    if (child < 0) {
        mp_errno(err, "fork");
        return -1;
    }
    if (child == 0) {
        /* Double fork: the daemon is reparented and never our zombie. */
        int fd;
        setsid();
        if (fork() != 0) _exit(0);
        mp_mkdirs(dir, 0700);
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0) dup2(fd, 0);
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd < 0) fd = open("/dev/null", O_WRONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        for (int i = 3; i < 1024; i++) close(i);
        execlp(bin, "memprofd", "serve", "--socket", path, (char *)NULL);
        _exit(127);
    }
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    return 0;
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
        if (spawn_daemon(path, err) < 0) return -1;
        while ((fd = connect_path(path, err)) < 0 && mp_now() < deadline) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (fd < 0) {
            char dir[PATH_MAX], *slash;
            snprintf(dir, sizeof dir, "%s", path);
            slash = strrchr(dir, '/');
            if (slash) *slash = 0;
            mp_err(err, "started memprofd but it is not answering on %s (see %s/memprofd.log)", path, dir);
            return -1;
        }
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
