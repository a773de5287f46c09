/* fork.c -- a fork of the target: the child forgets the parent's session, or, under memprof run
 * --follow-fork, starts one of its own. */
#include "agent/fork.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "agent/gil.h"
#include "agent/hooks.h"
#include "agent/native.h"
#include "agent/pycall.h"
#include "agent/state.h"
#include "agent/uplink.h"

static int atfork_registered;
static int (*respawn)(void); /* start.c's agent_spawn_thread: the fork child's agent thread */

/* In a forked child there is no agent thread: forget the session so that an
 * attach to the child starts afresh, and do not keep the parent's daemon
 * connection open. glibc drops this handler when the library is dlclosed. */
static void agent_atfork_child(void)
{
    native_atfork_child();
    int fd = atomic_exchange(&agent_sock_fd, -1);
    int was_running = atomic_load(&agent_running);
    if (fd >= 0) close(fd);
    gil_atfork_child(); /* no agent thread here to wait for */
    /* the parent's agent thread may have held it at the fork */
    launch_atfork_child();
    atomic_store(&agent_conn_ready, 0);
    atomic_store(&agent_final_asked, 0);
    atomic_store(&agent_running, 0);
    if (agent_preloaded && agent_conf.follow && was_running && hooks_installed() && !hooks_frozen()) {
        /* memprof run --follow-fork: the child is a session of its own, with
         * a fresh agent thread (it needs no GIL to connect and report) */
        hooks_atfork_follow();
        pycall_atfork_child();
        if (agent_wake_fd >= 0) close(agent_wake_fd);
        agent_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        atomic_store(&agent_running, 1);
        if (respawn() != 0) {
            atomic_store(&agent_running, 0);
            hooks_atfork_child();
        }
        return;
    }
    hooks_atfork_child(); /* the child is not tracked: wrappers pass through */
}

void fork_watch(int (*spawn)(void))
{
    respawn = spawn;
    if (!atfork_registered && pthread_atfork(NULL, NULL, agent_atfork_child) == 0)
        atfork_registered = 1;
}
