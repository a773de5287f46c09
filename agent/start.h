/* start.h -- the agent thread's start (start.c), for memprof run's (launch.c). */
#ifndef MEMPROF_START_H
#define MEMPROF_START_H

/* Start the agent thread (detached, every signal blocked, named from birth); the caller owns
 * agent_running. 0, or -2 when it could not. */
int agent_spawn_thread(void);

#endif
