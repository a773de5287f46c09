/* uplink.h -- the agent's connection to memprofd (uplink.c), owned by the agent thread. */
#ifndef MEMPROF_UPLINK_H
#define MEMPROF_UPLINK_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "proto/wire.h"

struct agent_link {
    int fd;
    struct wire_rbuf rb;
    double gil_wait_ms;
    uint8_t *pend;        /* an allocation report not yet fully written */
    size_t pend_len, pend_off;
    uint64_t coalesced;   /* ticks skipped because the daemon was not reading */
};

/* The session's socket, for the fork-child handler (fork.c); -1 when none. */
extern atomic_int agent_sock_fd;

/* Connect to the daemon (agent_conf's socket, or the descriptor memprofd made in our process). */
int link_connect(struct agent_link *s, char *err);
/* Send our Hello; with want_reply, wait for and check the daemon's answer. */
int link_hello(struct agent_link *s, int want_reply, char *err);
/* Serve requests until detach, an error, or the daemon goes away; report the allocations every interval. */
void link_loop(struct agent_link *s);
void link_close(struct agent_link *s);

#endif
