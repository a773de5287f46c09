/* run.c -- memprof run: programs started with the agent preloaded. A client asks
 * for a run (RunRequest) and gets a one-time token to start the program with (the
 * tracking settings reach its agent on the wire, after its hello). An agent saying hello with that token becomes a
 * session without any injection, provided it is the client's descendant and
 * runs as the client's user; with follow_fork every such descendant does
 * (fork children, multiprocessing workers, Pythons the program execs). The
 * client's parent may also say hello: `memprof inproc`, started by an
 * interpreter loading the agent itself (the IPython extension). A run
 * lasts as long as its client's connection. */
#include "daemon/run.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/defaults.h"
#include "common/util.h"
#include "daemon/logging.h"
#include "daemon/procinfo.h"
#include "daemon/session.h"

#define MAX_DEPTH 64 /* parent links followed from an agent up to the client */

struct run {
    uint32_t id;
    char token[33];
    uint64_t client_conn;
    pid_t client_pid;
    uid_t uid;
    int follow, sessions;
    Memprof__TrackingConfig track;
    struct run *next;
};
static struct run *runs;
static uint32_t last_run_id;

static void reply(struct conn *c, const char *error, const struct run *r, const char *env)
{
    Envelope e = MEMPROF__ENVELOPE__INIT;
    Memprof__RunReply rr = MEMPROF__RUN_REPLY__INIT;
    rr.error = (char *)(error ? error : "");
    if (r) {
        rr.run = r->id;
        rr.agent_env = (char *)env;
        rr.agent_lib = (char *)session_agent_lib;
    }
    e.msg_case = MEMPROF__ENVELOPE__MSG_RUN_REPLY;
    e.run_reply = &rr;
    conn_send(c, &e);
}

void run_on_request(struct conn *c, const Envelope *in)
{
    const Memprof__RunRequest *req = in->run;
    char env[512];
    struct run *r;
    if (!(r = calloc(1, sizeof *r))) {
        reply(c, "out of memory", NULL, NULL);
        return;
    }
    if (session_make_token(r->token) < 0) {
        free(r);
        reply(c, "no randomness for a token", NULL, NULL);
        return;
    }
    r->id = ++last_run_id;
    r->client_conn = c->id;
    r->client_pid = c->peer_pid;
    r->uid = c->peer_uid;
    r->follow = req->follow_fork;
    session_tracking(&r->track, 1, req->exact, req->sample_rate, req->max_frames, req->interval_ms, MP_RUN_INTERVAL_MS);
    r->track.native = req->native && !req->exact;
    r->track.native_frames = r->track.native && req->native_frames;
    r->next = runs;
    runs = r;
    /* what the agent needs before its hello (follow: whether the program's children keep it preloaded);
     * the tracking settings follow on the wire */
    snprintf(env, sizeof env, "sock=@%s token=%s follow=%d", conn_agent_sock, r->token, r->follow);
    server_log("run %u for pid %d (uid %d)%s", r->id, (int)c->peer_pid, (int)c->peer_uid,
               r->follow ? ", following forks" : "");
    reply(c, NULL, r, env);
}

/* Whether pid descends from ancestor (following parent links in /proc). */
static int descends_from(pid_t pid, pid_t ancestor)
{
    for (int depth = 0; depth < MAX_DEPTH && pid > 1; depth++) {
        pid = proc_ppid(pid);
        if (pid == ancestor) return 1;
    }
    return 0;
}

/* Whether some agent is awaited with a token: an injection's, or a memprof run's. */
static int token_expected(void)
{
    if (runs) return 1;
    for (struct session *s = sessions; s; s = s->next)
        if (s->state == SESS_ATTACHING && !s->agent_conn) return 1;
    return 0;
}

struct session *run_agent_hello(struct conn *c, const Memprof__Hello *h, char *err)
{
    struct run *r;
    struct session *s;
    for (r = runs; r; r = r->next)
        if (h->token && mp_token_equal(h->token, r->token)) break;
    if (!r) {
        /* the token is what was compared: a peer is told it is wrong whenever one is expected */
        if (token_expected())
            mp_err(err, "bad token from pid %d", (int)c->peer_pid);
        else
            mp_err(err, "no attach in progress for pid %d", (int)c->peer_pid);
        return NULL;
    }
    if (c->peer_uid != r->uid ||
        !(descends_from(c->peer_pid, r->client_pid) || (r->client_pid > 1 && proc_ppid(r->client_pid) == c->peer_pid))) {
        mp_err(err, "pid %d: not started by the memprof run that owns this token", (int)c->peer_pid);
        return NULL;
    }
    if (r->sessions && !r->follow) {
        mp_err(err, "pid %d: run %u already has its process (no --follow-fork)", (int)c->peer_pid, r->id);
        return NULL;
    }
    if ((s = session_find(c->peer_pid)) && s->state <= SESS_DETACHING) {
        mp_err(err, "pid %d: already has a session", (int)c->peer_pid);
        return NULL;
    }
    if (!(s = session_new(c->peer_pid))) {
        mp_err(err, "out of memory");
        return NULL;
    }
    s->uid = c->peer_uid;
    s->run = r->id;
    s->ppid = r->sessions ? proc_ppid(c->peer_pid) : 0;
    proc_ident(c->peer_pid, &s->ident);
    s->track = r->track;
    s->attach_started = mp_now();
    s->deadline = mp_now() + 15.0; /* attach_tick drops it if the hello goes no further */
    conn_wake_tick();
    snprintf(s->token, sizeof s->token, "%s", r->token);
    r->sessions++;
    server_log("run %u: pid %d started%s", r->id, (int)c->peer_pid, s->ppid ? " (a child)" : "");
    return s;
}

void run_client_gone(struct conn *c)
{
    for (struct run **pp = &runs; *pp;) {
        struct run *r = *pp;
        if (r->client_conn == c->id) {
            *pp = r->next;
            free(r);
        } else {
            pp = &r->next;
        }
    }
}
