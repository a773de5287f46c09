/* loop.c -- memprofd's event loop: an fd-indexed table of file events and a list of timers over one epoll.
 * Nothing runs at a fixed interval: the loop sleeps until a file event or the earliest timer. */
#include "daemon/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "common/util.h"

struct file_event {
    int mask; /* 0: unused */
    loop_file_fn *fn;
    void *data;
};

struct timer {
    long long id;
    double when; /* mp_now() seconds */
    loop_timer_fn *fn;
    void *data;
    int deleted;
    struct timer *next;
};

static int epfd = -1;
static struct file_event *events;
static int nevents;
static struct timer *timers;
static long long next_timer_id = 1;
static int stopping;

int loop_init(char *err)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) {
        mp_errno(err, "epoll_create1");
        return -1;
    }
    stopping = 0;
    return 0;
}

void loop_free(void)
{
    while (timers) {
        struct timer *t = timers;
        timers = t->next;
        free(t);
    }
    free(events);
    events = NULL;
    nevents = 0;
    if (epfd >= 0) close(epfd);
    epfd = -1;
}

static int grow_to(int fd)
{
    int n = nevents ? nevents : 64;
    struct file_event *ne;
    while (n <= fd) n *= 2;
    ne = realloc(events, (size_t)n * sizeof *ne);
    if (!ne) return -1;
    memset(ne + nevents, 0, (size_t)(n - nevents) * sizeof *ne);
    events = ne;
    nevents = n;
    return 0;
}

static uint32_t epoll_mask(int mask)
{
    return (mask & LOOP_READ ? EPOLLIN : 0) | (mask & LOOP_WRITE ? EPOLLOUT : 0);
}

int loop_add_fd(int fd, int mask, loop_file_fn *fn, void *data, char *err)
{
    struct epoll_event ev = {0};
    int op;
    if (fd < 0 || (fd >= nevents && grow_to(fd) < 0)) {
        mp_err(err, "out of memory for fd %d's events", fd);
        return -1;
    }
    op = events[fd].mask ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    ev.events = epoll_mask(events[fd].mask | mask);
    ev.data.fd = fd;
    if (epoll_ctl(epfd, op, fd, &ev) < 0) {
        mp_errno(err, "epoll_ctl(fd %d)", fd);
        return -1;
    }
    events[fd].mask |= mask;
    events[fd].fn = fn;
    events[fd].data = data;
    return 0;
}

void loop_del_fd(int fd, int mask)
{
    struct epoll_event ev = {0};
    if (fd < 0 || fd >= nevents || !events[fd].mask) return;
    events[fd].mask &= ~mask;
    if (!events[fd].mask || mask == (LOOP_READ | LOOP_WRITE)) {
        events[fd].mask = 0;
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
        return;
    }
    ev.events = epoll_mask(events[fd].mask);
    ev.data.fd = fd;
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

long long loop_add_timer(long ms, loop_timer_fn *fn, void *data)
{
    struct timer *t = calloc(1, sizeof *t);
    if (!t) return -1;
    t->id = next_timer_id++;
    t->when = mp_now() + ms / 1000.0;
    t->fn = fn;
    t->data = data;
    t->next = timers;
    timers = t;
    return t->id;
}

void loop_del_timer(long long id)
{
    for (struct timer *t = timers; t; t = t->next)
        if (t->id == id) t->deleted = 1; /* freed by the loop, which may be iterating */
}

void loop_stop(void) { stopping = 1; }

/* Milliseconds until the earliest timer (-1: none, wait for file events only). */
static int wait_ms(void)
{
    double earliest = 0, now = mp_now();
    int any = 0;
    for (struct timer *t = timers; t; t = t->next)
        if (!t->deleted && (!any || t->when < earliest)) {
            earliest = t->when;
            any = 1;
        }
    if (!any) return -1;
    if (earliest <= now) return 0;
    return (int)((earliest - now) * 1000.0) + 1;
}

static void run_timers(void)
{
    double now = mp_now();
    struct timer **pp;
    /* Timers added by callbacks go to the head and wait for the next round. */
    struct timer *first = timers;
    for (struct timer *t = first; t; t = t->next) {
        long again;
        if (t->deleted || t->when > now) continue;
        again = t->fn(t->id, t->data);
        if (again == LOOP_NOMORE) t->deleted = 1;
        else t->when = mp_now() + again / 1000.0;
    }
    for (pp = &timers; *pp;) {
        struct timer *t = *pp;
        if (t->deleted) {
            *pp = t->next;
            free(t);
        } else {
            pp = &t->next;
        }
    }
}

void loop_run(void (*before_sleep)(void))
{
    while (!stopping) {
        struct epoll_event evs[64];
        int n;
        if (before_sleep) before_sleep();
        if (stopping) break;
        n = epoll_wait(epfd, evs, 64, wait_ms());
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd, mask = 0;
            struct file_event *fe;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) mask |= LOOP_READ;
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) mask |= LOOP_WRITE;
            /* An earlier callback of this round may have removed or replaced the fd. */
            if (fd >= nevents) continue;
            fe = &events[fd];
            mask &= fe->mask;
            if (mask) fe->fn(fd, mask, fe->data);
        }
        run_timers();
    }
}
