/* embed.c -- test helper: a program embedding CPython (loaded with dlopen, no
 * headers) that starts the agent at awkward moments: before Py_Initialize, and
 * right before Py_FinalizeEx, then keeps running without Python.
 *
 *   embed LIBPYTHON AGENT ARG MODE [global|local]
 *   MODE early: start the agent, 300 ms later initialize Python, run 1.5 s of
 *               Python, finalize, live 1 s more.
 *        late:  initialize, run a little, start the agent, finalize at once,
 *               live 1 s more.
 *        held:  like late, but hold the GIL for 300 ms (in C, so it is never
 *               handed over) before finalizing: the agent is parked inside
 *               PyGILState_Ensure when finalization begins.
 *        nopython: LIBPYTHON is "-": a process without Python; live 2 s.
 *   global|local: how libpython is loaded; with local, only pylib= finds it.
 *   Prints "thread NAME" per thread and "tasks N" (their number) at the end. */
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Threads of the process; their names go to stdout as "thread NAME". */
static int count_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d))) {
        char path[300], name[64] = "";
        FILE *f;
        if (e->d_name[0] == '.') continue;
        n++;
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        if ((f = fopen(path, "r"))) {
            if (fgets(name, sizeof name, f)) name[strcspn(name, "\n")] = 0;
            fclose(f);
        }
        printf("thread %s\n", name);
    }
    if (d) closedir(d);
    return n;
}

int main(int argc, char **argv)
{
    void *py, *agent;
    void (*init)(void);
    int (*fini)(void), (*run)(const char *), (*start)(const char *);
    int local = argc > 5 && !strcmp(argv[5], "local"), rc;

    if (argc < 5) {
        fprintf(stderr, "usage: embed LIBPYTHON AGENT ARG early|late|held|nopython [global|local]\n");
        return 2;
    }
    agent = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    start = agent ? (int (*)(const char *))dlsym(agent, "memprof_agent_start") : NULL;
    if (start && !strcmp(argv[4], "nopython")) {
        printf("start %d\n", start(argv[3]));
        fflush(stdout);
        usleep(2000000);
        printf("tasks %d\n", count_tasks());
        return 0;
    }
    py = dlopen(argv[1], RTLD_NOW | (local ? RTLD_LOCAL : RTLD_GLOBAL));
    if (!py || !start) {
        fprintf(stderr, "embed: %s\n", dlerror());
        return 1;
    }
    init = (void (*)(void))dlsym(py, "Py_Initialize");
    fini = (int (*)(void))dlsym(py, "Py_FinalizeEx");
    run = (int (*)(const char *))dlsym(py, "PyRun_SimpleString");

    if (!strcmp(argv[4], "early")) {
        printf("start %d\n", start(argv[3]));
        fflush(stdout);
        usleep(300000);
        init();
        /* busy Python for ~1.5 s: the agent takes the GIL in between */
        run("import time\nt = time.time()\nwhile time.time() - t < 1.5: x = [i for i in range(1000)]\n");
    } else {
        init(); /* returns with the GIL held by this thread */
        run("x = [str(i) for i in range(100000)]\n");
        rc = start(argv[3]);
        printf("start %d\n", rc);
        fflush(stdout);
        if (!strcmp(argv[4], "held")) usleep(300000);
    }
    rc = fini();
    printf("finalized %d\n", rc);
    fflush(stdout);
    usleep(1000000);
    printf("tasks %d\n", count_tasks());
    return 0;
}
