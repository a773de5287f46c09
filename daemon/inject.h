/* inject.h -- loading and unloading the agent in a live process with ptrace (no gdb). */
#ifndef MEMPROF_INJECT_H
#define MEMPROF_INJECT_H

#include <stdint.h>
#include <sys/types.h>

struct inject_result {
    uint64_t handle;   /* dlopen() handle in the target, for inject_unload */
    int start_rc;      /* what start_sym(arg) returned in the target */
    double stop_ms;    /* how long the target's threads were ptrace-stopped, summed over tries */
    unsigned retries;  /* attempts abandoned because the thread was in libc/ld.so */
};

/* dlopen(lib_path) in pid, then call `int start_sym(const char *arg)` in the
 * loaded library (arg is copied into the target). On every failure path the
 * target is left running, with its registers and memory as they were, and not
 * stopped. SIGINT/SIGTERM/SIGHUP are held off while the target is stopped. */
int inject_load(pid_t pid, const char *lib_path, const char *start_sym, const char *arg,
                struct inject_result *res, char *err);

/* dlclose(handle) in pid (after the agent's thread has exited). */
int inject_unload(pid_t pid, uint64_t handle, double *stop_ms, char *err);

#endif
