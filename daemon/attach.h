/* attach.h -- session lifecycle (attach, agent hello, detach, exit) and the
 * client requests about sessions; the dispatch table, hello.c and the transport's callbacks (serve.c) call these. */
#ifndef MEMPROF_ATTACH_H
#define MEMPROF_ATTACH_H

#include <sys/types.h>

#include "common/defaults.h"
#include "common/opts.h"
#include "daemon/conn.h"

/* An attach's settings as option rows writing into a Memprof__AttachRequest *req (and int *method, an index
 * of attach_methods): memprofd attach's options, and the terms of a serve --watch rule (watch.c), one table. */
#define ATTACH_SETTINGS_OPTS(req, method)                                                                        \
    {"sample-rate", 0, OPT_U64, &(req)->sample_rate, "BYTES",                                                    \
     "mean bytes between allocation samples (default " MP_STR(MP_DEFAULT_SAMPLE_RATE) ")"},                      \
    {"exact", 0, OPT_FLAG, &(req)->exact, NULL, "count every allocation (slower) instead of sampling"},         \
    {"max-frames", 0, OPT_UINT, &(req)->max_frames, "N",                                                         \
     "Python frames kept per sample (default " MP_STR(MP_DEFAULT_MAX_FRAMES) ")"},                               \
    {"interval", 0, OPT_UINT, &(req)->interval_ms, "MS",                                                         \
     "how often the agent reports (default " MP_STR(MP_DEFAULT_INTERVAL_MS) ")"},                                \
    {"no-track", 0, OPT_FLAG, &(req)->no_tracking, NULL, "attach without allocation tracking"},                 \
    {"method", 0, OPT_CHOICE, (method), "M",                                                                     \
     "how the agent gets in: auto (default: remote-exec where it\n"                                             \
     "works, else ptrace), ptrace (stop a thread briefly and\n"                                                 \
     "load it), remote-exec (Python 3.14+, PEP 768: the main\n"                                                 \
     "thread loads it at its next safe point; nothing is stopped)",                                             \
     .choices = "auto|ptrace|remote-exec"},                                                                     \
    {"native", 0, OPT_FLAG, &(req)->native, NULL,                                                                \
     "also native allocations (malloc, mmap... of C extensions),\n"                                             \
     "attributed to the Python line running (not with --exact)"},                                               \
    {"native-frames", 0, OPT_FLAG, &(req)->native_frames, NULL,                                                  \
     "with --native: each sampled native allocation keeps its\n"                                                \
     "native call chain, named by memprofd (libdw): C functions\n"                                              \
     "under the Python line in memprof export and flamegraph"}
/* The method names of ATTACH_SETTINGS_OPTS's choice, in its order. */
extern const char *const attach_methods[3];
/* What the rows cannot say (settings that exclude each other): 0, or -1 with err naming them with dashes
 * ("--native") or without ("native"). */
int attach_settings_check(const Memprof__AttachRequest *req, const char *dashes, char *err);

/* Start an attach for a client of uid (its connection waiter, 0: none, the reply is dropped) or for a watch
 * rule (watch_rule: its text, kept by the session; it must outlive it). 0 when the attach is under way or
 * already done (the waiter hears the outcome), -1 when refused at once: err says why (the waiter heard it). */
int attach_start(uid_t uid, uint64_t waiter, const Memprof__AttachRequest *req, const char *watch_rule, char *err);

/* Handlers of the dispatch table (dispatch.c): clients' requests, then agents' messages. */
void attach_on_attach(struct conn *c, const Envelope *env);
void attach_on_detach(struct conn *c, const Envelope *env);
void attach_on_status(struct conn *c, const Envelope *env);
void attach_on_ps(struct conn *c, const Envelope *env);
void attach_on_agent_call(struct conn *c, const Envelope *env);
void attach_on_alloc_report(struct conn *c, const Envelope *env);
void attach_on_agent_reply(struct conn *c, const Envelope *env);

int attach_agent_hello(struct conn *c, const Memprof__Hello *h, char *err);
/* After the hello: sends the agent its TrackingConfig; its reply makes the session attached. */
void attach_agent_hello_done(struct conn *c);
/* A connection closed (the transport's closed callback, serve.c): an agent's session ends or is undone, a
 * client's requests are forgotten. */
void attach_agent_gone(struct conn *c);
void attach_client_gone(struct conn *c);
/* The transport's tick, stopping and busy callbacks (serve.c): */
long attach_tick(void);            /* timeouts, detach progress, exit detection; ms until it must run again, -1: nothing pending */
void attach_detach_all(void);      /* on stop */
int attach_busy(void);             /* sessions still being attached or detached */

#endif
