/* conf.h -- the agent's configuration: the start argument, the daemon's TrackingConfig, the environment. */
#ifndef MEMPROF_CONF_H
#define MEMPROF_CONF_H

#include <limits.h>
#include <stdint.h>
#include <sys/un.h>
#include "gen/memprof.pb-c.h"

/* What the injector asked for: only what it takes to connect (the argument), then the tracking
 * settings the daemon sends after the hello (conf_tracking). The argument is written by
 * memprof_agent_start only while no agent thread runs; the settings only by the agent thread. */
struct agent_conf {
    char sock[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* "@abstract" or a path */
    char token[256];
    char pylib[PATH_MAX];
    int debug;
    int fd;               /* a socket already connected to memprofd (injected across namespaces), or -1 */
    int follow;           /* memprof run --follow-fork: forked children are sessions too */
    uint64_t handle;      /* remote-exec: our dlopen handle (ctypes), reported for the unload */
    uint64_t busy_us;     /* remote-exec: how long its script had run before starting us */
    /* from the daemon's TrackingConfig: */
    uint64_t rate;        /* mean bytes between samples */
    uint32_t frames;      /* max Python frames per stack */
    uint32_t interval_ms; /* flush interval */
    int exact, track;
    int native;           /* native allocations too (native.c) */
    int native_frames;    /* and their native call chains */
};

/* "key=value key=value ..." into c (keys: conf.c's conf_set); buf is modified. 0, or -1 when malformed
 * or without a socket. */
int conf_parse(struct agent_conf *c, char *buf);
/* The daemon's TrackingConfig into c: 0 is the default, the limits applied (common/defaults.h). */
void conf_tracking(struct agent_conf *c, const Memprof__TrackingConfig *t);
/* The flush interval asked for (ms, 0: the default), within the limits. */
uint32_t conf_interval(uint32_t ms);
/* Whether NAME is set to something other than "" or "0" in the environment the process started with. */
int conf_environ_flag(const char *name);

#endif
