/* hello.h -- a connection's first message, the hello that makes it a client or an agent, and the bounds on
 * a connection until then. */
#ifndef MEMPROF_HELLO_H
#define MEMPROF_HELLO_H

#include "daemon/conn.h"

/* The transport's callbacks for connections before their hello (conn.h's admit, accepted, make_room). */
int hello_admit(int from_agent_socket, int short_of_fds, pid_t pid, uid_t uid);
void hello_accepted(struct conn *c, int listed);
int hello_make_room(const char *why);
/* c was closed: off its list of strangers. */
void hello_forget(struct conn *c);

/* The dispatch table's handler of a Hello; a refusal (the reason in a HelloReply, then EOF). */
void hello_on_hello(struct conn *c, const Envelope *env);
void hello_refuse(struct conn *c, const char *why);

#endif
