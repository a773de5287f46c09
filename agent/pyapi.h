/* pyapi.h -- the Python C API as the agent sees it: functions resolved at run time
 * (no Python headers) and the one table of per-version struct offsets. Everything
 * that differs between CPython versions is decided in pyapi.c and nowhere else. */
#ifndef MEMPROF_PYAPI_H
#define MEMPROF_PYAPI_H

#include <stdint.h>

#define PYAPI_MIN_MINOR 8 /* struct offsets known for 3.8 ... 3.13 */
#define PYAPI_MAX_MINOR 13

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

/* Byte offsets of the CPython fields the agent reads directly, for one minor
 * version; -1 where the field does not exist in that version. Release builds on
 * x86_64/aarch64 (not Py_DEBUG / Py_TRACE_REFS, which shift every PyObject). */
struct pyoffsets {
    int minor;
    /* PyThreadState */
    int ts_interp, ts_next;
    int ts_thread_id;            /* unsigned long: pthread_t */
    int ts_native_thread_id;     /* unsigned long: tid, 3.11+ */
    int ts_frame;                /* 3.8-3.10: PyFrameObject *frame */
    int ts_cframe;               /* 3.11-3.12: _PyCFrame *cframe ... */
    int cframe_current_frame;    /* ... whose current_frame is the _PyInterpreterFrame */
    int ts_current_frame;        /* 3.13: _PyInterpreterFrame *current_frame */
    /* The frame the walk goes through: PyFrameObject (3.8-3.10) or
     * _PyInterpreterFrame (3.11+) */
    int frame_back;              /* f_back / previous */
    int frame_code;              /* f_code; 3.13 f_executable (check it is a code object) */
    int frame_lasti;             /* 3.8-3.10 int f_lasti: 3.8/3.9 bytes, 3.10 code units */
    int frame_instr;             /* 3.11-3.12 prev_instr (last executed), 3.13 instr_ptr (current) */
    int frame_owner;             /* 3.11+: char owner */
    int owner_generator;         /* FRAME_OWNED_BY_GENERATOR */
    int owner_cstack;            /* FRAME_OWNED_BY_CSTACK (3.12+: shim frames, skip) */
    /* PyCodeObject */
    int co_firstlineno;          /* int */
    int co_filename, co_name;    /* PyObject * (str) */
    int co_qualname;             /* 3.11+ */
    int co_code_adaptive;        /* 3.11+: first code unit, inline in the object */
    int co_firsttraceable;       /* 3.11+: int _co_firsttraceable (incomplete-frame test) */
    /* PyObject / PyTypeObject */
    int ob_type, tp_name;
};

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
 * offsets table. Fails when the version string cannot be parsed. */
int pyapi_load_version(char *err);
/* PY_VERSION_HEX, e.g. 0x030b07f0 (0 before pyapi_load_version). */
uint32_t pyapi_hexversion(void);
/* "3.11.7" ("" before pyapi_load_version). */
const char *pyapi_version(void);
/* The offsets for this interpreter; NULL when its version is not in the table,
 * or for a free-threaded or debug build (other layouts). */
const struct pyoffsets *pyapi_offsets(void);

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
/* Up to max frames of tstate, innermost first (incomplete and shim frames
 * skipped). With the GIL held by the caller. Returns the count. */
int pyapi_walk(void *tstate, struct pyframe *out, int max);
/* What identifies a code object for caching (its filename and name objects,
 * def line): equal keys at one address mean the same code. */
void pyapi_code_key(void *code, void **file, void **name, int *firstline);
/* UTF-8 filename, function name, def line and the line of lasti. GIL held. */
void pyapi_code_where(const struct pyframe *f, const char **file, const char **func, int *firstline,
                      int *line);

/* "3.11.7 (main, ...)" -> 0x030b07f0; 0 if unparsable. Also copies the first
 * word into out (outlen bytes) when out is not NULL. */
uint32_t pyapi_parse_version(const char *s, char *out, int outlen);

#endif
