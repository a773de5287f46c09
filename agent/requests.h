/* requests.h -- the daemon's requests to the agent, answered by their handlers (requests.c). */
#ifndef MEMPROF_REQUESTS_H
#define MEMPROF_REQUESTS_H

#include "gen/memprof.pb-c.h"

/* Run req's handler into reply (its body) or err: 0, -1 (an error, an unknown request), or -2 (the
 * interpreter is finalizing). *stop: the session ends once the reply is sent (detach, finalizing). */
int request_run(const Memprof__AgentRequest *req, Memprof__AgentReply *reply, char *err, int *stop);
/* Once the reply is sent: free what req's handler allocated into it. */
void request_release(const Memprof__AgentRequest *req, Memprof__AgentReply *reply);

#endif
