/* pyapi.h -- the Python C API as the agent sees it: functions resolved at run time
 * (no Python headers), and the frame walk over the layout pyabi.c describes for
 * the running version. */
#ifndef MEMPROF_PYAPI_H
#define MEMPROF_PYAPI_H

#include <stdint.h>

#include "common/pyabi.h"

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
/* What pyapi_site_fast reads, flattened from the ABI entry by pyapi_walk_init (hidden globals: one load
 * each, no pointer chasing, and no call for the common case). get_ts NULL: no fast path. */
struct pyapi_site {
    void *(*get_ts)(void); /* PY.ThreadState_Get */
    void *code_type;
    uintptr_t exec_tag;
    int kind;              /* where the top frame is: PYAPI_SITE_* */
    int ts_thread_id, ts_frame, cframe_current;
    int frame_code, frame_owner, frame_instr, frame_lasti, lasti_units;
    int first_not_python, owned_by_generator;
    int code_adaptive, code_firsttraceable, code_filename, code_name, code_firstlineno;
};
enum { PYAPI_SITE_FRAME_OBJECTS, PYAPI_SITE_CFRAME, PYAPI_SITE_CURRENT_FRAME };
extern struct pyapi_site pyapi_S __attribute__((visibility("hidden")));
/* pthread_self() of the calling thread, 0 until pyapi_site_fast first needs it (constant for a thread;
 * a fork's child, a copy of the forking thread, has the same). */
extern __thread unsigned long pyapi_self __attribute__((visibility("hidden")));

/* pyapi_top_site inlined into its caller for the usual case -- this thread holds the GIL and its innermost
 * frame is a complete Python frame -- with the same tests and results; any other case calls it. */
static inline __attribute__((always_inline)) int pyapi_site_fast(struct pyframe *out, void **file, void **name,
                                                                int *firstline)
{
    const struct pyapi_site *S = &pyapi_S;
    unsigned long me = pyapi_self;
    void *(*get_ts)(void) = __atomic_load_n(&S->get_ts, __ATOMIC_ACQUIRE);
    char *ts, *frame, *code;
    int lasti;
    if (__builtin_expect(!get_ts || !me, 0)) return pyapi_top_site(out, file, name, firstline);
    ts = get_ts();
    if (!ts || PYABI_AT(ts, S->ts_thread_id, unsigned long) != me) return -1;
    frame = PYABI_AT(ts, S->ts_frame, char *);
    if (S->kind == PYAPI_SITE_CFRAME && frame) frame = PYABI_AT(frame, S->cframe_current, char *);
    if (!frame) return pyapi_top_site(out, file, name, firstline);
    code = (char *)(PYABI_AT(frame, S->frame_code, uintptr_t) & ~S->exec_tag);
    if (!code || PYABI_AT(code, PYABI_OB_TYPE, void *) != S->code_type) return pyapi_top_site(out, file, name, firstline);
    if (S->frame_owner >= 0) {
        int owner = PYABI_AT(frame, S->frame_owner, char);
        char *first = code + S->code_adaptive;
        char *instr = PYABI_AT(frame, S->frame_instr, char *);
        if (owner >= S->first_not_python ||
            (owner != S->owned_by_generator && instr < first + 2 * PYABI_AT(code, S->code_firsttraceable, int)))
            return pyapi_top_site(out, file, name, firstline);
        lasti = (int)(instr - first);
    } else {
        lasti = PYABI_AT(frame, S->frame_lasti, int);
        if (S->lasti_units && lasti > 0) lasti *= 2;
    }
    *file = PYABI_AT(code, S->code_filename, void *);
    *name = PYABI_AT(code, S->code_name, void *);
    *firstline = PYABI_AT(code, S->code_firstlineno, int);
    out->code = code;
    out->lasti = lasti;
    return 1;
}
/* UTF-8 filename, function name (qualified on 3.11+: pyabi_code_name), def line and the line of lasti. GIL held. */
void pyapi_code_where(const struct pyframe *f, const char **file, const char **func, int *firstline,
                      int *line);

/* "3.11.7 (main, ...)" -> 0x030b07f0; 0 if unparsable. Also copies the first
 * word into out (outlen bytes) when out is not NULL. */
uint32_t pyapi_parse_version(const char *s, char *out, int outlen);

#endif
