/* log.c -- the agent's debug log (agent_log): one line to stderr, without stdio, when asked for. */
#include "agent/log.h"
#include "common/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int agent_debug;

void agent_log(const char *fmt, ...)
{
    char line[768];
    va_list ap;
    int n;
    ssize_t w;
    if (!agent_debug) return;
    n = snprintf(line, sizeof line, "memprof-agent[%d] %.3f: ", (int)getpid(), mp_now() * 1e3); /* monotonic ms */
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (int)strlen(line);
    line[n++] = '\n';
    w = write(STDERR_FILENO, line, (size_t)n); /* no stdio: never its locks */
    (void)w;
}
