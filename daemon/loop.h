/* loop.h -- memprofd's event loop, in the style of redis' ae.c: file events by fd, timers, one epoll. */
#ifndef MEMPROF_LOOP_H
#define MEMPROF_LOOP_H

#define LOOP_READ 1
#define LOOP_WRITE 2
#define LOOP_NOMORE (-1) /* a timer callback's answer: do not run again */

/* Called with the events that fired (LOOP_READ and/or LOOP_WRITE; errors and hang-ups count as both). */
typedef void loop_file_fn(int fd, int mask, void *data);
/* Returns the milliseconds until it should run again, or LOOP_NOMORE. */
typedef long loop_timer_fn(long long id, void *data);

int loop_init(char *err);
void loop_free(void);
/* Adds mask to fd's interest; fn and data replace any earlier ones for that fd. 0 or -1 (err set). */
int loop_add_fd(int fd, int mask, loop_file_fn *fn, void *data, char *err);
/* Removes mask from fd's interest (all of it: the fd is forgotten). */
void loop_del_fd(int fd, int mask);
/* Runs fn once ms from now (and again as it asks). Returns the timer's id (> 0), or -1 without memory. */
long long loop_add_timer(long ms, loop_timer_fn *fn, void *data);
void loop_del_timer(long long id);
/* Runs until loop_stop(); before_sleep (may be NULL) runs before every wait. */
void loop_run(void (*before_sleep)(void));
void loop_stop(void);

#endif
