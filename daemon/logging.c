/* logging.c -- memprofd's log lines on stderr, and the rate-limited ones about peers turned away. */
#include "daemon/logging.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/loop.h"

#define REFUSALS_PER_S 1

void server_log(const char *fmt, ...)
{
    char ts[32];
    time_t now = time(NULL);
    va_list ap;
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", localtime(&now));
    fprintf(stderr, "%s memprofd[%d]: ", ts, (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static struct {
    double quiet_until;
    unsigned suppressed;
    long long timer;
} refusals;

static long refusals_flush(long long id, void *data)
{
    (void)id;
    (void)data;
    refusals.timer = 0;
    if (refusals.suppressed) {
        server_log("%u more connections refused in the last second (not logged one by one)", refusals.suppressed);
        refusals.suppressed = 0;
        refusals.quiet_until = mp_now() + 1.0 / REFUSALS_PER_S;
    }
    return LOOP_NOMORE;
}

void log_refusal(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    double now = mp_now();
    if (now < refusals.quiet_until) {
        refusals.suppressed++;
        if (!refusals.timer)
            refusals.timer = loop_add_timer((long)((refusals.quiet_until - now) * 1000) + 1, refusals_flush, NULL);
        return;
    }
    refusals.quiet_until = now + 1.0 / REFUSALS_PER_S;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    server_log("%s", line);
}
