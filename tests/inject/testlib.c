/* testlib.c -- a stand-in agent for the injector's tests. memprof_agent_start(arg) appends
 * arg to /tmp/injtest-<pid>.txt and returns 0; some args misbehave on purpose:
 * "sleep" (2 s in the call), "hang" (never returns), "crash" (SIGSEGV), "rc=N" (returns N). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int memprof_agent_start(const char *arg)
{
    char path[64];
    FILE *f;
    snprintf(path, sizeof path, "/tmp/injtest-%d.txt", (int)getpid());
    if (!(f = fopen(path, "a"))) return 2;
    fprintf(f, "%s\n", arg);
    fclose(f);
    if (!strcmp(arg, "sleep")) {
        struct timespec ts = {2, 0};
        while (nanosleep(&ts, &ts) < 0) {}
    }
    if (!strcmp(arg, "hang"))
        for (;;) pause();
    if (!strcmp(arg, "crash")) {
        volatile int *p = (volatile int *)strtoul("8", NULL, 10); /* opaque to the compiler */
        *p = 1;
    }
    if (!strncmp(arg, "rc=", 3)) return atoi(arg + 3);
    return 0;
}
