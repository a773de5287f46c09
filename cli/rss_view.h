/* rss_view.h -- memprof rss's figures: events summed into rows, RSS read from /proc, the text and JSON views. */
#ifndef MEMPROF_CLI_RSS_VIEW_H
#define MEMPROF_CLI_RSS_VIEW_H

#include "cli/rss.h"

enum rss_by { RSS_BY_LINE, RSS_BY_FUNCTION, RSS_BY_NATIVE, RSS_BY_MAPPING };

struct rss_opts {
    int pid, once, json, limit;
    unsigned sample;             /* one page fault in about this many is recorded */
    int rss_stat;                /* kmem:rss_stat followed: the peak RSS between refreshes */
    double interval;
    enum rss_by by;
    const struct pyabi *abi;     /* NULL: no Python line (no_python says why) */
    char version[32];            /* the target's Python, "" when none */
    char no_python[MP_ERRLEN];
};

struct rss_view;
struct rss_view *rss_view_new(const struct rss_opts *o);
void rss_view_attach(struct rss_view *v, struct rss_trace *t);
/* RSS file, anon and shmem in pages as /proc had them at rss_view_new (rss_trace_open's start_pages). */
void rss_view_start_pages(const struct rss_view *v, uint64_t pages[RSS_NMEMBERS]);
void rss_view_event(struct rss_view *v, const struct rss_event *e);
/* One refresh: a timeline point and the view (text, or a JSON line). exited: the process is gone (the last
 * figures read are kept); final: the last refresh. */
void rss_view_tick(struct rss_view *v, int exited, int final);
/* memprof rss --save: the rows (faulted-in bytes as allocated = live bytes; the Python line alone, or the native
 * call chain when none) and the RSS timeline as an AllocData envelope in path, which memprof plot and export
 * read with --rss. 0, or -1 with err. */
int rss_view_save(struct rss_view *v, const char *path, char *err);
void rss_view_free(struct rss_view *v);

#endif
