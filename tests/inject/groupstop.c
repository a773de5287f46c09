/* groupstop.c -- the job-control race: a target stopped after the state check but
 * before PTRACE_SEIZE must be recognised by stop_thread() and left stopped. */
#include "daemon/inject.c"

int main(int argc, char **argv)
{
    pid_t pid = argc > 1 ? mp_parse_pid(argv[1]) : -1;
    struct target t = {.pid = pid};
    struct hijack *h = calloc(1, sizeof *h);
    char err[MP_ERRLEN] = "";
    double t0 = 0;
    sigset_t chld;
    if (pid < 0 || !h) return 2;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &chld, NULL);
    h->t = &t;
    h->pid = h->tid = pid;
    int r = stop_thread(h, &t0, err);
    printf("stop_thread -> %d (1 = job-control stop, detached) %s\n", r, err);
    return r == 1 ? 0 : 1;
}
