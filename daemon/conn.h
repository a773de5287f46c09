/* conn.h -- memprofd's transport: its two listening sockets, connections and their output queues, and what
 * happens between two rounds of the event loop (closing, ticking, stopping). It knows nothing of what the
 * messages mean: the wiring (serve.c) registers callbacks, as redis' networking does around ae.c. */
#ifndef MEMPROF_CONN_H
#define MEMPROF_CONN_H

#include <stdint.h>
#include <sys/types.h>
#include "proto/wire.h"

enum conn_kind { CONN_NEW, CONN_CLIENT, CONN_AGENT };

struct conn {
    uint64_t id;
    int fd;
    enum conn_kind kind;       /* CONN_NEW until its hello (hello.c) says which */
    pid_t peer_pid;
    uid_t peer_uid;
    int from_agent_socket;
    struct wire_rbuf rb;       /* rb.max: frame limit (hello.c sets one until the hello) */
    uint8_t *obuf;             /* replies not yet written: obuf[ooff..olen) */
    size_t olen, ooff, ocap;
    int close_when_flushed;    /* read nothing more; close once obuf is written */
    int closing;               /* closed: its socket is, the closed callback and its memory wait for before_sleep */
    struct conn *next;         /* all connections */
    struct conn *close_next;   /* closed ones whose closed callback has not run, in the order they closed */
    /* before its hello: on its socket's list of strangers, oldest first (hello.c's) */
    struct strangers *strangers;
    struct conn *snext, *sprev;
    double hello_by;
};

/* What the transport calls. None is called under a caller of conn_send or conn_close: a connection that
 * must close is marked (its socket closed at once) and its closed callback runs from before_sleep. */
struct conn_callbacks {
    /* A message from c. c stays valid until the handler returns, whatever the handler sends or closes. */
    void (*message)(struct conn *c, const Envelope *env);
    /* c was closed (by anyone, at EOF, or dropped for a reason logged): forget it. c is freed after this. */
    void (*closed)(struct conn *c);
    /* Deadlines: runs at the next round after conn_wake_tick, then as it says (ms; -1: nothing pending). */
    long (*tick)(void);
    /* A stop was asked for: begin winding down (runs once; the client socket is closed by then). */
    void (*stopping)(void);
    /* Still winding down? The loop ends when it is not, or 3 s after the stop. */
    int (*busy)(void);
    /* Bounds before trust (hello.c). admit: may a connection from this peer come in (near the fd limit when
     * short_of_fds)? 0 turns it away. accepted: c came in (listed: on a listening socket, not adopted).
     * make_room: out of fds; close a connection to make room: 1 if one was. */
    int (*admit)(int from_agent_socket, int short_of_fds, pid_t pid, uid_t uid);
    void (*accepted)(struct conn *c, int listed);
    int (*make_room)(const char *why);
};
void conn_set_callbacks(const struct conn_callbacks *cb);

/* Listens for clients on client_path (a 0600 socket; its directory prepared by the caller) and for agents
 * on an abstract socket of a random name (conn_agent_sock), raising RLIMIT_NOFILE first; after loop_init. */
int conn_listen(const char *client_path, char *err);
/* Runs the event loop until a stop has been asked for and wound down. */
void conn_run(void);
/* After conn_run: last replies get a short chance to leave, every connection is closed (closed callbacks
 * run), and the listening sockets go. Before loop_free. */
void conn_shutdown(void);
void conn_request_stop(void);
/* Runs the tick callback at the next round of the loop, whenever it was due before. */
void conn_wake_tick(void);

/* The abstract socket name agents connect to (without the leading NUL). */
extern char conn_agent_sock[108];
/* RLIMIT_NOFILE's soft limit, as raised by conn_listen. */
long conn_fd_limit(void);

/* A live connection (not closed), or NULL. */
struct conn *conn_by_id(uint64_t id);
/* The connection is gone, or its peer closed its end with nothing left unread (an EOF the loop has not
 * read yet: a client reads nothing while its request is pending). */
int conn_hung_up(uint64_t id);
/* Queue env on c and write what the socket takes now; never blocks, never frees anything. A peer that
 * leaves more than CONN_OUT_MAX bytes unread is dropped with a logged reason. */
void conn_send(struct conn *c, const Envelope *env);
void conn_send_error(struct conn *c, const char *msg);
void conn_send_error_code(struct conn *c, Memprof__ErrorReply__Code code, const char *msg);
/* Marks c closed and closes its socket; the closed callback and its memory wait for before_sleep. */
void conn_close(struct conn *c);
/* conn_close with a logged reason (rate-limited for a connection before its hello). */
void conn_drop(struct conn *c, const char *why);
/* Our end of a socket pair made in a target at injection: an agent connection like one accepted on the
 * agent socket (its peer credentials are the target's). Conn id, or 0 (fd closed). */
uint64_t conn_adopt_agent(int fd);
/* Is pid at the other end of an open connection that is not an agent's (a client, or one before its hello)? */
int conn_peer_is_client(pid_t pid);
/* Connections now open, by kind (for /metrics). */
void conn_counts(unsigned *clients, unsigned *agents);

#endif
