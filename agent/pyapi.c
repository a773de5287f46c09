/* pyapi.c -- resolves the Python C API at run time and walks Python frames with the layout pyabi.c gives. */
#include "agent/pyapi.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "common/util.h"

struct pyapi PY;

static uint32_t hexversion;
static char version[32];
static const struct pyabi *offsets;
static char abi_error[MP_ERRLEN];

int pyapi_init(const char *pylib, char *err)
{
    const struct pyapi_symbol table[] = {
        {(void **)&PY.IsInitialized, "Py_IsInitialized", 0},
        {(void **)&PY.IsFinalizing, "Py_IsFinalizing/_Py_IsFinalizing", 0},
        {(void **)&PY.GILState_Ensure, "PyGILState_Ensure", 0},
        {(void **)&PY.GILState_Release, "PyGILState_Release", 0},
        {(void **)&PY.GetVersion, "Py_GetVersion", 0},
        {(void **)&PY.ThreadState_Get, "PyThreadState_GetUnchecked/_PyThreadState_UncheckedGet", PYAPI_OPTIONAL},
    };
    const struct pyapi_symbol *missing;

    pyapi_fini();
    pyapi_sym_open(pylib);

    if ((missing = pyapi_resolve(table, sizeof table / sizeof table[0]))) {
        mp_err(err, "Python C API function %s not found in %s", missing->names,
               pylib && *pylib ? pylib : "the process");
        return -1;
    }
    return 0;
}

const char *pyapi_where(void)
{
    return pyapi_sym_lib() && PY.IsInitialized == dlsym(pyapi_sym_lib(), "Py_IsInitialized") ? "pylib handle"
                                                                                            : "global scope";
}

void pyapi_fini(void)
{
    pyapi_sym_close();
    memset(&PY, 0, sizeof PY);
    hexversion = 0;
    version[0] = 0;
    offsets = NULL;
    abi_error[0] = 0;
    /* off; the offsets stay as they were, for a reader that has already taken get_ts */
    __atomic_store_n(&pyapi_S.get_ts, NULL, __ATOMIC_RELEASE);
}

uint32_t pyapi_parse_version(const char *s, char *out, int outlen)
{
    unsigned major, minor, micro = 0, serial = 0, level = 0xF;
    const char *p = s;
    int n = 0;
    if (out && outlen > 0) out[0] = 0;
    if (!s || sscanf(p, "%u.%u%n", &major, &minor, &n) < 2) return 0;
    p += n;
    if (*p == '.') {
        if (sscanf(p, ".%u%n", &micro, &n) < 1) return 0;
        p += n;
    }
    if (p[0] == 'r' && p[1] == 'c') level = 0xC, p += 2;
    else if (*p == 'a') level = 0xA, p++;
    else if (*p == 'b') level = 0xB, p++;
    else if (*p == 'c') level = 0xC, p++;
    if (level != 0xF && sscanf(p, "%u", &serial) < 1) return 0;
    if (major > 255 || minor > 255 || micro > 255 || serial > 15) return 0;
    if (out && outlen > 0) {
        int len = (int)strcspn(s, " \t\n");
        if (len > outlen - 1) len = outlen - 1;
        memcpy(out, s, (size_t)len);
        out[len] = 0;
    }
    return major << 24 | minor << 16 | micro << 8 | level << 4 | serial;
}

uint32_t pyapi_exported_hexversion(void)
{
    /* const unsigned long Py_Version, exported since 3.11 */
    const unsigned long *v = pyapi_sym("Py_Version");
    return v ? (uint32_t)*v : 0;
}

/* The ABI table holds for release builds with a GIL: free-threaded builds
 * (3.13t, 3.14t) have another PyObject header, and debug builds (Py_REF_DEBUG,
 * and Py_TRACE_REFS which adds two pointers to every object) are not covered. */
static int release_build(void)
{
    return !pyapi_sym_any("_Py_NegativeRefcount/_Py_RefTotal/_Py_GetRefTotal/_Py_PrintReferences");
}

int pyapi_load_version(char *err)
{
    const char *v = PY.GetVersion ? PY.GetVersion() : NULL;
    uint32_t hex = pyapi_parse_version(v, version, sizeof version);
    const struct pyabi *abi;
    if (!hex) {
        mp_err(err, "cannot parse the Python version \"%.40s\"", v ? v : "(null)");
        return -1;
    }
    hexversion = hex;
    offsets = NULL;
    abi_error[0] = 0;
    abi = pyabi_for(hex);
    if (!abi) {
        mp_err(abi_error, "unsupported Python %u.%u (memprof supports " MP_PY_RANGE ")", hex >> 24, hex >> 16 & 0xff);
        return 0;
    }
    if (strstr(v, "free-threading")) {
        mp_err(abi_error, "Python %s: free-threaded builds are not supported (use the default build with a GIL)",
               version);
        return 0;
    }
    if (!release_build()) {
        mp_err(abi_error, "Python %s: debug builds are not supported (other object layout)", version);
        return 0;
    }
    if (abi->caps & PYABI_DEBUG_OFFSETS) {
        /* 3.13+: _PyRuntime opens with _Py_DebugOffsets (exported data) */
        const void *rt = pyapi_sym("_PyRuntime");
        if (!rt) {
            mp_err(abi_error, "Python %s: _PyRuntime is not exported; cannot check its layout", version);
            return 0;
        }
        if (pyabi_check_debug_offsets(abi, hex, rt, (size_t)abi->dbg.size, abi_error) < 0) return 0;
    }
    offsets = abi;
    return 0;
}

uint32_t pyapi_hexversion(void) { return hexversion; }
const char *pyapi_version(void) { return version; }
const struct pyabi *pyapi_abi(void) { return offsets; }
const char *pyapi_abi_error(void) { return abi_error; }

int pyapi_finalizing(void)
{
    if (!PY.IsInitialized || !PY.IsFinalizing) return 1;
    return PY.IsFinalizing() || !PY.IsInitialized();
}

/* ------------------------------------------------------------ frame walking */

#define WALK_MAX_DEPTH 1024 /* guards against a corrupt (cyclic) chain */

static void *code_type;
static int (*addr2line)(void *, int);
static const char *(*as_utf8)(void *);

int pyapi_walk_init(char *err)
{
    const struct pyapi_symbol table[] = {
        {&code_type, "PyCode_Type", 0},
        {(void **)&addr2line, "PyCode_Addr2Line", 0},
        {(void **)&as_utf8, "PyUnicode_AsUTF8", 0},
    };
    const struct pyapi_symbol *missing = pyapi_resolve(table, sizeof table / sizeof table[0]);
    const struct pyabi *o = offsets;
    __atomic_store_n(&pyapi_S.get_ts, NULL, __ATOMIC_RELEASE);
    if (!offsets || !PY.ThreadState_Get || missing) {
        if (!offsets && abi_error[0]) mp_err(err, "%s", abi_error);
        else mp_err(err, "Python %s: no frame layout or C API for stack capture", version[0] ? version : "?");
        return -1;
    }
    pyapi_S = (struct pyapi_site){
        .get_ts = NULL,
        .code_type = code_type,
        .exec_tag = o->frame.executable_tag,
        .kind = o->caps & PYABI_FRAME_OBJECTS ? PYAPI_SITE_FRAME_OBJECTS
                : o->caps & PYABI_CFRAME     ? PYAPI_SITE_CFRAME
                                             : PYAPI_SITE_CURRENT_FRAME,
        .ts_thread_id = o->ts.thread_id,
        .ts_frame = o->caps & PYABI_FRAME_OBJECTS ? o->ts.frame : o->caps & PYABI_CFRAME ? o->ts.cframe : o->ts.current_frame,
        .cframe_current = o->ts.cframe_current,
        .frame_code = o->frame.code,
        .frame_owner = o->frame.owner,
        .frame_instr = o->frame.instr,
        .frame_lasti = o->frame.lasti,
        .lasti_units = !!(o->caps & PYABI_LASTI_UNITS),
        .first_not_python = o->frame.first_not_python,
        .owned_by_generator = o->frame.owned_by_generator,
        .code_adaptive = o->code.code_adaptive,
        .code_firsttraceable = o->code.firsttraceable,
        .code_filename = o->code.filename,
        .code_name = pyabi_code_name(o),
        .code_firstlineno = o->code.firstlineno,
    };
    /* last: pyapi_site_fast takes a non-NULL get_ts for "filled" */
    __atomic_store_n(&pyapi_S.get_ts, PY.ThreadState_Get, __ATOMIC_RELEASE);
    return 0;
}

/* The helpers below are static inline, so that pyapi_top_site inlines them (calls between this library's
 * exported functions are not: -fPIC); the pyapi_ functions wrap them. */
/* pthread_self() of this thread, kept (initial-exec TLS: one load, where pthread_self is a call into libc). */
__thread unsigned long pyapi_self;
struct pyapi_site pyapi_S;

static inline void *tstate_if_gil(void)
{
    void *ts;
    unsigned long me = pyapi_self;
    if (!offsets || !PY.ThreadState_Get) return NULL;
    if (__builtin_expect(!me, 0)) pyapi_self = me = (unsigned long)pthread_self();
    /* 3.8-3.11: the GIL holder's state (any thread's); 3.12+: this thread's
     * while attached. The thread id tells whether it is ours. */
    ts = PY.ThreadState_Get();
    if (!ts || PYABI_AT(ts, offsets->ts.thread_id, unsigned long) != me) return NULL;
    return ts;
}

void *pyapi_tstate_if_gil(void) { return tstate_if_gil(); }

static inline void *frame_code(void *frame)
{
    uintptr_t bits = PYABI_AT(frame, offsets->frame.code, uintptr_t);
    return (void *)(bits & ~offsets->frame.executable_tag); /* 3.14+: a tagged _PyStackRef */
}

void *pyapi_frame_code(void *frame) { return frame_code(frame); }

static inline void *top_frame(void *ts)
{
    const struct pyabi *o = offsets;
    void *cf;
    if (o->caps & PYABI_FRAME_OBJECTS) return PYABI_AT(ts, o->ts.frame, void *);
    if (o->caps & PYABI_CFRAME) {
        cf = PYABI_AT(ts, o->ts.cframe, void *);
        return cf ? PYABI_AT(cf, o->ts.cframe_current, void *) : NULL;
    }
    return PYABI_AT(ts, o->ts.current_frame, void *);
}

void *pyapi_top_frame(void *ts) { return top_frame(ts); }

static inline int walk(void *ts, struct pyframe *out, int max)
{
    const struct pyabi *o = offsets;
    int n = 0, depth = 0;
    void *frame;
    if (!o || !ts) return 0;
    for (frame = top_frame(ts); frame && n < max && depth < WALK_MAX_DEPTH;
         frame = PYABI_AT(frame, o->frame.back, void *), depth++) {
        void *code = frame_code(frame);
        int lasti;
        if (!code || PYABI_AT(code, PYABI_OB_TYPE, void *) != code_type) continue; /* 3.13+ f_executable */
        if (o->frame.owner >= 0) {
            int owner = PYABI_AT(frame, o->frame.owner, char);
            char *first = (char *)code + o->code.code_adaptive;
            char *instr = PYABI_AT(frame, o->frame.instr, char *);
            if (owner >= o->frame.first_not_python) continue; /* shim or entry frame */
            if (owner != o->frame.owned_by_generator && instr < first + 2 * PYABI_AT(code, o->code.firsttraceable, int))
                continue; /* incomplete: not started yet */
            lasti = (int)(instr - first);
        } else {
            lasti = PYABI_AT(frame, o->frame.lasti, int);
            if ((o->caps & PYABI_LASTI_UNITS) && lasti > 0) lasti *= 2; /* 3.10 counts code units */
        }
        out[n].code = code;
        out[n].lasti = lasti;
        n++;
    }
    return n;
}

int pyapi_walk(void *ts, struct pyframe *out, int max) { return walk(ts, out, max); }

static inline void code_key(void *code, void **file, void **name, int *firstline)
{
    *file = PYABI_AT(code, offsets->code.filename, void *);
    *name = PYABI_AT(code, pyabi_code_name(offsets), void *);
    *firstline = PYABI_AT(code, offsets->code.firstlineno, int);
}

void pyapi_code_key(void *code, void **file, void **name, int *firstline) { code_key(code, file, name, firstline); }

int pyapi_top_site(struct pyframe *out, void **file, void **name, int *firstline)
{
    const struct pyabi *o = offsets;
    void *ts = tstate_if_gil(), *frame, *code;
    if (!ts) return -1;
    /* Nearly always the innermost frame is the one: pyapi_walk's tests for it, on locals (the stores to
     * out would make the compiler reload every offset, -fno-strict-aliasing); any other case walks. */
    frame = top_frame(ts);
    code = frame ? frame_code(frame) : NULL;
    if (code && PYABI_AT(code, PYABI_OB_TYPE, void *) == code_type && o->frame.owner >= 0) {
        int owner = PYABI_AT(frame, o->frame.owner, char);
        char *first = (char *)code + o->code.code_adaptive;
        char *instr = PYABI_AT(frame, o->frame.instr, char *);
        if (owner < o->frame.first_not_python &&
            (owner == o->frame.owned_by_generator || instr >= first + 2 * PYABI_AT(code, o->code.firsttraceable, int))) {
            *file = PYABI_AT(code, o->code.filename, void *);
            *name = PYABI_AT(code, pyabi_code_name(o), void *);
            *firstline = PYABI_AT(code, o->code.firstlineno, int);
            out->code = code;
            out->lasti = (int)(instr - first);
            return 1;
        }
    }
    if (!walk(ts, out, 1)) return 0;
    code_key(out->code, file, name, firstline);
    return 1;
}

/* A str's UTF-8 text. Compact ASCII strings (nearly every file and function
 * name) are read in place: no allocation, no exception possible. */
static const char *str_utf8(void *str)
{
    const char *s;
    if (!str) return "?";
    if ((s = pyabi_str_ascii_chars(offsets, str))) return s;
    s = as_utf8(str);
    return s ? s : "?";
}

void pyapi_code_where(const struct pyframe *f, const char **file, const char **func, int *firstline, int *line)
{
    *file = str_utf8(PYABI_AT(f->code, offsets->code.filename, void *));
    *func = str_utf8(PYABI_AT(f->code, pyabi_code_name(offsets), void *));
    *firstline = PYABI_AT(f->code, offsets->code.firstlineno, int);
    *line = addr2line(f->code, f->lasti);
}
