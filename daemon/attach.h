/* attach.h -- session lifecycle (attach, agent hello, detach, exit) and the
 * client requests about sessions; the dispatch table, hello.c and the transport's callbacks (serve.c) call these. */
#ifndef MEMPROF_ATTACH_H
#define MEMPROF_ATTACH_H

#include "daemon/conn.h"

/* Handlers of the dispatch table (dispatch.c): clients' requests, then agents' messages. */
void attach_on_attach(struct conn *c, const Envelope *env);
void attach_on_detach(struct conn *c, const Envelope *env);
void attach_on_status(struct conn *c, const Envelope *env);
void attach_on_ps(struct conn *c, const Envelope *env);
void attach_on_agent_call(struct conn *c, const Envelope *env);
void attach_on_alloc_report(struct conn *c, const Envelope *env);
void attach_on_agent_reply(struct conn *c, const Envelope *env);

int attach_agent_hello(struct conn *c, const Memprof__Hello *h, char *err);
/* After the hello: sends the agent its TrackingConfig; its reply makes the session attached. */
void attach_agent_hello_done(struct conn *c);
/* A connection closed (the transport's closed callback, serve.c): an agent's session ends or is undone, a
 * client's requests are forgotten. */
void attach_agent_gone(struct conn *c);
void attach_client_gone(struct conn *c);
/* The transport's tick, stopping and busy callbacks (serve.c): */
long attach_tick(void);            /* timeouts, detach progress, exit detection; ms until it must run again, -1: nothing pending */
void attach_detach_all(void);      /* on stop */
int attach_busy(void);             /* sessions still being attached or detached */

#endif
