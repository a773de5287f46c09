/* rss_tracked.h -- memprof rss beside a memprofd session on the same process: the agent's tracked live heap. */
#ifndef MEMPROF_CLI_RSS_TRACKED_H
#define MEMPROF_CLI_RSS_TRACKED_H

#include <stddef.h>

#include "common/util.h"

/* One line's live bytes as the agent attributes them (top's OWN LIVE by line). */
struct rss_tracked_line {
    char *file;
    int line;
    double live;
};

struct rss_tracked {
    int ok;                 /* a session answered: the figures below hold */
    unsigned session;       /* its id */
    char mode[16], state[16];
    double python, native;  /* tracked live bytes: allocated by Python, by C code (attach --native) */
    double time;            /* when the agent sent the report they come from (unix seconds) */
    struct rss_tracked_line *lines; /* sorted by file, line */
    size_t nlines;
    char why[MP_ERRLEN];    /* !ok: why not ("no memprof session on pid 42") */
};

/* Ask memprofd (--socket / $MEMPROF_SOCKET / the default socket; never started) for pid's session: t->ok, or
 * t->why. A session that ended is taken only when gone is set (the process has exited too). Short timeouts:
 * no daemon costs one failed connect. */
void rss_tracked_fetch(int pid, int gone, struct rss_tracked *t);
/* The live bytes the session attributes to file:line (0 when none). */
double rss_tracked_at(const struct rss_tracked *t, const char *file, int line);
void rss_tracked_clear(struct rss_tracked *t);

#endif
