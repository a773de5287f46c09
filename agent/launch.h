/* launch.h -- memprof run: the agent preloaded into a program at its start
 * (LD_PRELOAD + MEMPROF_RUN), rather than injected into a running one. */
#ifndef MEMPROF_LAUNCH_H
#define MEMPROF_LAUNCH_H

/* agent.c: parse MEMPROF_RUN's settings (the attach argument's key=value form). */
int agent_launch_configure(const char *arg, int *follow, char *err);
/* agent.c, with the GIL held, once the interpreter is initialized: start the agent
 * thread, wait for the daemon's tracking settings, install the hooks, the atexit
 * callback and the profile builtin with them. */
int agent_launch_setup(char *err);
/* 1 once agent_launch_setup succeeded. */
int agent_launched(void);

#endif
