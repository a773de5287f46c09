/* native.h -- native allocations: GOT patching of loaded libraries for malloc & co. */
#ifndef MEMPROF_NATIVE_H
#define MEMPROF_NATIVE_H

/* Patch the GOT entries of every loaded library but libc, ld.so, the vdso,
 * this agent and the Python executable/libpython (whose allocations the PyMem
 * hooks count); after hooks_install (sampling). 0, or -1 with err. Any thread. */
int native_install(char *err);
/* Patch libraries loaded since (the dlopen hook does it too). Agent thread. */
void native_rescan(void);
/* Put back every GOT entry still ours in a loaded library, then wait until no
 * thread runs hook code: 0, or -1 when threads stayed inside (keep the library
 * loaded). Idempotent. */
int native_uninstall(void);
int native_installed(void);
/* In a forked child: only this thread survives (no hook code runs elsewhere). */
void native_atfork_child(void);
/* Entries patched (for the log and the tests). */
unsigned native_patched(void);

#endif
