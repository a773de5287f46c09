/* attach.h -- session lifecycle (attach, agent hello, detach, exit) and the
 * client requests about sessions; the event loop calls these. */
#ifndef MEMPROF_ATTACH_H
#define MEMPROF_ATTACH_H

#include "server.h"

void attach_client_message(struct conn *c, const Envelope *env);
int attach_agent_hello(struct conn *c, const Memprof__Hello *h, char *err);
void attach_agent_ready(struct conn *c);
void attach_agent_message(struct conn *c, const Envelope *env);
void attach_agent_gone(struct conn *c);
void attach_client_gone(struct conn *c);
void attach_tick(void);            /* timeouts, detach progress, exit detection */
void attach_detach_all(void);      /* on stop */
int attach_busy(void);             /* sessions still being attached or detached */

#endif
