/* launch.c -- memprof run: the agent preloaded into a program at its start.
 *
 * `memprof run -- python script.py` starts the program with LD_PRELOAD naming
 * this library and MEMPROF_RUN holding the agent's settings. The constructor
 * below runs before main: in a process that is not a Python (a shell, a tool
 * the program starts) it does nothing. In a Python it registers an audit hook
 * (PySys_AddAuditHook may be called before Py_Initialize, and a static build
 * exports it like a shared one). The first audit event raised once the
 * interpreter is initialized -- at the latest cpython.run_file, run_module or
 * run_command, right before the program's first line -- starts the agent thread,
 * waits for the tracking settings the daemon sends it after its hello, and
 * installs the allocation hooks with them under the GIL. MEMPROF_RUN carries
 * only what it takes to connect (socket, token) and follow=0|1. After that the
 * hook costs a load and a compare per audit event (imports, open, exec...).
 *
 * The process's end: Python's atexit (pycall.c) and os._exit (below, how
 * multiprocessing children end) send the final report first. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/hooks.h"
#include "agent/install.h"
#include "agent/log.h"
#include "agent/pyapi.h"
#include "agent/pycall.h"
#include "agent/start.h"
#include "agent/state.h"

/* MEMPROF_RUN's settings (the attach argument's key=value form). */
static int agent_launch_configure(const char *arg, int *follow, char *err)
{
    if (agent_configure(arg) < 0) {
        mp_err(err, "malformed MEMPROF_RUN settings");
        return -1;
    }
    *follow = agent_conf.follow;
    agent_debug = agent_conf.debug || conf_environ_flag("MEMPROF_AGENT_DEBUG");
    return 0;
}

/* With the GIL held, once the interpreter is initialized: start the agent thread, wait for the daemon's
 * tracking settings (it connects and says hello meanwhile; it needs no GIL for that), install the hooks,
 * the atexit callback and the profile builtin with them. Without the settings in LAUNCH_WAIT_S (or the
 * thread gave up: no daemon, refused) nothing is hooked. */
static int agent_launch_setup(char *err)
{
    struct hooks_conf hc;
    int idle = 0, rc;
    if (pyapi_load_version(err) < 0) return -1;
    if (!pyapi_abi()) {
        mp_err(err, "%s", pyapi_abi_error());
        return -1;
    }
    agent_preloaded = 1;
    if (!atomic_compare_exchange_strong(&agent_running, &idle, 1)) return 0;
    launch_set(LAUNCH_WAITING);
    if (agent_spawn_thread() != 0) {
        atomic_store(&agent_running, 0);
        launch_set(LAUNCH_DONE);
        mp_err(err, "cannot start the agent thread");
        return -1;
    }
    if (launch_wait(LAUNCH_WAITING, mp_now() + LAUNCH_WAIT_S) != LAUNCH_GOT) {
        launch_set(LAUNCH_DONE);
        if (atomic_load(&agent_running))
            mp_err(err, "no tracking settings from memprofd within %.0f s", LAUNCH_WAIT_S);
        else
            mp_err(err, "the agent's session with memprofd ended before its tracking settings came "
                        "(MEMPROF_AGENT_DEBUG=1 says why)");
        return -1;
    }
    rc = 0;
    if (agent_conf.track) {
        hc = (struct hooks_conf){.rate = agent_conf.rate, .frames = agent_conf.frames, .exact = agent_conf.exact};
        if ((rc = hooks_install(&hc, err)) == 0) {
            if (pycall_atexit_register(agent_final_report) < 0) agent_log("no atexit callback: the last figures may be partial");
            int prc = pycall_profile_install();
            agent_log("hooks installed before the first line (%s, rate %llu)%s", agent_conf.exact ? "exact" : "sampling",
                      (unsigned long long)agent_conf.rate,
                      prc < 0 ? "; no profile builtin" : prc > 0 ? "; profile builtin already defined" : "");
            native_start();
        }
    }
    launch_set(LAUNCH_DONE); /* the agent thread answers the daemon with what is in force */
    return rc;
}

/* 1 once agent_launch_setup succeeded. */
static int agent_launched(void) { return agent_preloaded; }

static int setup_state; /* 0 waiting, 1 in progress (the GIL serializes), 2 done */

static void warn(const char *what, const char *err)
{
    char line[MP_ERRLEN + 128];
    int n = snprintf(line, sizeof line, "memprof: %s: %s; the program runs without memory tracking\n", what, err);
    if (n > 0 && write(STDERR_FILENO, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1)) < 0) {}
}

static int audit_hook(const char *event, void *args, void *data)
{
    char err[MP_ERRLEN];
    (void)event, (void)args, (void)data;
    if (__builtin_expect(setup_state != 0, 1)) return 0;
    if (!PY.IsInitialized || !PY.IsInitialized()) return 0; /* still starting up */
    setup_state = 1; /* what the setup itself raises (imports) comes back here */
    if (agent_launch_setup(err) < 0) warn("memprof run", err);
    setup_state = 2;
    return 0;
}

/* Take this library out of LD_PRELOAD and MEMPROF_RUN out of the environment,
 * so that the programs this one starts run without it. */
static void scrub_env(void)
{
    Dl_info self;
    const char *pre = getenv("LD_PRELOAD");
    unsetenv("MEMPROF_RUN");
    if (!pre || !dladdr((void *)scrub_env, &self) || !self.dli_fname) return;
    char *copy = strdup(pre), *out = calloc(1, strlen(pre) + 1), *save = NULL;
    if (!copy || !out) {
        free(copy);
        free(out);
        return;
    }
    for (char *tok = strtok_r(copy, " :", &save); tok; tok = strtok_r(NULL, " :", &save)) {
        if (!strcmp(tok, self.dli_fname)) continue;
        if (*out) strcat(out, " ");
        strcat(out, tok);
    }
    if (*out) setenv("LD_PRELOAD", out, 1);
    else unsetenv("LD_PRELOAD");
    free(copy);
    free(out);
}

__attribute__((constructor)) static void launch_init(void)
{
    int (*add_hook)(int (*)(const char *, void *, void *), void *);
    const char *arg = getenv("MEMPROF_RUN"); /* before main: one thread, getenv is safe */
    char err[MP_ERRLEN];
    int follow = 0;
    if (!arg || !*arg) return;
    add_hook = (int (*)(int (*)(const char *, void *, void *), void *))dlsym(RTLD_DEFAULT, "PySys_AddAuditHook");
    if (!add_hook) return; /* not a Python 3.8+: a shell, a tool, an older Python */
    if (agent_launch_configure(arg, &follow, err) < 0) {
        warn("memprof run", err);
        return;
    }
    if (!follow) scrub_env();
    if (pyapi_init("", err) < 0) {
        warn("memprof run", err);
        return;
    }
    if (add_hook(audit_hook, NULL) < 0) {
        warn("memprof run", "PySys_AddAuditHook failed");
        return;
    }
    /* The audit hook lives here and cannot be removed: the library must stay
     * mapped, also when it was dlopen'ed (the IPython extension's ctypes) and a
     * detach dlcloses it. */
    Dl_info self;
    if (dladdr((void *)audit_hook, &self) && self.dli_fname)
        dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* os._exit (multiprocessing's children end with it) skips atexit: the final
 * report goes out here. Only LD_PRELOAD makes this the process's _exit; an
 * injected agent is found after libc and never called. */
AGENT_API void _exit(int status)
{
    void (*real)(int);
    if (agent_launched()) agent_final_report(PYCALL_FINAL_WAIT_S);
    real = (void (*)(int))dlsym(RTLD_NEXT, "_exit");
    if (real) real(status);
    for (;;) syscall(SYS_exit_group, status);
}
