/* cmd_ipython.c -- the IPython extension's helpers: `memprof ipython-path` (where its
 * Python package is) and `memprof inproc` (a run for an interpreter loading the agent itself). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client.h"
#include "commands.h"

static const char *usage_ipython_path =
    "usage: memprof ipython-path\n"
    "\n"
    "Print the directory holding memprof's IPython extension (the `memprof`\n"
    "Python package), for an interpreter or virtualenv that does not see it:\n"
    "  $ PYTHONPATH=$(memprof ipython-path) ipython\n"
    "  In [1]: %load_ext memprof\n";

static const char *usage_inproc =
    "usage: memprof inproc [--sample-rate BYTES] [--socket PATH]\n"
    "\n"
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
    if (cli_wants_help(argc, argv)) {
        fputs(usage_ipython_path, stdout);
        return 0;
    }
    if (argc > 1) {
        fputs(usage_ipython_path, stderr);
        return 2;
    }
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

int cmd_inproc(int argc, char **argv)
{
    static struct option opts[] = {{"sample-rate", required_argument, 0, 'r'},
                                   {"socket", required_argument, 0, 's'},
                                   {0}};
    Memprof__RunRequest rq = MEMPROF__RUN_REQUEST__INIT;
    Envelope env = MEMPROF__ENVELOPE__INIT, *reply = NULL;
    char err[MP_ERRLEN], buf[256], *end;
    int c, fd;
    if (cli_wants_help(argc, argv)) {
        fputs(usage_inproc, stdout);
        return 0;
    }
    rq.exact = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            errno = 0;
            rq.sample_rate = strtoull(optarg, &end, 10);
            if (errno || *end || !rq.sample_rate) return cli_fail("--sample-rate: '%s' is not a number of bytes", optarg);
            rq.exact = 0;
            break;
        case 's': client_socket_opt = optarg; break;
        default: fputs(usage_inproc, stderr); return 2;
        }
    }
    if ((fd = client_connect(client_socket_opt, 1, err)) < 0) return cli_fail("%s", err);
    env.msg_case = MEMPROF__ENVELOPE__MSG_RUN;
    env.run = &rq;
    if (client_call(fd, &env, &reply, 10000, err) < 0) return cli_fail("%s", err);
    if (reply->msg_case != MEMPROF__ENVELOPE__MSG_RUN_REPLY)
        return cli_fail("memprofd does not know runs (is it older than this memprof?)");
    if (reply->run_reply->error && reply->run_reply->error[0]) return cli_fail("%s", reply->run_reply->error);
    printf("%s\t%s\n", reply->run_reply->agent_lib, reply->run_reply->agent_env);
    fflush(stdout);
    /* the run lasts as long as this connection: until the parent closes our stdin */
    while (fread(buf, 1, sizeof buf, stdin) > 0) {}
    wire_free(reply);
    close(fd);
    return 0;
}
