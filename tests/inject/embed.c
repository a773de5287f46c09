/* embed.c -- an application embedding CPython, for two probe corner cases:
 * "noinit": libpython mapped but Py_Initialize not called yet (version buffer empty);
 * default: the main thread exits (zombie leader) while a thread runs the interpreter. */
#include <Python.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static void *run(void *a)
{
    (void)a;
    Py_Initialize();
    PyRun_SimpleString("import time; time.sleep(30)");
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t;
    if (argc > 1 && !strcmp(argv[1], "noinit")) {
        sleep(30);
        return 0;
    }
    pthread_create(&t, NULL, run, NULL);
    pthread_exit(NULL);
}
