/* pyapi.c -- resolves the Python C API at run time and holds the one table of
 * per-CPython-version details (symbol names, struct offsets). */
#include "pyapi.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "util.h"

struct pyapi PY;

static void *lib;                 /* dlopen(pylib, RTLD_NOLOAD) handle, or NULL */
static uint32_t hexversion;
static char version[32];
static const struct pyoffsets *offsets;

/* Offsets read with gdb `ptype /o` / `print &((T*)0)->f` from the debug info of
 * the pyenv builds 3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1, 3.13.0 on x86_64, and
 * checked at run time by tests/agent/offsets_check.c (a frame walk compared with
 * traceback.extract_stack()) on those and on Debian's 3.11.2. These are private
 * structures: a micro release may in principle move them, which is why the
 * frame walk must validate what it reads (code object type, bounded depth). */
static const struct pyoffsets offset_table[] = {
    {.minor = 8,
     .ts_interp = 16, .ts_next = 8, .ts_thread_id = 176, .ts_native_thread_id = -1,
     .ts_frame = 24, .ts_cframe = -1, .cframe_current_frame = -1, .ts_current_frame = -1,
     .frame_back = 24, .frame_code = 32, .frame_lasti = 104, .frame_instr = -1,
     .frame_owner = -1, .owner_generator = -1, .owner_cstack = -1,
     .co_firstlineno = 40, .co_filename = 104, .co_name = 112, .co_qualname = -1,
     .co_code_adaptive = -1, .co_firsttraceable = -1,
     .ob_type = 8, .tp_name = 24},
    {.minor = 9,
     .ts_interp = 16, .ts_next = 8, .ts_thread_id = 176, .ts_native_thread_id = -1,
     .ts_frame = 24, .ts_cframe = -1, .cframe_current_frame = -1, .ts_current_frame = -1,
     .frame_back = 24, .frame_code = 32, .frame_lasti = 104, .frame_instr = -1,
     .frame_owner = -1, .owner_generator = -1, .owner_cstack = -1,
     .co_firstlineno = 40, .co_filename = 104, .co_name = 112, .co_qualname = -1,
     .co_code_adaptive = -1, .co_firsttraceable = -1,
     .ob_type = 8, .tp_name = 24},
    /* 3.10 has a tstate->cframe too, but it only carries use_tracing: frames
     * are still PyFrameObjects hanging off tstate->frame. */
    {.minor = 10,
     .ts_interp = 16, .ts_next = 8, .ts_thread_id = 176, .ts_native_thread_id = -1,
     .ts_frame = 24, .ts_cframe = -1, .cframe_current_frame = -1, .ts_current_frame = -1,
     .frame_back = 24, .frame_code = 32, .frame_lasti = 96, .frame_instr = -1,
     .frame_owner = -1, .owner_generator = -1, .owner_cstack = -1,
     .co_firstlineno = 40, .co_filename = 104, .co_name = 112, .co_qualname = -1,
     .co_code_adaptive = -1, .co_firsttraceable = -1,
     .ob_type = 8, .tp_name = 24},
    {.minor = 11,
     .ts_interp = 16, .ts_next = 8, .ts_thread_id = 152, .ts_native_thread_id = 160,
     .ts_frame = -1, .ts_cframe = 56, .cframe_current_frame = 8, .ts_current_frame = -1,
     .frame_back = 48, .frame_code = 32, .frame_lasti = -1, .frame_instr = 56,
     .frame_owner = 69, .owner_generator = 1, .owner_cstack = -1,
     .co_firstlineno = 72, .co_filename = 112, .co_name = 120, .co_qualname = 128,
     .co_code_adaptive = 184, .co_firsttraceable = 168,
     .ob_type = 8, .tp_name = 24},
    {.minor = 12,
     .ts_interp = 16, .ts_next = 8, .ts_thread_id = 136, .ts_native_thread_id = 144,
     .ts_frame = -1, .ts_cframe = 56, .cframe_current_frame = 0, .ts_current_frame = -1,
     .frame_back = 8, .frame_code = 0, .frame_lasti = -1, .frame_instr = 56,
     .frame_owner = 70, .owner_generator = 1, .owner_cstack = 3,
     .co_firstlineno = 68, .co_filename = 112, .co_name = 120, .co_qualname = 128,
     .co_code_adaptive = 192, .co_firsttraceable = 176,
     .ob_type = 8, .tp_name = 24},
    {.minor = 13,
     .ts_interp = 16, .ts_next = 8, .ts_thread_id = 152, .ts_native_thread_id = 160,
     .ts_frame = -1, .ts_cframe = -1, .cframe_current_frame = -1, .ts_current_frame = 72,
     .frame_back = 8, .frame_code = 0, .frame_lasti = -1, .frame_instr = 56,
     .frame_owner = 70, .owner_generator = 1, .owner_cstack = 3,
     .co_firstlineno = 68, .co_filename = 112, .co_name = 120, .co_qualname = 128,
     .co_code_adaptive = 200, .co_firsttraceable = 184,
     .ob_type = 8, .tp_name = 24},
};

void *pyapi_sym(const char *name)
{
    void *p = lib ? dlsym(lib, name) : NULL;
    return p ? p : dlsym(RTLD_DEFAULT, name);
}

/* The first of names that is exported; names differ between versions. */
static void *sym_any(const char *const *names)
{
    for (; *names; names++) {
        void *p = pyapi_sym(*names);
        if (p) return p;
    }
    return NULL;
}

int pyapi_init(const char *pylib, char *err)
{
    static const char *const finalizing[] = {"Py_IsFinalizing", "_Py_IsFinalizing", NULL};
    static const char *const tstate[] = {"PyThreadState_GetUnchecked",
                                         "_PyThreadState_UncheckedGet", NULL};
    const char *missing = NULL;

    pyapi_fini();
    /* RTLD_NOLOAD: never load a Python into the target, only find the one in
     * use. Fails for an executable with a static libpython: then the global
     * scope, where such executables export the API. */
    if (pylib && *pylib) lib = dlopen(pylib, RTLD_NOLOAD | RTLD_LAZY);

    PY.IsInitialized = (int (*)(void))pyapi_sym("Py_IsInitialized");
    PY.IsFinalizing = (int (*)(void))sym_any(finalizing);
    PY.GILState_Ensure = (int (*)(void))pyapi_sym("PyGILState_Ensure");
    PY.GILState_Release = (void (*)(int))pyapi_sym("PyGILState_Release");
    PY.GetVersion = (const char *(*)(void))pyapi_sym("Py_GetVersion");
    PY.ThreadState_Get = (void *(*)(void))sym_any(tstate);

    if (!PY.IsInitialized) missing = "Py_IsInitialized";
    else if (!PY.IsFinalizing) missing = "Py_IsFinalizing/_Py_IsFinalizing";
    else if (!PY.GILState_Ensure) missing = "PyGILState_Ensure";
    else if (!PY.GILState_Release) missing = "PyGILState_Release";
    else if (!PY.GetVersion) missing = "Py_GetVersion";
    if (missing) {
        mp_err(err, "Python C API function %s not found in %s", missing,
               pylib && *pylib ? pylib : "the process");
        return -1;
    }
    return 0;
}

const char *pyapi_where(void)
{
    return lib && PY.IsInitialized == dlsym(lib, "Py_IsInitialized") ? "pylib handle" : "global scope";
}

void pyapi_fini(void)
{
    if (lib) dlclose(lib);
    lib = NULL;
    memset(&PY, 0, sizeof PY);
    hexversion = 0;
    version[0] = 0;
    offsets = NULL;
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

/* The offset table holds for release builds with a GIL: free-threaded builds
 * (3.13t) have another PyObject header, and debug builds (Py_REF_DEBUG, and
 * Py_TRACE_REFS which adds two pointers to every object) are not covered. */
static int release_build(const char *version_string)
{
    static const char *const debug_syms[] = {"_Py_NegativeRefcount", "_Py_RefTotal",
                                             "_Py_GetRefTotal", "_Py_PrintReferences", NULL};
    return !strstr(version_string, "free-threading") && !sym_any(debug_syms);
}

int pyapi_load_version(char *err)
{
    const char *v = PY.GetVersion ? PY.GetVersion() : NULL;
    uint32_t hex = pyapi_parse_version(v, version, sizeof version);
    size_t i;
    if (!hex) {
        mp_err(err, "cannot parse the Python version \"%.40s\"", v ? v : "(null)");
        return -1;
    }
    hexversion = hex;
    offsets = NULL;
    if (!release_build(v)) return 0; /* no offsets: the table is for release builds */
    if ((hex >> 24) == 3)
        for (i = 0; i < sizeof offset_table / sizeof offset_table[0]; i++)
            if (offset_table[i].minor == (int)(hex >> 16 & 0xff)) offsets = &offset_table[i];
    return 0;
}

uint32_t pyapi_hexversion(void) { return hexversion; }
const char *pyapi_version(void) { return version; }
const struct pyoffsets *pyapi_offsets(void) { return offsets; }

int pyapi_finalizing(void)
{
    if (!PY.IsInitialized || !PY.IsFinalizing) return 1;
    return PY.IsFinalizing() || !PY.IsInitialized();
}

/* ------------------------------------------------------------ frame walking */

#define FIELD(p, off, type) (*(type *)((char *)(p) + (off)))
#define WALK_MAX_DEPTH 1024 /* guards against a corrupt (cyclic) chain */

static void *code_type;
static int (*addr2line)(void *, int);
static const char *(*as_utf8)(void *);

int pyapi_walk_init(char *err)
{
    code_type = pyapi_sym("PyCode_Type");
    addr2line = (int (*)(void *, int))pyapi_sym("PyCode_Addr2Line");
    as_utf8 = (const char *(*)(void *))pyapi_sym("PyUnicode_AsUTF8");
    if (!offsets || !PY.ThreadState_Get || !code_type || !addr2line || !as_utf8) {
        mp_err(err, "Python %s: no frame layout or C API for stack capture", version[0] ? version : "?");
        return -1;
    }
    return 0;
}

void *pyapi_tstate_if_gil(void)
{
    void *ts;
    if (!offsets || !PY.ThreadState_Get) return NULL;
    /* 3.8-3.11: the GIL holder's state (any thread's); 3.12+: this thread's
     * while attached. The thread id tells whether it is ours. */
    ts = PY.ThreadState_Get();
    if (!ts || FIELD(ts, offsets->ts_thread_id, unsigned long) != (unsigned long)pthread_self()) return NULL;
    return ts;
}

static void *top_frame(void *ts)
{
    const struct pyoffsets *o = offsets;
    void *cf;
    if (o->ts_frame >= 0) return FIELD(ts, o->ts_frame, void *);
    if (o->ts_cframe >= 0) {
        cf = FIELD(ts, o->ts_cframe, void *);
        return cf ? FIELD(cf, o->cframe_current_frame, void *) : NULL;
    }
    return FIELD(ts, o->ts_current_frame, void *);
}

int pyapi_walk(void *ts, struct pyframe *out, int max)
{
    const struct pyoffsets *o = offsets;
    int n = 0, depth = 0;
    void *frame;
    if (!o || !ts) return 0;
    for (frame = top_frame(ts); frame && n < max && depth < WALK_MAX_DEPTH;
         frame = FIELD(frame, o->frame_back, void *), depth++) {
        void *code = FIELD(frame, o->frame_code, void *);
        int lasti;
        if (!code || FIELD(code, o->ob_type, void *) != code_type) continue; /* 3.13 f_executable */
        if (o->frame_owner >= 0) {
            int owner = FIELD(frame, o->frame_owner, char);
            char *first = (char *)code + o->co_code_adaptive;
            char *instr = FIELD(frame, o->frame_instr, char *);
            if (owner == o->owner_cstack) continue; /* shim frame */
            if (owner != o->owner_generator && instr < first + 2 * FIELD(code, o->co_firsttraceable, int))
                continue; /* incomplete: not started yet */
            lasti = (int)(instr - first);
        } else {
            lasti = FIELD(frame, o->frame_lasti, int);
            if (o->minor == 10 && lasti > 0) lasti *= 2; /* 3.10 counts code units */
        }
        out[n].code = code;
        out[n].lasti = lasti;
        n++;
    }
    return n;
}

void pyapi_code_key(void *code, void **file, void **name, int *firstline)
{
    *file = FIELD(code, offsets->co_filename, void *);
    *name = FIELD(code, offsets->co_name, void *);
    *firstline = FIELD(code, offsets->co_firstlineno, int);
}

/* A str's UTF-8 text. Compact ASCII strings (nearly every file and function
 * name) are read in place: no allocation, no exception possible. PyASCIIObject:
 * state bits at 32 (compact bit 5, ascii bit 6); the text follows the struct,
 * which holds a wstr pointer up to 3.11 (48 bytes) and not since 3.12 (40). */
static const char *str_utf8(void *str)
{
    unsigned state;
    if (!str) return "?";
    state = FIELD(str, 32, unsigned);
    if ((state >> 5 & 1) && (state >> 6 & 1)) return (const char *)str + (offsets->minor >= 12 ? 40 : 48);
    {
        const char *s = as_utf8(str);
        return s ? s : "?";
    }
}

void pyapi_code_where(const struct pyframe *f, const char **file, const char **func, int *firstline, int *line)
{
    *file = str_utf8(FIELD(f->code, offsets->co_filename, void *));
    *func = str_utf8(FIELD(f->code, offsets->co_name, void *));
    *firstline = FIELD(f->code, offsets->co_firstlineno, int);
    *line = addr2line(f->code, f->lasti);
}
