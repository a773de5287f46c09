/* attach.h -- session lifecycle (attach, agent hello, detach, exit) and the
 * client requests about sessions; the event loop calls these. */
#ifndef MEMPROF_ATTACH_H
#define MEMPROF_ATTACH_H

#include "server.h"

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
void attach_agent_gone(struct conn *c);
void attach_client_gone(struct conn *c);
long attach_tick(void);            /* timeouts, detach progress, exit detection; ms until it must run again, -1: nothing pending */
void attach_detach_all(void);      /* on stop */
int attach_busy(void);             /* sessions still being attached or detached */
/* A one-time agent token: 32 hex characters of getrandom. -1 without randomness. */
int attach_make_token(char out[33]);
/* Tracking settings of an attach or a run, the defaults filled in (0 = default). */
void attach_tracking(Memprof__TrackingConfig *t, int enabled, int exact, uint64_t rate, uint32_t frames,
                     uint32_t interval_ms, uint32_t default_interval_ms);

#endif
