/* session.h -- one session per attached pid: state, identity of the agent, and
 * the client requests waiting on it. History of ended sessions is bounded. */
#ifndef MEMPROF_SESSION_H
#define MEMPROF_SESSION_H

#include <stdint.h>
#include <sys/types.h>

#include "daemon/identity.h"
#include "daemon/remote_exec.h"
#include "probe/pyprobe.h"
#include "proto/wire.h"

struct alloc_data;

enum sess_state { SESS_ATTACHING, SESS_ATTACHED, SESS_DETACHING, SESS_DETACHED, SESS_EXITED, SESS_LOST };

struct session {
    uint32_t id;                /* small, unique, increasing: names an ended session after pid reuse */
    pid_t pid;
    uid_t uid;                  /* the target's real uid */
    enum sess_state state;
    char token[33];
    struct pyinfo py;
    char *executable;
    char **argv;
    size_t argc;
    double attach_started;      /* mp_now() when the attach request arrived */
    double attached_since;      /* wall clock */
    double stop_ms, gil_wait_ms;
    unsigned retries;
    uint64_t handle;            /* dlopen handle in the target */
    int agent_tid;
    char agent_version[64];     /* the agent's MEMPROF_VERSION, from its hello */
    uint64_t agent_conn;        /* connection id of the agent, 0 when none */
    uint64_t attach_waiter;     /* client connection waiting for the attach reply */
    uint64_t detach_waiter;
    double deadline;            /* for the current phase (attaching, detaching) */
    int detach_acked;           /* agent answered the detach request */
    int cancelled;              /* the attaching client went away: undo once the agent is up */
    int undo;                   /* detaching after a failed attach or a detach given up on: no waiter, no
                                 * deadline; unloaded once the agent's thread has ended (attach.c) */
    Memprof__TrackingConfig track; /* asked for, then (after the agent's reply) in force */
    uint64_t config_call;       /* the call sending it the TrackingConfig, until its reply */
    struct alloc_data *alloc;   /* allocation tracking data (alloc.c), NULL until a report */
    uint32_t run;               /* memprof run: the run (run.c) it belongs to; 0 when attached */
    pid_t ppid;                 /* memprof run: parent pid, for a child's session */
    pid_t ns_pid;               /* pid inside its own pid namespace (== pid on the host) */
    char container[64];         /* container hint (procinfo.h), "" on the host */
    struct proc_ident ident;    /* container id, pod, namespace: read once, at the attach or the run's hello */
    int exiting;                /* the agent sent its final report: the process is ending */
    int method_asked;           /* attach.c's ATTACH_AUTO, ATTACH_PTRACE or ATTACH_REMOTE_EXEC */
    int method;                 /* how the agent went in: ATTACH_PTRACE or ATTACH_REMOTE_EXEC */
    struct rx rx;               /* remote-exec request in flight (remote_exec.h) */
    double exec_ms;             /* remote-exec: how long the script held the main thread */
    char note[768];             /* for the client, a line each: why auto went by ptrace; fork under -W error */
    char native_note[512];      /* --native: why it is off or partial (the agent's hello), "" when all is well */
    char native_late[512];      /* --native: a library loaded since that could not be patched (AllocReport) */
    const char *watch_rule;     /* attached by this serve --watch rule (its text, watch.c's), NULL otherwise */
    struct session *next;
};

extern struct session *sessions;
/* The agent library injected into targets and preloaded by runs (memprofd serve --agent). */
extern const char *session_agent_lib;

struct session *session_find(pid_t pid);       /* live (attaching/attached/detaching) first */
struct session *session_by_id(uint32_t id);
struct session *session_of_agent(uint64_t conn_id); /* the session whose agent is on that connection */
struct session *session_new(pid_t pid);
/* Unlinks and frees s; its allocation data (s->alloc) is its owner's to free first (attach.c). */
void session_free(struct session *s);
void session_retire(struct session *s, enum sess_state state); /* ended, kept for status */
/* An ended session beyond the history bound (the newest ended ones are kept), for its owner to free; NULL when none. */
struct session *session_beyond_history(void);
const char *session_state_name(enum sess_state st); /* as clients print it (wire_state_name) */
/* info's fields point into s (nothing to free): valid while s is. */
void session_fill_info(const struct session *s, Memprof__SessionInfo *info);
/* A one-time agent token: 32 hex characters of getrandom. -1 without randomness. */
int session_make_token(char out[33]);
/* Tracking settings of an attach or a run, the defaults filled in (0 = default). */
void session_tracking(Memprof__TrackingConfig *t, int enabled, int exact, uint64_t rate, uint32_t frames,
                      uint32_t interval_ms, uint32_t default_interval_ms);

#endif
