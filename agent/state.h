/* state.h -- what the files of the agent's core share (state.c): its settings and flags, and the handoffs
 * between its threads (memprof run's wait for the tracking settings, the final report at the process's end). */
#ifndef MEMPROF_STATE_H
#define MEMPROF_STATE_H

#include <stdatomic.h>
#include "agent/conf.h"

#define AGENT_POLL_NS 10000000L /* the agent thread's sleep between two looks (Python initialized, a full backlog) */
#define LAUNCH_WAIT_S 15.0      /* memprof run: for the tracking settings, before the first line */

/* The start argument's settings, then the daemon's (conf.h says who writes them when). */
extern struct agent_conf agent_conf;
/* 1 from a successful start to the agent thread's end. */
extern atomic_int agent_running;
/* Started by memprof run (preloaded), not injected. */
extern int agent_preloaded;
/* The process's end asks the agent thread for its last report (agent_final_report, agent.h, any thread):
 * final_asked set, then the eventfd the thread polls written; the thread sets final_done once it is sent.
 * conn_ready: the thread has said hello and serves requests. */
extern int agent_wake_fd;
extern atomic_int agent_final_asked, agent_final_done, agent_conn_ready;

/* The start argument (memprof_agent_start's, or MEMPROF_RUN) copied and parsed into agent_conf: 0, or -1
 * when it is missing, too long or malformed. Only while no agent thread runs. */
int agent_configure(const char *arg);

/* memprof run: the Python thread setting up before the program's first line (launch.c, GIL held) waits
 * for the settings the agent thread gets from the daemon, then installs the hooks itself; the agent thread
 * answers the daemon once that is done. */
enum { LAUNCH_NONE, LAUNCH_WAITING, LAUNCH_GOT, LAUNCH_DONE };
/* Wait while the state is while_state (and, waiting for the settings, while the thread runs), until
 * deadline (mp_now()). Returns the state. */
int launch_wait(int while_state, double deadline);
void launch_set(int state);
/* The daemon's settings came: a launch waiting for them (LAUNCH_WAITING) has them now (LAUNCH_GOT).
 * 1 when there was one (it installs the hooks), else 0. */
int launch_hand_over(void);
/* The agent thread ends: agent_running is 0 from here, and a launch waiting for the settings gives up. */
void launch_thread_ended(void);
/* In a forked child: the parent's agent thread may have held the lock at the fork. */
void launch_atfork_child(void);

#endif
