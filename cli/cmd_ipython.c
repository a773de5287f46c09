/* cmd_ipython.c -- the IPython extension's helpers: `memprof ipython-path` (where its
 * Python package is) and `memprof inproc` (a run for an interpreter loading the agent itself). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "client/client.h"

static const char *about_ipython_path =
    "Print the directory holding memprof's IPython extension (the `memprof`\n"
    "Python package), for an interpreter or virtualenv that does not see it:\n"
    "  $ PYTHONPATH=$(memprof ipython-path) ipython\n"
    "  In [1]: %load_ext memprof\n";

static const char *about_inproc =
    "Used by the IPython extension (%load_ext memprof), not by hand: asks memprofd\n"
    "(started if needed) for a run its parent process joins by loading the agent\n"
    "itself. Prints one line, AGENT_LIBRARY<TAB>AGENT_SETTINGS, then keeps the\n"
    "run open until its standard input closes. Exact counts unless --sample-rate.\n";

/* The directory this program lives in (no trailing slash), or "" */
static void self_dir(char *out, size_t len)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    char *slash;
    out[0] = 0;
    if (n <= 0) return;
    buf[n] = 0;
    if ((slash = strrchr(buf, '/'))) *slash = 0;
    snprintf(out, len, "%s", buf);
}

int cmd_ipython_path(int argc, char **argv)
{
    char dir[PATH_MAX], cand[PATH_MAX + 64], real[PATH_MAX];
    /* installed: PREFIX/bin/memprof -> PREFIX/lib/python3/dist-packages; built: build/memprof -> python/ */
    const char *rel[] = {"/../lib/python3/dist-packages", "/../python"};
    const struct opt opts[] = {{0}};
    const struct opt_cmd cmd = {"memprof ipython-path", opts, .about = about_ipython_path};
    int rc;
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    self_dir(dir, sizeof dir);
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(cand, sizeof cand, "%s%s/memprof/__init__.py", dir, rel[i]);
        if (access(cand, R_OK) == 0) {
            snprintf(cand, sizeof cand, "%s%s", dir, rel[i]);
            printf("%s\n", realpath(cand, real) ? real : cand);
            return 0;
        }
    }
    return cli_fail("the IPython extension is not installed next to %s (make install puts it in "
                    "PREFIX/lib/python3/dist-packages/memprof)", dir[0] ? dir : "this program");
}

/* --sample-rate BYTES: sampling instead of exact counts */
static int set_rate(const char *arg, void *dest)
{
    Memprof__RunRequest *rq = dest;
    char *end;
    errno = 0;
    rq->sample_rate = strtoull(arg, &end, 10);
    if (errno || *end || end == arg || arg[0] == '-' || !rq->sample_rate) return -1;
    rq->exact = 0;
    return 0;
}

int cmd_inproc(int argc, char **argv)
{
    Memprof__RunRequest rq = MEMPROF__RUN_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply = NULL;
    char err[MP_ERRLEN], buf[256], agent[PATH_MAX];
    int fd, rc;
    const struct opt opts[] = {
        {"sample-rate", 0, OPT_CALL, &rq, "BYTES", "mean bytes between samples (default: exact counts)",
         .what = "a number of bytes of at least 1", .set = set_rate},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof inproc", opts, .about = about_inproc};
    rq.exact = 1;
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if ((fd = client_connect(client_socket_opt, 1, err)) < 0) return cli_fail("%s", err);
    env.msg_case = MEMPROF__ENVELOPE__MSG_RUN;
    env.run = &rq;
    if (client_call(fd, &env, &reply, 10000, err) < 0) return cli_fail("%s", err);
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_RUN_REPLY)
        return cli_fail("memprofd does not know runs (is it older than this memprof?)");
    if (reply->run_reply->error && reply->run_reply->error[0]) return cli_fail("%s", reply->run_reply->error);
    if (client_check_agent(reply->run_reply->agent_lib, agent, sizeof agent, err) < 0) return cli_fail("%s", err);
    printf("%s\t%s\n", agent, reply->run_reply->agent_env);
    fflush(stdout);
    /* the run lasts as long as this connection: until the parent closes our stdin */
    while (fread(buf, 1, sizeof buf, stdin) > 0) {}
    wire_free(reply);
    close(fd);
    return 0;
}

/* ------------------------------------------------------------ %mprun's data */

static const char *about_mprun_data =
    "Used by the IPython extension's %mprun, not by hand: what its line report\n"
    "needs of a session, and nothing more -- the frames in the given files, the\n"
    "stacks through them (their frames in those files only, innermost first) with\n"
    "their figures, and the total allocated -- as one JSON object. No history and\n"
    "no other stacks, so its cost does not grow with the session's age.\n";

#define MPRUN_FILES 64

struct files {
    const char *v[MPRUN_FILES];
    int n;
};

static int add_file(const char *arg, void *dest)
{
    struct files *f = dest;
    if (f->n == MPRUN_FILES || !*arg) return -1;
    f->v[f->n++] = arg;
    return 0;
}

static void num(const char *name, double v)
{
    printf(", \"%s\": %.15g", name, isfinite(v) ? v : 0.0);
}

int cmd_mprun_data(int argc, char **argv)
{
    int pid = 0, rc;
    struct files files = {.n = 0};
    char err[MP_ERRLEN];
    Envelope *reply;
    const Memprof__AllocData *d;
    unsigned char *keep;
    const Memprof__AllocStack **stack;
    size_t nstack = 1;
    double allocated = 0;
    const struct opt opts[] = {
        CLI_PID_OPT(&pid),
        {"file", 0, OPT_CALL, &files, "FILE", "a file whose frames and stacks to print (repeatable)",
         .what = "a file name (at most 64 of them)", .set = add_file, .required = 1},
        CLIENT_SOCKET_OPT,
        {0}};
    const struct opt_cmd cmd = {"memprof mprun-data", opts, .about = about_mprun_data};
    if (opts_parse(&cmd, argc, argv, &rc) < 0) return rc;
    if (alloc_fetch(pid, 0, 0, &reply, err) < 0) return cli_fail_call(err);
    d = reply->alloc_data;
    for (size_t i = 0; i < d->n_stats; i++) allocated += d->stats[i]->alloc_bytes;
    /* the frames to keep, by id (frame ids are dense, from 0) */
    size_t nkeep = 1;
    for (size_t i = 0; i < d->n_frames; i++)
        if (d->frames[i]->id >= nkeep) nkeep = d->frames[i]->id + 1;
    if (!(keep = calloc(nkeep, 1))) {
        wire_free(reply);
        return cli_fail("out of memory");
    }
    /* the stacks by id (ids are dense, from 0) */
    for (size_t i = 0; i < d->n_stacks; i++)
        if (d->stacks[i]->id >= nstack) nstack = d->stacks[i]->id + 1;
    if (!(stack = calloc(nstack, sizeof *stack))) {
        free(keep);
        wire_free(reply);
        return cli_fail("out of memory");
    }
    for (size_t i = 0; i < d->n_stacks; i++) stack[d->stacks[i]->id] = d->stacks[i];
    printf("{\"mode\": \"%s\", \"totals\": {\"allocated\": %.15g}, \"frames\": [", d->exact ? "exact" : "sampling",
           allocated);
    for (size_t i = 0, n = 0; i < d->n_frames; i++) {
        const Memprof__AllocFrame *fr = d->frames[i];
        int in = 0;
        for (int k = 0; k < files.n && !in; k++) in = fr->file && !strcmp(fr->file, files.v[k]);
        if (!in || fr->native) continue;
        keep[fr->id] = 1;
        printf("%s{\"id\": %u, \"file\": ", n++ ? ", " : "", fr->id);
        cli_json_str(stdout, fr->file);
        fputs(", \"function\": ", stdout);
        cli_json_str(stdout, fr->function);
        printf(", \"line\": %u, \"first_line\": %u}", fr->line, fr->first_line);
    }
    fputs("],\n \"stacks\": [", stdout);
    for (size_t i = 0, n = 0; i < d->n_stats; i++) {
        const Memprof__AllocStat *t = d->stats[i];
        const Memprof__AllocStack *st = t->stack < nstack ? stack[t->stack] : NULL;
        int any = 0;
        for (size_t k = 0; st && k < st->n_frames && !any; k++) any = st->frames[k] < nkeep && keep[st->frames[k]];
        if (!any) continue;
        printf("%s\n  {\"id\": %u, \"frames\": [", n++ ? "," : "", st->id);
        for (size_t k = 0, m = 0; k < st->n_frames; k++)
            if (st->frames[k] < nkeep && keep[st->frames[k]]) printf("%s%u", m++ ? ", " : "", st->frames[k]);
        fputs("]", stdout);
        num("live", t->alloc_bytes - t->free_bytes);
        num("alloc_bytes", t->alloc_bytes);
        num("alloc_count", t->alloc_count);
        num("peak_live", t->peak_live);
        fputs("}", stdout);
    }
    fputs("]}\n", stdout);
    free(stack);
    free(keep);
    wire_free(reply);
    return fflush(stdout) == 0 ? 0 : cli_fail("cannot write: %s", strerror(errno));
}
