/* faked.c -- a fake memprofd for agent tests: accepts agent connections on one
 * socket, prints what the agent says (one "key=value ..." line per message) and
 * plays a script of requests at it.
 *
 *   faked SOCK [--conns N] [--refuse MSG] [--protocol N] [--script A,B,...]
 *   SOCK: @name (abstract) or a path. Script actions, run after each hello:
 *     census backrefs tracking empty unknown   send that AgentRequest, print the reply
 *                                              (and any allocation report before it)
 *     detach                                   send detach, print the reply, wait for EOF
 *     sleep:SECS                               wait
 *     garbage oversize                         send a malformed / oversized frame
 *     close                                    close the connection (daemon gone)
 *     exit                                     exit the process at once
 *   After the script, faked waits for the agent to close (prints "eof"). */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "proto/wire.h"

static const char *script = "detach";
static const char *refuse = "";
static unsigned protocol = MEMPROF_PROTOCOL;
static uint64_t next_id = 1;

static int listen_on(const char *name)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(name);
    socklen_t len;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (n >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, name, n);
    if (name[0] == '@') {
        sa.sun_path[0] = 0;
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    } else {
        unlink(name);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    }
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, len) < 0 || listen(fd, 8) < 0) {
        perror("faked: listen");
        return -1;
    }
    return fd;
}

static void print_hello(const Memprof__Hello *h)
{
    const Memprof__AgentInfo *a = h->agent;
    printf("hello protocol=%u role=%d token=%s", h->protocol, (int)h->role, h->token);
    if (a) {
        printf(" pid=%d version=%s hex=0x%08x exe=%s tid=%d gil_wait_ms=%.3f argc=%zu",
               a->pid, a->python_version, a->py_hexversion, a->executable, a->agent_tid,
               a->gil_wait_ms, a->n_argv);
        for (size_t i = 0; i < a->n_argv; i++) printf(" argv%zu=%s", i, a->argv[i]);
    }
    printf("\n");
    fflush(stdout);
}

static void print_reply(const Memprof__AgentReply *r)
{
    printf("reply id=%llu body=%d gil_ms=%.3f error=%s", (unsigned long long)r->id,
           (int)r->body_case, r->gil_ms, r->error[0] ? r->error : "-");
    if (r->body_case == MEMPROF__AGENT_REPLY__BODY_DETACH)
        printf(" unloaded=%d", r->detach->unloaded);
    if (r->body_case == MEMPROF__AGENT_REPLY__BODY_CENSUS)
        printf(" types=%zu objects=%llu", r->census->n_types,
               (unsigned long long)r->census->objects);
    if (r->body_case == MEMPROF__AGENT_REPLY__BODY_BACKREFS)
        printf(" nodes=%zu edges=%zu matched=%llu", r->backrefs->n_nodes, r->backrefs->n_edges,
               (unsigned long long)r->backrefs->matched);
    if (r->body_case == MEMPROF__AGENT_REPLY__BODY_TRACKING)
        printf(" enabled=%d exact=%d rate=%llu frames=%u interval=%u", (int)r->tracking->enabled,
               (int)r->tracking->exact, (unsigned long long)r->tracking->sample_rate,
               r->tracking->max_frames, r->tracking->interval_ms);
    printf("\n");
    fflush(stdout);
}

static int send_request(int fd, const char *what)
{
    Envelope env = MEMPROF__ENVELOPE__INIT;
    Memprof__AgentRequest req = MEMPROF__AGENT_REQUEST__INIT;
    Memprof__DetachRequest detach = MEMPROF__DETACH_REQUEST__INIT;
    Memprof__CensusRequest census = MEMPROF__CENSUS_REQUEST__INIT;
    Memprof__BackrefsRequest backrefs = MEMPROF__BACKREFS_REQUEST__INIT;
    Memprof__TrackingConfig tracking = MEMPROF__TRACKING_CONFIG__INIT;
    char err[MP_ERRLEN];
    req.id = next_id++;
    if (!strcmp(what, "detach")) {
        req.body_case = MEMPROF__AGENT_REQUEST__BODY_DETACH;
        req.detach = &detach;
    } else if (!strcmp(what, "census")) {
        req.body_case = MEMPROF__AGENT_REQUEST__BODY_CENSUS;
        req.census = &census;
    } else if (!strcmp(what, "backrefs")) {
        backrefs.type_name = "dict";
        req.body_case = MEMPROF__AGENT_REQUEST__BODY_BACKREFS;
        req.backrefs = &backrefs;
    } else if (!strcmp(what, "tracking")) {
        tracking.enabled = 1;
        req.body_case = MEMPROF__AGENT_REQUEST__BODY_TRACKING;
        req.tracking = &tracking;
    } /* "empty": no body */
    env.msg_case = MEMPROF__ENVELOPE__MSG_AGENT_REQUEST;
    env.agent_request = &req;
    if (wire_send(fd, &env, 5000, err) < 0) {
        printf("send-error %s\n", err);
        return -1;
    }
    return 0;
}

/* An AgentRequest{id, field 9 (from the future): ""} inside an Envelope. */
static int send_unknown(int fd)
{
    uint8_t inner[] = {0x08, (uint8_t)next_id++, 0x4a, 0x00};
    uint8_t frame[4 + 2 + sizeof inner] = {2 + sizeof inner, 0, 0, 0, 0x7a, sizeof inner};
    char err[MP_ERRLEN];
    memcpy(frame + 6, inner, sizeof inner);
    return wire_write_all(fd, frame, sizeof frame, 5000, err);
}

/* Wait for the agent's next message; print it. 0 on EOF, 2 a reply, 1 another
 * message (an unsolicited allocation report), -1 error. */
static int read_one(int fd, int timeout_ms)
{
    Envelope *env;
    char err[MP_ERRLEN];
    int rc = 1;
    if (wire_recv(fd, &env, timeout_ms, err) < 0) {
        if (strstr(err, "closed")) {
            printf("eof\n");
            fflush(stdout);
            return 0;
        }
        printf("recv-error %s\n", err);
        fflush(stdout);
        return -1;
    }
    if (env->msg_case == MEMPROF__ENVELOPE__MSG_AGENT_REPLY) {
        print_reply(env->agent_reply);
        rc = 2;
    } else if (env->msg_case == MEMPROF__ENVELOPE__MSG_HELLO) {
        print_hello(env->hello);
    } else {
        printf("message %s\n", wire_name(env));
    }
    fflush(stdout);
    wire_free(env);
    return rc;
}

/* After a request: read (and print) messages up to its reply. Like read_one. */
static int read_reply(int fd, int timeout_ms)
{
    int rc;
    while ((rc = read_one(fd, timeout_ms)) == 1)
        ;
    return rc;
}

static void serve(int fd)
{
    Envelope *env = NULL, out = MEMPROF__ENVELOPE__INIT;
    Memprof__HelloReply hr = MEMPROF__HELLO_REPLY__INIT;
    char err[MP_ERRLEN], *copy, *act, *save = NULL;

    if (wire_recv(fd, &env, 40000, err) < 0) {
        printf("recv-error %s\n", err);
        return;
    }
    if (env->msg_case != MEMPROF__ENVELOPE__MSG_HELLO) {
        printf("first message %s\n", wire_name(env));
        wire_free(env);
        return;
    }
    print_hello(env->hello);
    wire_free(env);
    hr.protocol = protocol;
    hr.error = (char *)refuse;
    hr.daemon_pid = getpid();
    out.msg_case = MEMPROF__ENVELOPE__MSG_HELLO_REPLY;
    out.hello_reply = &hr;
    if (wire_send(fd, &out, 5000, err) < 0) {
        printf("send-error %s\n", err);
        return;
    }
    copy = strdup(script);
    for (act = strtok_r(copy, ",", &save); act; act = strtok_r(NULL, ",", &save)) {
        if (!strncmp(act, "sleep:", 6)) {
            struct timespec ts = {0, 0};
            double s = atof(act + 6);
            ts.tv_sec = (time_t)s;
            ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
            nanosleep(&ts, NULL);
        } else if (!strcmp(act, "close")) {
            printf("closing\n");
            fflush(stdout);
            break;
        } else if (!strcmp(act, "exit")) {
            printf("exiting\n");
            fflush(stdout);
            _exit(0);
        } else if (!strcmp(act, "garbage")) {
            uint8_t g[] = {5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff};
            wire_write_all(fd, g, sizeof g, 5000, err);
        } else if (!strcmp(act, "oversize")) {
            uint8_t g[] = {0, 0, 0, 0x40, 1, 2, 3};
            wire_write_all(fd, g, sizeof g, 5000, err);
        } else if (!strcmp(act, "unknown")) {
            if (send_unknown(fd) < 0 || read_reply(fd, 30000) <= 0) break;
        } else {
            if (send_request(fd, act) < 0 || read_reply(fd, 30000) <= 0) break;
        }
    }
    free(copy);
    if (!act) /* script done: the agent should close after a detach or bad frame */
        while (read_one(fd, 30000) > 0)
            ;
}

int main(int argc, char **argv)
{
    int lfd, conns = 1;
    if (argc < 2) {
        fprintf(stderr, "usage: faked SOCK [--conns N] [--refuse MSG] [--protocol N] [--script A,B]\n");
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--conns")) conns = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--refuse")) refuse = argv[i + 1];
        else if (!strcmp(argv[i], "--protocol")) protocol = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--script")) script = argv[i + 1];
    }
    lfd = listen_on(argv[1]);
    if (lfd < 0) return 1;
    printf("listening %s\n", argv[1]);
    fflush(stdout);
    for (int c = 0; c < conns; c++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            perror("faked: accept");
            return 1;
        }
        printf("accepted %d\n", c);
        fflush(stdout);
        serve(fd);
        close(fd);
        printf("closed %d\n", c);
        fflush(stdout);
    }
    return 0;
}
