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
    struct wire_rbuf rb;
    int closing;
    struct conn *next;
};

/* Run the daemon in the foreground on socket_path until stopped. */
int server_run(const char *socket_path, char *err);

struct conn *conn_by_id(uint64_t id);
/* Send env on c; a connection that cannot take it within a second is closed. */
void conn_send(struct conn *c, const Envelope *env);
void conn_send_error(struct conn *c, const char *msg);
void conn_close(struct conn *c);

/* The abstract socket name agents connect to (without the leading NUL). */
extern char server_agent_sock[108];
/* Our end of a socket pair made in a target at injection: an agent connection like one
 * accepted on the agent socket (its peer credentials are the target's). Conn id or 0. */
uint64_t server_adopt_agent(int fd);
extern const char *server_agent_lib;
void server_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void server_request_stop(void);

#endif
