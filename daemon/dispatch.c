/* dispatch.c -- the daemon's dispatch table: one row per message a connection of a kind may send.
 * A new message is a schema entry in proto/memprof.proto, one handler, and one row here. */
#include "daemon/dispatch.h"

#include <stdio.h>

#include "daemon/alloc.h"
#include "daemon/attach.h"
#include "daemon/hello.h"
#include "daemon/logging.h"
#include "daemon/run.h"

typedef void handler_fn(struct conn *c, const Envelope *env);

/* A client's Stop: the reply, then the transport winds down (attach.c detaches every session). */
static void on_stop(struct conn *c, const Envelope *env)
{
    Envelope r = MEMPROF__ENVELOPE__INIT;
    Memprof__StopReply sr = MEMPROF__STOP_REPLY__INIT;
    (void)env;
    r.msg_case = MEMPROF__ENVELOPE__MSG_STOP_REPLY;
    r.stop_reply = &sr;
    server_log("stop requested by pid %d", (int)c->peer_pid);
    conn_send(c, &r);
    conn_request_stop();
}

static const struct route {
    Memprof__Envelope__MsgCase msg;
    enum conn_kind kind;
    handler_fn *fn;
} routes[] = {
    {MEMPROF__ENVELOPE__MSG_HELLO, CONN_NEW, hello_on_hello},
    {MEMPROF__ENVELOPE__MSG_STOP, CONN_CLIENT, on_stop},
    {MEMPROF__ENVELOPE__MSG_ATTACH, CONN_CLIENT, attach_on_attach},
    {MEMPROF__ENVELOPE__MSG_DETACH, CONN_CLIENT, attach_on_detach},
    {MEMPROF__ENVELOPE__MSG_STATUS, CONN_CLIENT, attach_on_status},
    {MEMPROF__ENVELOPE__MSG_PS, CONN_CLIENT, attach_on_ps},
    {MEMPROF__ENVELOPE__MSG_AGENT_CALL, CONN_CLIENT, attach_on_agent_call},
    {MEMPROF__ENVELOPE__MSG_ALLOC_QUERY, CONN_CLIENT, alloc_on_query},
    {MEMPROF__ENVELOPE__MSG_RUN, CONN_CLIENT, run_on_request},
    {MEMPROF__ENVELOPE__MSG_ALLOC_REPORT, CONN_AGENT, attach_on_alloc_report},
    {MEMPROF__ENVELOPE__MSG_AGENT_REPLY, CONN_AGENT, attach_on_agent_reply},
};

static const char *kind_name(enum conn_kind k)
{
    return k == CONN_AGENT ? "an agent" : k == CONN_CLIENT ? "a client" : "a new connection";
}

void dispatch(struct conn *c, const Envelope *env)
{
    char msg[160];
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (routes[i].msg == env->msg_case && routes[i].kind == c->kind) {
            routes[i].fn(c, env);
            return;
        }
    if (c->kind == CONN_NEW) {
        hello_refuse(c, "expected a hello first");
        return;
    }
    if (env->msg_case == MEMPROF__ENVELOPE__MSG__NOT_SET)
        snprintf(msg, sizeof msg, "unsupported request: this memprofd (protocol %d) does not know it; "
                 "use a memprof of the same version", MEMPROF_PROTOCOL);
    else
        snprintf(msg, sizeof msg, "unexpected message %s from %s", wire_name(env), kind_name(c->kind));
    if (c->kind == CONN_AGENT) {
        server_log("pid %d: %s", (int)c->peer_pid, msg);
        return;
    }
    conn_send_error_code(c, env->msg_case == MEMPROF__ENVELOPE__MSG__NOT_SET
                                ? MEMPROF__ERROR_REPLY__CODE__UNSUPPORTED_REQUEST
                                : MEMPROF__ERROR_REPLY__CODE__BAD_REQUEST, msg);
}
