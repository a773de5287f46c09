/* start.c -- the agent's start: memprof_agent_start on the target's hijacked thread, and the agent's own
 * thread: wait for Python, take the GIL once, connect and serve, clean up on every way out. */
#include "agent/agent.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "agent/fork.h"
#include "agent/gil.h"
#include "agent/install.h"
#include "agent/log.h"
#include "agent/pyapi.h"
#include "agent/start.h"
#include "agent/state.h"
#include "agent/uplink.h"

/* Pages are only committed when touched, so this costs what is used. It is
 * larger than the agent core needs because request handlers run the target's
 * C API (and through it, Python code such as __sizeof__) on this stack. */
#define AGENT_STACK_SIZE (2u << 20)
#define INIT_WAIT_S 30.0        /* for Py_IsInitialized in a process still starting */
#define AGENT_THREAD_NAME "memprof-agent" /* memprofd's attach.c looks for it (AGENT_THREAD) */

/* Wait for a starting interpreter. 0 when initialized, -1 when it never is or
 * is going away. */
static int wait_initialized(char *err)
{
    double deadline = mp_now() + INIT_WAIT_S;
    while (!PY.IsInitialized()) {
        struct timespec ts = {0, AGENT_POLL_NS};
        if (PY.IsFinalizing()) {
            mp_err(err, "the interpreter is finalizing");
            return -1;
        }
        if (mp_now() > deadline) {
            mp_err(err, "Python not initialized after %.0f s", INIT_WAIT_S);
            return -1;
        }
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Take the GIL once: proves we can, measures how long it takes, reads the version. */
static int gil_probe(struct agent_link *s, char *err)
{
    int state;
    double t0 = mp_now();
    if (gil_take(&state) < 0) {
        mp_err(err, "the interpreter is finalizing");
        return -1;
    }
    s->gil_wait_ms = (mp_now() - t0) * 1e3;
    if (pyapi_load_version(err) < 0) agent_log("%s", err); /* go on without a version */
    else if (!pyapi_abi()) agent_log("%s", pyapi_abi_error()); /* go on: no stacks, no census */
    gil_give(state);
    return 0;
}

static void agent_run(struct agent_link *s)
{
    char err[MP_ERRLEN] = "";
    prctl(PR_SET_NAME, AGENT_THREAD_NAME, 0, 0, 0); /* in top -H, py-spy, gdb (named so from birth: agent_spawn_thread) */
    agent_debug = agent_conf.debug || conf_environ_flag("MEMPROF_AGENT_DEBUG");
    agent_log("thread started (sock=%s pylib=%s interval=%u ms)", agent_conf.sock,
              agent_conf.pylib[0] ? agent_conf.pylib : "-", agent_conf.interval_ms);
    fork_watch(agent_spawn_thread);

    if (agent_preloaded) {
        /* memprof run: the API and the version were set up on a Python thread
         * before the program's first line (launch.c), which waits for the
         * tracking settings the daemon sends after the hello (on_tracking) */
        if (link_connect(s, err) < 0 || link_hello(s, 1, err) < 0) {
            agent_log("%s", err);
            return;
        }
        agent_log("connected (memprof run)");
        link_loop(s);
        return;
    }
    if (pyapi_init(agent_conf.pylib, err) < 0) {
        /* Not a Python we can drive: say who we are, then leave. */
        agent_log("%s", err);
        if (link_connect(s, err) == 0) link_hello(s, 0, err);
        return;
    }
    agent_log("C API found in the %s", pyapi_where());
    if (wait_initialized(err) < 0 || gil_probe(s, err) < 0) {
        agent_log("%s", err);
        return;
    }
    /* No hook yet: the daemon's first request is the tracking settings
     * (on_tracking); it reports the attach done once they are in force. */
    if (link_connect(s, err) < 0 || link_hello(s, 1, err) < 0) {
        agent_log("%s", err);
        return;
    }
    agent_log("attached");
    link_loop(s);
}

/* Runs on the normal way out and when CPython ends the thread inside
 * PyGILState_Ensure during finalization. After launch_thread_ended's store to
 * agent_running no code of this library runs on this thread (only returns). */
static void agent_cleanup(void *arg)
{
    struct agent_link *s = arg;
    gil_exit();
    atomic_store(&agent_conn_ready, 0);
    agent_undo();
    link_close(s);
    if (!agent_preloaded) pyapi_fini(); /* memprof run: launch.c's audit hook and the exit path keep using it */
    agent_log("thread exits");
    launch_thread_ended(); /* agent_running is 0: a launch waiting for the settings gives up */
}

static void *agent_main(void *unused)
{
    struct agent_link s = {.fd = -1};
    (void)unused;
    gil_thread_start();
    pthread_cleanup_push(agent_cleanup, &s);
    agent_run(&s);
    pthread_cleanup_pop(1);
    return NULL;
}

int agent_spawn_thread(void)
{
    pthread_attr_t attr;
    pthread_t th;
    sigset_t all, old;
    char name[17] = "";
    int rc, renamed;

    if (agent_wake_fd < 0) agent_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (pthread_attr_init(&attr)) return -2;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, AGENT_STACK_SIZE);
    /* The new thread inherits this mask: with every signal blocked in it, the
     * kernel keeps delivering the target's signals to the target's threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* Named from birth (a thread inherits its creator's name): memprofd tells by the name whether a
     * thread of ours still runs code of this library before it unloads it, also when the agent never
     * said hello (a failed attach); the creator gets its own name back at once. */
    renamed = prctl(PR_GET_NAME, name, 0, 0, 0) == 0 && prctl(PR_SET_NAME, AGENT_THREAD_NAME, 0, 0, 0) == 0;
    rc = pthread_create(&th, &attr, agent_main, NULL);
    if (renamed) prctl(PR_SET_NAME, name, 0, 0, 0);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    return rc ? -2 : 0;
}

/* dlclose after a detach: the library goes away, its eventfd with it (a new copy
 * makes its own). Not while an agent thread may still poll it (process exit). */
__attribute__((destructor)) static void agent_unloaded(void)
{
    if (!atomic_load(&agent_running) && agent_wake_fd >= 0) {
        close(agent_wake_fd);
        agent_wake_fd = -1;
    }
}

AGENT_API int memprof_agent_start(const char *arg)
{
    int saved_errno = errno; /* the hijacked thread may be about to read it */
    int idle = 0, rc;
    if (!atomic_compare_exchange_strong(&agent_running, &idle, 1)) return 1;
    rc = agent_configure(arg) < 0 ? -1 : agent_spawn_thread();
    if (rc) atomic_store(&agent_running, 0);
    errno = saved_errno;
    return rc;
}
