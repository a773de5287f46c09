/* server.h -- memprofd's event loop: sockets, connections, and routing of messages. */
#ifndef MEMPROF_SERVER_H
#define MEMPROF_SERVER_H

#include <stdint.h>
#include <sys/types.h>
#include "wire.h"

enum conn_kind { CONN_NEW, CONN_CLIENT, CONN_AGENT };

struct conn {
    uint64_t id;
    int fd;
    enum conn_kind kind;
    pid_t peer_pid;
    uid_t peer_uid;
    int from_agent_socket;
    struct wire_rbuf rb;
    uint8_t *obuf;             /* replies not yet written: obuf[ooff..olen) */
    size_t olen, ooff, ocap;
    int close_when_flushed;    /* read nothing more; close once obuf is written */
    int closing;
    struct conn *next;
    /* before its hello: on its socket's list of strangers, oldest first (server.c) */
    struct strangers *strangers;
    struct conn *snext, *sprev;
    double hello_by;
};

/* Run the daemon in the foreground on socket_path until stopped. */
int server_run(const char *socket_path, char *err);

struct conn *conn_by_id(uint64_t id);
/* The connection is gone, or its peer closed its end with nothing left unread (an EOF the loop has not
 * read yet: a client reads nothing while its request is pending). */
int conn_hung_up(uint64_t id);
/* Queue env on c and write what the socket takes now; never blocks. A peer that leaves more than
 * CONN_OUT_MAX bytes unread is dropped with a logged reason. */
void conn_send(struct conn *c, const Envelope *env);
void conn_send_error(struct conn *c, const char *msg);
void conn_send_error_code(struct conn *c, Memprof__ErrorReply__Code code, const char *msg);
/* Handlers of the server's own messages (dispatch.c routes them). */
void server_on_hello(struct conn *c, const Envelope *env);
void server_on_stop(struct conn *c, const Envelope *env);
void server_refuse_hello(struct conn *c, const char *why);
void conn_close(struct conn *c);

/* The abstract socket name agents connect to (without the leading NUL). */
extern char server_agent_sock[108];
/* Our end of a socket pair made in a target at injection: an agent connection like one
 * accepted on the agent socket (its peer credentials are the target's). Conn id or 0. */
uint64_t server_adopt_agent(int fd);
extern const char *server_agent_lib;
void server_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void server_request_stop(void);
/* Connections now open, by kind (for /metrics). */
void server_conn_counts(unsigned *clients, unsigned *agents);
/* Something with a deadline began (attach, detach, agent call): make sure attach_tick runs. */
void server_wake_tick(void);

#endif
