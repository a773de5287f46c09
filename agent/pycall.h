/* pycall.h -- what the agent installs in the interpreter with the C API: the
 * atexit callback sending the final report, and memprof run's `profile` builtin. */
#ifndef MEMPROF_PYCALL_H
#define MEMPROF_PYCALL_H

#include <stddef.h>
#include "gen/memprof.pb-c.h"

/* How long the exiting thread waits, at most, for the final report to be written. */
#define PYCALL_FINAL_WAIT_S 1.0

/* Have the interpreter's atexit call report(PYCALL_FINAL_WAIT_S) (without the GIL). With the GIL
 * held. 0 done, -1 failed (the Python error is cleared). */
int pycall_atexit_register(void (*report)(double wait_s));
/* -1: still registered (the library must then stay loaded). */
int pycall_atexit_unregister(void);
int pycall_atexit_registered(void);

/* builtins.profile, unless one exists (1). GIL held. */
int pycall_profile_install(void);
/* The @profile'd functions not yet sent: an array of n frames (file, function,
 * first_line), for AllocReport.profiled; release with pycall_profiled_free. */
size_t pycall_profiled_take(Memprof__AllocFrame ***out);
void pycall_profiled_free(Memprof__AllocFrame **v, size_t n);
/* In a follow-fork child: every recorded function is sent again. */
void pycall_atfork_child(void);

#endif
