/* hello.c -- a connection's first message: the hello that makes it a client or an agent (its role, its
 * protocol, the socket it came in on), and the bounds on a connection before it. */
#include "daemon/hello.h"

#include <stdio.h>
#include <unistd.h>

#include "common/util.h"
#include "common/version.h"
#include "daemon/attach.h"
#include "daemon/logging.h"
#include "daemon/loop.h"

/* Bounded before trust. Until its hello a connection is a stranger (the agent socket's name is readable by
 * every local user in /proc/net/unix): it may buffer one frame of HELLO_MAX bytes, must say hello within
 * HELLO_DEADLINE_S, and each listening socket keeps at most STRANGERS_MAX of them. A new stranger past
 * that evicts the oldest: a real peer says hello at once, so the oldest are those that keep quiet, and
 * turning new ones away instead would let a few idle connections lock every agent out. Near the fd limit
 * an agent socket's stranger costs the oldest one its place; a client makes room the same way but is never
 * turned away for it. */
#define HELLO_MAX (64u << 10) /* a hello's frame: an agent's carries its command line (up to 32 KiB) */
#define HELLO_DEADLINE_S 5.0
#define STRANGERS_MAX 64

struct strangers {
    struct conn *oldest, *newest;
    unsigned n;
};
static struct strangers client_strangers, agent_strangers;
static long long strangers_timer;

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

void hello_forget(struct conn *c) { stranger_remove(c); }

/* Off the list: those closed since (their closed callback waits for the end of the round), so that the
 * counts and the oldest are of live strangers only. */
static void purge(struct strangers *l)
{
    for (struct conn *c = l->oldest, *next; c; c = next) {
        next = c->snext;
        if (c->closing) stranger_remove(c);
    }
}

static void drop(struct conn *c, const char *why)
{
    stranger_remove(c);
    conn_drop(c, why);
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
        purge(lists[i]);
        while (lists[i]->oldest && lists[i]->oldest->hello_by <= now) drop(lists[i]->oldest, why);
        if (lists[i]->oldest && (!next || lists[i]->oldest->hello_by < next)) next = lists[i]->oldest->hello_by;
    }
    if (!next) {
        if (strangers_timer == id) strangers_timer = 0;
        return LOOP_NOMORE;
    }
    return (long)((next - now) * 1000) + 1;
}

/* Makes room by closing the oldest stranger of l. 0 if there was none. */
static int evict_stranger(struct strangers *l, const char *why)
{
    purge(l);
    if (!l->oldest) return 0;
    drop(l->oldest, why);
    return 1;
}

int hello_make_room(const char *why) { return evict_stranger(&agent_strangers, why); }

int hello_admit(int from_agent_socket, int short_of_fds, pid_t pid, uid_t uid)
{
    struct strangers *l = from_agent_socket ? &agent_strangers : &client_strangers;
    if (short_of_fds && !evict_stranger(&agent_strangers, "file descriptors run short") && from_agent_socket) {
        log_refusal("refused an agent connection from pid %d (uid %d): file descriptors run short (limit %ld)",
                    (int)pid, (int)uid, conn_fd_limit());
        return 0;
    }
    purge(l);
    if (l->n >= STRANGERS_MAX) evict_stranger(l, "too many connections without a hello");
    return 1;
}

/* One frame of HELLO_MAX bytes until the hello, also for an adopted agent; a listed one is on its socket's
 * list of strangers, with a deadline. */
void hello_accepted(struct conn *c, int listed)
{
    struct strangers *l = c->from_agent_socket ? &agent_strangers : &client_strangers;
    c->rb.max = HELLO_MAX;
    if (!listed) return;
    c->strangers = l;
    c->hello_by = mp_now() + HELLO_DEADLINE_S;
    c->sprev = l->newest;
    if (l->newest) l->newest->snext = c; else l->oldest = c;
    l->newest = c;
    l->n++;
    if (!strangers_timer) strangers_timer = loop_add_timer((long)(HELLO_DEADLINE_S * 1000) + 1, strangers_tick, NULL);
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

void hello_refuse(struct conn *c, const char *why) { hello_reply(c, why); }

/* Its hello was taken: no deadline any more, and frames up to WIRE_MAX_MSG. */
static void trusted(struct conn *c)
{
    stranger_remove(c);
    c->rb.max = 0;
}

void hello_on_hello(struct conn *c, const Envelope *env)
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
