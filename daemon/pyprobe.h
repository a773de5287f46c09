/* pyprobe.h -- is a process CPython, which version, where its C API lives. Reads
 * the target itself (/proc/PID/maps, its ELF files, its memory); never guesses
 * from a file name alone. */
#ifndef MEMPROF_PYPROBE_H
#define MEMPROF_PYPROBE_H

#include <limits.h>
#include <sys/types.h>

#define PY_MIN_MINOR 8   /* supported: 3.8 ... 3.13 */
#define PY_MAX_MINOR 13

struct pyinfo {
    int major, minor, micro;
    char version[32];        /* "3.11.7" */
    char pylib[PATH_MAX];    /* file with the C API: libpython*.so or the executable, as the target sees it */
    int shared;              /* 1: libpython shared library; 0: linked into the executable */
};

/* Fills info for a CPython process. Errors (one line, for the user):
 *   "pid N: no such process", "pid N: is a zombie", "pid N: is a kernel thread",
 *   "pid N: not a Python process (no libpython or Python C API found)",
 *   "pid N: permission denied ...". Version support is NOT checked here. */
int pyprobe(pid_t pid, struct pyinfo *info, char *err);

/* 1 when info's version is within PY_MIN_MINOR..PY_MAX_MINOR of Python 3. */
int pyprobe_supported(const struct pyinfo *info);

#endif
