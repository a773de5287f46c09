/* state.c -- the agent's shared state: its settings and flags, the start argument parsed into them, and the
 * handoffs between its threads (memprof run's wait for the tracking settings, the final report). */
#include "agent/state.h"

#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>

#include "agent/agent.h"
#include "agent/hooks.h"
#include "common/util.h"

#define AGENT_ARG_MAX 8192

struct agent_conf agent_conf;
atomic_int agent_running;
int agent_preloaded;
int agent_wake_fd = -1;
atomic_int agent_final_asked, agent_final_done, agent_conn_ready;

static pthread_mutex_t launch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t launch_cv = PTHREAD_COND_INITIALIZER;
static int launch_state; /* under launch_mu */

int agent_configure(const char *arg)
{
    static char argbuf[AGENT_ARG_MAX];
    size_t n;
    if (!arg || (n = strnlen(arg, sizeof argbuf)) == sizeof argbuf) return -1;
    memcpy(argbuf, arg, n + 1);
    return conf_parse(&agent_conf, argbuf);
}

int launch_wait(int while_state, double deadline)
{
    int st;
    pthread_mutex_lock(&launch_mu);
    while (launch_state == while_state && mp_now() < deadline &&
           (while_state != LAUNCH_WAITING || atomic_load(&agent_running))) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20000000L; /* a slice: the deadline is monotonic */
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&launch_cv, &launch_mu, &ts);
    }
    st = launch_state;
    pthread_mutex_unlock(&launch_mu);
    return st;
}

void launch_set(int state)
{
    pthread_mutex_lock(&launch_mu);
    launch_state = state;
    pthread_cond_broadcast(&launch_cv);
    pthread_mutex_unlock(&launch_mu);
}

int launch_hand_over(void)
{
    int handed = 0;
    pthread_mutex_lock(&launch_mu);
    if (launch_state == LAUNCH_WAITING) {
        launch_state = LAUNCH_GOT; /* the launch installs the hooks, holding the GIL */
        pthread_cond_broadcast(&launch_cv);
        handed = 1;
    }
    pthread_mutex_unlock(&launch_mu);
    return handed;
}

void launch_thread_ended(void)
{
    pthread_mutex_lock(&launch_mu);
    atomic_store(&agent_running, 0);
    pthread_cond_broadcast(&launch_cv); /* a launch waiting for the settings gives up */
    pthread_mutex_unlock(&launch_mu);
}

void launch_atfork_child(void)
{
    pthread_mutex_init(&launch_mu, NULL);
    pthread_cond_init(&launch_cv, NULL);
}

/* Freeze the hooks and have the agent thread send everything it has now (uplink.c's final_flush). */
void agent_final_report(double wait_s)
{
    struct timespec ts = {0, 200000};
    double deadline = mp_now() + wait_s;
    hooks_freeze();
    /* a thread just started (a forked child's) may still be saying hello */
    while (atomic_load(&agent_running) && !atomic_load(&agent_conn_ready) && mp_now() < deadline) nanosleep(&ts, NULL);
    if (!atomic_load(&agent_running) || !atomic_load(&agent_conn_ready) || agent_wake_fd < 0) return;
    atomic_store(&agent_final_done, 0);
    atomic_store(&agent_final_asked, 1);
    if (eventfd_write(agent_wake_fd, 1) < 0) return;
    while (!atomic_load(&agent_final_done) && atomic_load(&agent_running) && mp_now() < deadline) nanosleep(&ts, NULL);
}
