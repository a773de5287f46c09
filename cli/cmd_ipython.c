/* cmd_ipython.c -- the IPython extension's helpers: `memprof ipython-path` (where its
 * Python package is) and `memprof inproc` (a run for an interpreter loading the agent itself). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "commands.h"

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
