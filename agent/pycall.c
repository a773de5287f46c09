/* pycall.c -- the few things the agent installs in the interpreter through the
 * Python C API (resolved at run time, no headers), all with the GIL held:
 *   - an atexit callback, so that the process's final figures reach the daemon
 *     before the interpreter tears itself down (and frees everything);
 *   - for memprof run, a `profile` builtin compatible with memory_profiler's
 *     decorator: it records which functions the script wants reports for and
 *     returns them unchanged (no wrapper, no cost per call); and `import
 *     memory_profiler` gives a module whose profile is that builtin. */
#include "agent/pycall.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "agent/log.h"
#include "common/util.h"

#define METH_VARARGS 0x0001
#define METH_KEYWORDS 0x0002
#define METH_NOARGS 0x0004
#define MAX_PROFILED 256

/* PyMethodDef, the same layout in every CPython 3. */
struct py_methoddef {
    const char *name;
    void *meth;
    int flags;
    const char *doc;
};

static struct {
    void *(*ImportModule)(const char *);
    void *(*GetAttrString)(void *, const char *);
    int (*SetAttrString)(void *, const char *, void *);
    int (*HasAttrString)(void *, const char *);
    void *(*CallFunctionObjArgs)(void *, ...);
    void *(*CFunction_NewEx)(struct py_methoddef *, void *, void *);
    void (*IncRef)(void *);
    void (*DecRef)(void *);
    void (*ErrClear)(void);
    int (*CallableCheck)(void *);
    long (*TupleSize)(void *);
    void *(*TupleGetItem)(void *, long);
    const char *(*AsUTF8)(void *);
    long (*AsLong)(void *);
    void *(*SaveThread)(void);
    void (*RestoreThread)(void *);
    void *(*FromString)(const char *);
    void *(*DictNew)(void);
    void *None;
} A;
static int resolved;

static int resolve(void)
{
    const struct pyapi_symbol table[] = {
        {(void **)&A.ImportModule, "PyImport_ImportModule", 0},
        {(void **)&A.GetAttrString, "PyObject_GetAttrString", 0},
        {(void **)&A.SetAttrString, "PyObject_SetAttrString", 0},
        {(void **)&A.HasAttrString, "PyObject_HasAttrString", 0},
        {(void **)&A.CallFunctionObjArgs, "PyObject_CallFunctionObjArgs", 0},
        {(void **)&A.CFunction_NewEx, "PyCFunction_NewEx", 0},
        {(void **)&A.IncRef, "Py_IncRef", 0},
        {(void **)&A.DecRef, "Py_DecRef", 0},
        {(void **)&A.ErrClear, "PyErr_Clear", 0},
        {(void **)&A.CallableCheck, "PyCallable_Check", 0},
        {(void **)&A.TupleSize, "PyTuple_Size", 0},
        {(void **)&A.TupleGetItem, "PyTuple_GetItem", 0},
        {(void **)&A.AsUTF8, "PyUnicode_AsUTF8", 0},
        {(void **)&A.AsLong, "PyLong_AsLong", 0},
        {(void **)&A.SaveThread, "PyEval_SaveThread", 0},
        {(void **)&A.RestoreThread, "PyEval_RestoreThread", 0},
        {(void **)&A.FromString, "PyUnicode_FromString", 0},
        {(void **)&A.DictNew, "PyDict_New", 0},
        {&A.None, "_Py_NoneStruct", 0},
    };
    if (resolved) return resolved > 0 ? 0 : -1;
    resolved = pyapi_resolve(table, sizeof table / sizeof table[0]) ? -1 : 1;
    return resolved > 0 ? 0 : -1;
}

static void xdecref(void *o)
{
    if (o) A.DecRef(o);
}

/* module.NAME(arg); 0 when it returned normally. Exceptions are cleared. */
static int call_in(const char *module, const char *name, void *arg)
{
    void *m = A.ImportModule(module), *f = m ? A.GetAttrString(m, name) : NULL;
    void *r = f ? A.CallFunctionObjArgs(f, arg, NULL) : NULL;
    xdecref(r);
    xdecref(f);
    xdecref(m);
    if (!r) A.ErrClear();
    return r ? 0 : -1;
}

/* ------------------------------------------------------------ atexit */

static void *exit_fn;
static void (*exit_report)(double wait_s); /* pycall_atexit_register's */

static void *on_exit_cb(void *self, void *unused)
{
    void *ts;
    (void)self;
    (void)unused;
    /* without the GIL while the agent thread writes: it may be waiting for it */
    ts = A.SaveThread();
    exit_report(PYCALL_FINAL_WAIT_S);
    A.RestoreThread(ts);
    A.IncRef(A.None);
    return A.None;
}

static struct py_methoddef exit_def = {"memprof_final_report", (void *)on_exit_cb, METH_NOARGS,
                                       "memprof: send the final allocation figures to memprofd"};

int pycall_atexit_register(void (*report)(double wait_s))
{
    if (exit_fn) return 0;
    exit_report = report;
    if (resolve() < 0 || !(exit_fn = A.CFunction_NewEx(&exit_def, NULL, NULL))) {
        if (resolved > 0) A.ErrClear();
        return -1;
    }
    if (call_in("atexit", "register", exit_fn) < 0) {
        A.DecRef(exit_fn);
        exit_fn = NULL;
        return -1;
    }
    return 0;
}

int pycall_atexit_unregister(void)
{
    if (!exit_fn) return 0;
    if (call_in("atexit", "unregister", exit_fn) < 0) return -1;
    A.DecRef(exit_fn);
    exit_fn = NULL;
    return 0;
}

int pycall_atexit_registered(void) { return exit_fn != NULL; }

/* ------------------------------------------------------------ @profile */

struct profiled {
    char file[1024], name[256];
    int first;
};
static struct profiled prof[MAX_PROFILED];
static int nprof, prof_sent;
static pthread_mutex_t prof_mu = PTHREAD_MUTEX_INITIALIZER;
static void *profile_fn;

/* The code object of a function, bound method, or anything wrapping one
 * (functools.wraps, staticmethod, classmethod). New reference or NULL. */
static void *code_of(void *f)
{
    static const char *const via[] = {"__func__", "__wrapped__", NULL};
    void *code;
    if (A.HasAttrString(f, "__code__")) return A.GetAttrString(f, "__code__");
    for (int i = 0; via[i]; i++) {
        if (!A.HasAttrString(f, via[i])) continue;
        void *inner = A.GetAttrString(f, via[i]);
        code = inner && A.HasAttrString(inner, "__code__") ? A.GetAttrString(inner, "__code__") : NULL;
        xdecref(inner);
        if (code) return code;
    }
    return NULL;
}

static void record(void *f)
{
    void *code = code_of(f), *file = NULL, *name = NULL, *first = NULL;
    const char *sf, *sn;
    long fl;
    if (code) {
        file = A.GetAttrString(code, "co_filename");
        /* the name the frames carry (pyabi_code_name): qualified where the code has one */
        name = A.GetAttrString(code, A.HasAttrString(code, "co_qualname") ? "co_qualname" : "co_name");
        first = A.GetAttrString(code, "co_firstlineno");
    }
    sf = file ? A.AsUTF8(file) : NULL;
    sn = name ? A.AsUTF8(name) : NULL;
    fl = first ? A.AsLong(first) : -1;
    if (sf && sn && fl >= 0) {
        pthread_mutex_lock(&prof_mu);
        int dup = 0;
        for (int i = 0; i < nprof && !dup; i++)
            dup = prof[i].first == (int)fl && !strcmp(prof[i].name, sn) && !strcmp(prof[i].file, sf);
        if (!dup && nprof < MAX_PROFILED) {
            snprintf(prof[nprof].file, sizeof prof[nprof].file, "%s", sf);
            snprintf(prof[nprof].name, sizeof prof[nprof].name, "%s", sn);
            prof[nprof].first = (int)fl;
            nprof++;
        }
        pthread_mutex_unlock(&prof_mu);
    }
    xdecref(first);
    xdecref(name);
    xdecref(file);
    xdecref(code);
    A.ErrClear(); /* a callable without code (a class, a builtin): no report */
}

/* profile(func) -> func, recorded; profile(...options) -> profile, as
 * memory_profiler's @profile(precision=4) or profile(stream=f). */
static void *profile_cb(void *self, void *args, void *kwargs)
{
    void *f = args && A.TupleSize(args) > 0 ? A.TupleGetItem(args, 0) : NULL;
    (void)self;
    (void)kwargs;
    if (f && A.CallableCheck(f)) {
        record(f);
        A.IncRef(f);
        return f;
    }
    A.ErrClear();
    A.IncRef(profile_fn);
    return profile_fn;
}

static struct py_methoddef profile_def = {
    "profile", (void *)profile_cb, METH_VARARGS | METH_KEYWORDS,
    "memprof run: marks a function for a line-by-line memory report (memory_profiler's @profile); "
    "returns it unchanged"};

/* Scripts written for memory_profiler import its decorator (`from memory_profiler import profile`, or
 * `@memory_profiler.profile`), which would run memory_profiler's own tracer (tens of times slower) and leave memprof
 * nothing to report. A finder first on sys.meta_path makes that import give memprof's profile: where memory_profiler
 * is installed, its module runs as usual (memory_usage and the rest are its own) and only profile is replaced; where
 * it is not, the module holds profile alone. Python source, run once: the import system's own classes do the work. */
static const char shim_src[] =
    "def _memprof_install(sys, profile):\n"
    "    import importlib.machinery as machinery\n"
    "    class MemprofMemoryProfiler:\n"
    "        \"memprof run: memory_profiler.profile is memprof's @profile\"\n"
    "        def __init__(self, real):\n"
    "            self.real = real\n"
    "        @classmethod\n"
    "        def find_spec(cls, name, path=None, target=None):\n"
    "            if name != 'memory_profiler':\n"
    "                return None\n"
    "            real = machinery.PathFinder.find_spec(name, path)\n"
    "            return machinery.ModuleSpec(name, cls(real), origin=real.origin if real else 'memprof')\n"
    "        def create_module(self, spec):\n"
    "            return None\n"
    "        def exec_module(self, module):\n"
    "            if self.real is not None and self.real.loader is not None:\n"
    "                module.__file__ = self.real.origin\n"
    "                try:\n"
    "                    self.real.loader.exec_module(module)\n"
    "                except Exception:\n"
    "                    pass  # memory_profiler's own needs (psutil) missing: profile alone\n"
    "            module.profile = profile\n"
    "    sys.meta_path.insert(0, MemprofMemoryProfiler)\n"
    "import sys, builtins\n"
    "if 'memory_profiler' not in sys.modules:\n"
    "    _memprof_install(sys, builtins.profile)\n";

static int shim_install(void)
{
    void *b = A.ImportModule("builtins"), *ex = b ? A.GetAttrString(b, "exec") : NULL;
    void *src = ex ? A.FromString(shim_src) : NULL, *g = src ? A.DictNew() : NULL;
    void *r = g ? A.CallFunctionObjArgs(ex, src, g, NULL) : NULL;
    int rc = r ? 0 : -1;
    xdecref(r);
    xdecref(g);
    xdecref(src);
    xdecref(ex);
    xdecref(b);
    if (rc < 0) A.ErrClear();
    return rc;
}

int pycall_profile_install(void)
{
    void *b;
    int rc = -1;
    if (resolve() < 0 || !(b = A.ImportModule("builtins"))) {
        if (resolved > 0) A.ErrClear();
        return -1;
    }
    if (A.HasAttrString(b, "profile")) {
        rc = 1; /* someone else's (line_profiler's kernprof): leave it */
    } else if ((profile_fn = A.CFunction_NewEx(&profile_def, NULL, NULL)) && A.SetAttrString(b, "profile", profile_fn) == 0) {
        rc = 0;
        if (shim_install() < 0) agent_log("no memory_profiler shim: `from memory_profiler import profile` is its own");
    }
    if (rc < 0) A.ErrClear();
    A.DecRef(b);
    return rc;
}

size_t pycall_profiled_take(Memprof__AllocFrame ***out)
{
    size_t n = 0;
    *out = NULL;
    pthread_mutex_lock(&prof_mu);
    if (nprof > prof_sent) {
        Memprof__AllocFrame **v = calloc((size_t)(nprof - prof_sent), sizeof *v);
        Memprof__AllocFrame *f = calloc((size_t)(nprof - prof_sent), sizeof *f);
        if (v && f) {
            for (int i = prof_sent; i < nprof; i++, n++) {
                memprof__alloc_frame__init(&f[n]);
                f[n].file = strdup(prof[i].file);
                f[n].function = strdup(prof[i].name);
                f[n].first_line = (uint32_t)prof[i].first;
                f[n].line = (uint32_t)prof[i].first;
                v[n] = &f[n];
            }
            prof_sent = nprof;
            *out = v;
        } else {
            free(v);
            free(f);
        }
    }
    pthread_mutex_unlock(&prof_mu);
    return n;
}

void pycall_profiled_free(Memprof__AllocFrame **v, size_t n)
{
    if (!v) return;
    for (size_t i = 0; i < n; i++) {
        free(v[i]->file);
        free(v[i]->function);
    }
    free(n ? v[0] : NULL);
    free(v);
}

void pycall_atfork_child(void)
{
    /* a follow-fork child is a new session: it tells its daemon connection again */
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    prof_mu = fresh;
    prof_sent = 0;
}
