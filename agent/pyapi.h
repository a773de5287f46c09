/* pyapi.h -- the Python C API as the agent sees it: functions resolved at run time
 * (no Python headers), and the frame walk over the layout pyabi.c describes for
 * the running version. */
#ifndef MEMPROF_PYAPI_H
#define MEMPROF_PYAPI_H

#include <stdint.h>

#include "pyabi.h"

/* Functions the agent core cannot work without; pyapi_init fails when one is
 * missing. Optional ones are looked up with pyapi_sym when needed. */
struct pyapi {
    int (*IsInitialized)(void);         /* Py_IsInitialized: safe without the GIL */
    int (*IsFinalizing)(void);          /* Py_IsFinalizing (3.13+) or _Py_IsFinalizing (3.7-3.12) */
    int (*GILState_Ensure)(void);       /* PyGILState_STATE is an int-sized enum */
    void (*GILState_Release)(int);
    const char *(*GetVersion)(void);    /* Py_GetVersion: call with the GIL held */
    void *(*ThreadState_Get)(void);     /* PyThreadState_GetUnchecked (3.13) or
                                           _PyThreadState_UncheckedGet (3.8-3.12); may be NULL */
};
extern struct pyapi PY;

/* Resolve the C API: from the library already loaded at pylib (RTLD_NOLOAD; a
 * libpython*.so or, for a static build, the executable), else from the global
 * scope. Safe on any thread, takes no Python lock. Fails, with err naming the
 * missing function, when a required one is absent. */
int pyapi_init(const char *pylib, char *err);
/* Where pyapi_init found the API: "pylib handle" or "global scope". */
const char *pyapi_where(void);
/* Drop the library reference pyapi_init took. PY is cleared. */
void pyapi_fini(void);

/* dlsym on pyapi_init's handle, then the global scope. NULL when not exported. */
void *pyapi_sym(const char *name);

/* With the GIL held: read Py_GetVersion, derive the hex version, select the
 * ABI entry and, on 3.13+, check it against the interpreter's _Py_DebugOffsets.
 * Fails when the version string cannot be parsed. */
int pyapi_load_version(char *err);
/* PY_VERSION_HEX, e.g. 0x030b07f0 (0 before pyapi_load_version). */
uint32_t pyapi_hexversion(void);
/* "3.11.7" ("" before pyapi_load_version). */
const char *pyapi_version(void);
/* The ABI entry for this interpreter; NULL when its version is not in the
 * table, for a free-threaded or debug build (other layouts), or when its
 * _Py_DebugOffsets disagree with the table (pyapi_abi_error says why). */
const struct pyabi *pyapi_abi(void);
/* Why pyapi_abi is NULL, one line ("" when it is not, or before loading). */
const char *pyapi_abi_error(void);

/* 1 when the runtime is finalizing or not (or no longer) initialized: then the
 * GIL must not be taken (PyGILState_Ensure may crash or end the thread). */
int pyapi_finalizing(void);

/* The hex version the interpreter exports as data (Py_Version, 3.11+), readable
 * without the GIL and without pyapi_load_version; 0 when not exported. */
uint32_t pyapi_exported_hexversion(void);

/* ---- frame walking, for the allocation hooks (they run inside PyMem calls:
 * nothing here takes a lock; pyapi_code_where may allocate a UTF-8 cache). */

/* One raw Python frame: its code object and instruction byte offset. */
struct pyframe {
    void *code;
    int lasti;
};

/* Resolve what the walk needs (PyCode_Type, PyCode_Addr2Line, PyUnicode_AsUTF8).
 * After pyapi_load_version. Fails when they are missing or no offsets. */
int pyapi_walk_init(char *err);
/* The calling thread's PyThreadState when this thread holds the GIL, else NULL.
 * Safe without the GIL, on any thread. */
void *pyapi_tstate_if_gil(void);
/* The innermost frame of tstate (PyFrameObject or _PyInterpreterFrame), and a
 * frame's code object (or other executable, 3.13+; untagged). GIL held. */
void *pyapi_top_frame(void *tstate);
void *pyapi_frame_code(void *frame);
/* Up to max frames of tstate, innermost first (incomplete and shim frames
 * skipped). With the GIL held by the caller. Returns the count. */
int pyapi_walk(void *tstate, struct pyframe *out, int max);
/* What identifies a code object for caching (its filename and name objects,
 * def line): equal keys at one address mean the same code. */
void pyapi_code_key(void *code, void **file, void **name, int *firstline);
/* One call for the innermost frame (the exact-mode hooks' fast path): pyapi_tstate_if_gil, then
 * pyapi_walk(ts, out, 1) and pyapi_code_key of its code. 1 with them; 0 when this thread holds the GIL but
 * the walk finds no Python frame; -1 when it does not hold the GIL. Safe without the GIL. */
int pyapi_top_site(struct pyframe *out, void **file, void **name, int *firstline)
    __attribute__((visibility("hidden")));
/* UTF-8 filename, function name (qualified on 3.11+: pyabi_code_name), def line and the line of lasti. GIL held. */
void pyapi_code_where(const struct pyframe *f, const char **file, const char **func, int *firstline,
                      int *line);

/* "3.11.7 (main, ...)" -> 0x030b07f0; 0 if unparsable. Also copies the first
 * word into out (outlen bytes) when out is not NULL. */
uint32_t pyapi_parse_version(const char *s, char *out, int outlen);

#endif
