/* inject.h -- loading and unloading the agent in a live process with ptrace (no gdb). */
#ifndef MEMPROF_INJECT_H
#define MEMPROF_INJECT_H

#include <stdint.h>
#include <sys/types.h>

struct inject_result {
    uint64_t handle;   /* dlopen() handle in the target, for inject_unload; also set when inject_load
                        * failed after the agent's thread started (unload it once that thread ends) */
    int start_rc;      /* what start_sym(arg) returned in the target */
    double stop_ms;    /* how long the target's threads were ptrace-stopped, summed over tries */
    unsigned retries;  /* attempts abandoned because the thread was in libc/ld.so */
    int sock_fd;       /* INJECT_SOCKET: our end of the socket pair, or -1 (see sock_note) */
    char how[300];     /* how the library got in: "memfd", "a copy in its /tmp (memfd: why)", "already loaded" */
    char sock_note[300]; /* why there is no socket pair, when asked for one */
};

#define INJECT_SOCKET 1 /* make a connected socket pair in the target; start_sym gets " fd=N" */

/* Loads lib_path into pid whatever its mount namespace: an already mapped copy (same
 * file name) is reused by soname (RTLD_NOLOAD); else the bytes go into a memfd of the
 * target, dlopen("/proc/thread-self/fd/N"); else into a private copy in its /tmp, removed right
 * after dlopen. Then calls `int start_sym(const char *arg)` (arg copied into the target).
 * No descriptor or file is left in the target; on every failure path it is left running,
 * with its registers and memory as they were, and not stopped, and the library unloaded
 * unless its thread started (then res->handle). When start_sym returns non-zero (no thread
 * started) the library is unloaded again and res->handle is 0. SIGINT/SIGTERM/SIGHUP are
 * held off while the target is stopped. */
int inject_load(pid_t pid, const char *lib_path, const char *start_sym, const char *arg, int flags,
                struct inject_result *res, char *err);

/* 0 when pid's C library is glibc (or none is mapped: inject_load says so); else -1 with
 * "unsupported libc (musl)" or "(not glibc)" in err. */
int inject_libc_check(pid_t pid, char *err);

/* dlclose(handle) in pid (after the agent's thread has exited). */
int inject_unload(pid_t pid, uint64_t handle, double *stop_ms, char *err);

#endif
