/* pyprobe.h -- is a process CPython, which version, where its C API lives. Reads
 * the target itself (/proc/PID/maps, its ELF files, its memory); never guesses
 * from a file name alone. */
#ifndef MEMPROF_PYPROBE_H
#define MEMPROF_PYPROBE_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/pyversions.h" /* the supported range: MP_PY_MIN_MINOR ... MP_PY_MAX_MINOR */
#include "common/util.h"

struct pyinfo {
    int major, minor, micro;
    char version[32];        /* "3.11.7" */
    char pylib[PATH_MAX];    /* file with the C API: libpython*.so or the executable, as the target sees it */
    int shared;              /* 1: libpython shared library; 0: linked into the executable */
    uint64_t runtime;        /* address of _PyRuntime (3.13+: its _Py_DebugOffsets), 0 when unknown */
    char abi_error[MP_ERRLEN]; /* why a supported version still cannot be profiled (its
                                  _Py_DebugOffsets disagree with common/pyabi.c, a
                                  free-threaded build); "" when it can */
};

/* Fills info for a CPython process. Errors (one line, for the user):
 *   "pid N: no such process", "pid N: is a zombie", "pid N: is a kernel thread",
 *   "pid N: not a Python process (no libpython or Python C API found)",
 *   "pid N: permission denied ...". Version support is NOT checked here. */
int pyprobe(pid_t pid, struct pyinfo *info, char *err);

/* 1 when info's version has an entry in common/pyabi.c and nothing in the
 * target contradicts it (abi_error empty). */
int pyprobe_supported(const struct pyinfo *info);

#endif
