/* rss_tracked.c -- memprof rss beside a memprofd session on the same process: its tracked live heap, by line. */
#include "cli/rss_tracked.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/alloc_view.h"
#include "cli/commands.h"
#include "client/client.h"

#define CONNECT_REPLY_MS 3000 /* a daemon that is there answers from its own tables */

void rss_tracked_clear(struct rss_tracked *t)
{
    for (size_t i = 0; i < t->nlines; i++) free(t->lines[i].file);
    free(t->lines);
    memset(t, 0, sizeof *t);
}

static int line_cmp(const void *a, const void *b)
{
    const struct rss_tracked_line *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* pid's AllocData from the daemon: the envelope, or NULL with t->why. */
static Envelope *query(int pid, struct rss_tracked *t)
{
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply = NULL;
    Memprof__AllocQuery q = MEMPROF__ALLOC_QUERY__INIT;
    char err[MP_ERRLEN];
    int fd = client_connect(client_socket_opt, 0, err);
    if (fd < 0) {
        snprintf(t->why, sizeof t->why, "no memprof session on pid %d (no memprofd answering)", pid);
        return NULL;
    }
    q.pid = pid;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_QUERY;
    env.alloc_query = &q;
    if (client_call(fd, &env, &reply, CONNECT_REPLY_MS, err) < 0) reply = NULL;
    close(fd);
    if (reply && reply->msg_case != MEMPROF__ENVELOPE__MSG_ALLOC_DATA) {
        wire_free(reply);
        reply = NULL;
        snprintf(err, sizeof err, "memprofd sent an unexpected reply");
    }
    if (reply && client_reply_error(reply->alloc_data->error, reply->alloc_data->code, err) < 0) {
        wire_free(reply);
        reply = NULL;
    }
    if (!reply) {
        if (client_error_code() == MEMPROF__ERROR_REPLY__CODE__NOT_ATTACHED)
            snprintf(t->why, sizeof t->why, "no memprof session on pid %d", pid);
        else snprintf(t->why, sizeof t->why, "no memprof session on pid %d (%.200s)", pid, err);
    }
    return reply;
}

void rss_tracked_fetch(int pid, int gone, struct rss_tracked *t)
{
    Envelope *reply;
    const Memprof__SessionInfo *si;
    struct view v;
    struct alloc_row *rows;
    size_t n;
    rss_tracked_clear(t);
    alloc_fold_ctors = 0; /* joined with where pages are faulted in: what __init__ allocates stays in __init__ */
    alloc_show_libraries = 1; /* and what numpy's Python wrappers allocate in them */
    if (!(reply = query(pid, t))) return;
    si = reply->alloc_data->session;
    /* an ended session of a process that is not ours (the pid reused) */
    if (!si || (si->state != MEMPROF__SESSION_INFO__STATE__ATTACHED &&
                !(gone && si->state == MEMPROF__SESSION_INFO__STATE__EXITED))) {
        snprintf(t->why, sizeof t->why, "no memprof session on pid %d (its session is %s)", pid,
                 si ? wire_state_name(si->state) : "unknown");
        wire_free(reply);
        return;
    }
    t->session = si->id;
    snprintf(t->mode, sizeof t->mode, "%s", wire_mode_name(si->mode));
    snprintf(t->state, sizeof t->state, "%s", wire_state_name(si->state));
    view_from_data(&v, reply->alloc_data);
    wire_free(reply);
    t->python = v.live_python > 0 ? v.live_python : 0;
    t->native = v.live_native > 0 ? v.live_native : 0;
    t->time = v.ts;
    n = rows_build(&v, BY_LINE, SORT_OWN, &rows);
    if (n && (t->lines = calloc(n, sizeof *t->lines))) {
        for (size_t i = 0; i < n; i++) {
            const struct frame *f = &v.frames[rows[i].frame];
            if (rows[i].own <= 0 || !f->line || !(t->lines[t->nlines].file = strdup(f->file))) continue;
            t->lines[t->nlines].line = (int)f->line;
            t->lines[t->nlines++].live = rows[i].own;
        }
        qsort(t->lines, t->nlines, sizeof *t->lines, line_cmp);
    }
    rows_free(rows, n);
    view_free(&v);
    t->ok = 1;
}

double rss_tracked_at(const struct rss_tracked *t, const char *file, int line)
{
    struct rss_tracked_line key = {(char *)file, line, 0}, *hit;
    if (!t->ok || !t->nlines || !file || !file[0]) return 0;
    hit = bsearch(&key, t->lines, t->nlines, sizeof *t->lines, line_cmp);
    return hit ? hit->live : 0;
}
