/* run.h -- memprof run: sessions of programs started with the agent preloaded. */
#ifndef MEMPROF_RUN_H
#define MEMPROF_RUN_H

#include "daemon/conn.h"

struct session;

/* A client's RunRequest: answers with the token and the agent's settings. */
void run_on_request(struct conn *c, const Envelope *env);
/* An agent hello with no attach in progress for its pid: the session of a
 * run when the token and the process's ancestry say so, else NULL (err set). */
struct session *run_agent_hello(struct conn *c, const Memprof__Hello *h, char *err);
/* The client of a run went away: no new sessions for it. */
void run_client_gone(struct conn *c);

#endif
