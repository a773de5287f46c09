/* client.h -- how memprof and `memprofd attach/detach/stop` talk to the daemon. */
#ifndef MEMPROF_CLIENT_H
#define MEMPROF_CLIENT_H

#include "proto/wire.h"

/* Connect to the daemon at socket (NULL: the default) and shake hands. With
 * spawn set and no daemon running, start `memprofd serve` in the background
 * first. Returns the fd, or -1 with err set. */
int client_connect(const char *socket, int spawn, char *err);

/* Send one request and wait for its reply (timeout_ms < 0: forever). An
 * ErrorReply from the daemon becomes -1 with its message in err (and its
 * code in client_error_code()). */
int client_call(int fd, const Envelope *req, Envelope **reply, int timeout_ms, char *err);

/* Forward req to the agent in pid through the daemon; *reply is the agent's
 * AgentReply (free with wire_free(*env)). An agent error becomes -1. */
int client_agent_call(int fd, int pid, Memprof__AgentRequest *req, Envelope **env,
                      Memprof__AgentReply **reply, int timeout_ms, char *err);

/* A reply's error field with its code (AttachReply, DetachReply, AllocData,
 * AgentReply): 0 when error is empty, else -1 with error in err and code kept
 * for client_error_code(). */
int client_reply_error(const char *error, Memprof__ErrorReply__Code code, char *err);

/* The category of the last failure of client_call, client_agent_call or
 * client_reply_error (ErrorReply.Code): UNKNOWN when the daemon gave none, or
 * the failure was not the daemon's answer (no daemon, timeout, bad frame). */
Memprof__ErrorReply__Code client_error_code(void);
/* Set it (client.c, at each call and failure). */
void client_error_set(Memprof__ErrorReply__Code code);

/* The one map from a failure's category to the exit status of a command
 * (common/exitcodes.h): MP_EXIT_NO_PROCESS, MP_EXIT_PERMISSION,
 * MP_EXIT_NOT_ATTACHED, MP_EXIT_UNSUPPORTED, else MP_EXIT_FAIL. */
int client_exit_status(Memprof__ErrorReply__Code code);

/* Whether lib, an agent library memprofd named, is one only root or this user could have put there: an absolute
 * path whose file and every directory up to / (symlinks resolved) are owned by root or this user and writable by
 * no one else (a directory may be, with the sticky bit). 0 with the resolved path in real (load that one), else -1
 * with err saying which part fails and why. */
int client_check_agent(const char *lib, char *real, size_t reallen, char *err);

/* --socket PATH, which every command accepts: the daemon to talk to (NULL: the default). */
extern const char *client_socket_opt;
/* Its row in a command's option table (opts.h). */
#define CLIENT_SOCKET_OPT                                                                                  \
    {                                                                                                      \
        "socket", 0, OPT_STRING, &client_socket_opt, "PATH", "the daemon's socket (default: $MEMPROF_SOCKET, else\n" \
                                                             "memprofd's per-user one)"                      \
    }

#endif
