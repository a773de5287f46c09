/* fork.h -- a fork of the target seen from the agent (fork.c). */
#ifndef MEMPROF_FORK_H
#define MEMPROF_FORK_H

/* Register the fork-child handler (once; on the agent thread). respawn starts a fresh agent thread in a
 * child that memprof run --follow-fork makes a session of its own (0, or not 0 when it could not). */
void fork_watch(int (*respawn)(void));

#endif
