/* remote_exec.h -- PEP 768 attach (CPython 3.14+): the interpreter itself loads the
 * agent, from a script it runs at its next safe point; no ptrace stop. */
#ifndef MEMPROF_REMOTE_EXEC_H
#define MEMPROF_REMOTE_EXEC_H

#include <stdint.h>
#include <sys/types.h>

#include "daemon/deliver.h"
#include "probe/pyprobe.h"

#define RX_SAFE_POINT_S 2.0 /* the main thread must take the request within this */

struct rx {
    int active;            /* request written, files in the target's /tmp */
    int taken;             /* the interpreter took the request (or the script claimed itself) */
    uint64_t pending_addr; /* the main thread's debugger_pending_call */
    double deadline;       /* for the safe point */
    struct tmpcopy tc;     /* the agent copy; the script beside it */
};

/* 0 when pid can be attached by remote-exec; else -1 and why (one line, naming
 * the flag when remote debugging is disabled in it). */
int rx_usable(pid_t pid, const struct pyinfo *py, char *why);

/* Puts the agent (lib) and a script that loads it with ctypes and calls
 * memprof_agent_start(arg) into the target's /tmp, then asks its main thread to
 * run the script (debugger_script_path, debugger_pending_call, eval_breaker:
 * process_vm_writev, the target keeps running). */
int rx_start(pid_t pid, const struct pyinfo *py, const char *lib, const char *arg, struct rx *rx, char *err);

/* 1 once the interpreter has taken the request, 0 while it is pending. */
int rx_poll(pid_t pid, struct rx *rx);

/* Withdraws a pending request: 1 when the script will never run (safe to attach
 * another way), 0 when it already runs (its agent will say hello). */
int rx_cancel(pid_t pid, struct rx *rx);

/* Removes what rx_start left in the target's /tmp (the agent stays mapped). */
void rx_done(struct rx *rx);

#endif
