/* pyabi.h -- the CPython ABI memprof reads directly: one entry per minor version,
 * grouped by struct, with named capabilities. Every per-version fact lives in
 * pyabi.c; the agent (frame walk, GIL, census, hooks) and the daemon (probe,
 * _Py_DebugOffsets cross-check) only ask this module. Data and inline
 * helpers only (the field accessor PYABI_AT, the str state decoders): no dlsym,
 * no Python calls, so it lives in common/ and links into the agent, memprofd,
 * memprof and the test harnesses alike. */
#ifndef MEMPROF_PYABI_H
#define MEMPROF_PYABI_H

#include <stddef.h>
#include <stdint.h>

#include "common/pyversions.h"

/* The same in every supported version (release builds, LP64): PyObject and
 * PyVarObject, PyGC_Head (16 bytes just before a tracked object), the
 * PyTypeObject slots memprof reads, PyMemberDef. (3.14 split ob_refcnt into a
 * 32-bit count, ob_overflow and ob_flags: PYABI_OB_REFCNT is the whole word.) */
#define PYABI_OB_REFCNT 0
#define PYABI_OB_TYPE 8
#define PYABI_OB_SIZE 16
#define PYABI_GC_HEAD 16
#define PYABI_TP_NAME 24
#define PYABI_TP_BASICSIZE 32
#define PYABI_TP_ITEMSIZE 40
#define PYABI_TP_FLAGS 168
#define PYABI_TP_TRAVERSE 184
#define PYABI_TP_MEMBERS 240
#define PYABI_TP_BASE 256
#define PYABI_TP_DICT 264
#define PYABI_TP_DICTOFFSET 288
#define PYABI_TP_IS_GC 328
#define PYABI_TP_BASES 336
#define PYABI_TP_MRO 344
#define PYABI_BYTES_SVAL 32 /* PyBytesObject ob_sval (after ob_shash) */
#define PYABI_MEMBERDEF_SIZE 40 /* name 0, type 8, offset 16, flags 24 */

/* Capabilities: what a version has, named, instead of `minor == N` tests. */
#define PYABI_FRAME_OBJECTS (1u << 0)   /* 3.8-3.10: the walk follows PyFrameObjects (ts.frame) */
#define PYABI_CFRAME (1u << 1)          /* 3.11-3.12: ts.cframe->current_frame */
#define PYABI_LASTI_UNITS (1u << 2)     /* 3.10: f_lasti counts 2-byte code units */
#define PYABI_ANY_EXECUTABLE (1u << 3)  /* 3.13+: a frame's executable may be no code object */
#define PYABI_STACKREF (1u << 4)        /* 3.14+: f_executable is a tagged _PyStackRef */
#define PYABI_TSTATE_GATE (1u << 5)     /* 3.10: the agent guards its own thread state at finalization */
#define PYABI_LONG_TAG (1u << 6)        /* 3.12+: PyLongObject lv_tag instead of ob_size */
#define PYABI_DICT_KEYS_V2 (1u << 7)    /* 3.11+: PyDictKeysObject with log2 sizes, 32-byte header */
#define PYABI_FRAME_SIZED_BY_CODE (1u << 8) /* 3.11+: frames/generators have itemsize, no ob_size */
#define PYABI_GC_IN_RUNTIME (1u << 9)   /* 3.8: the collector's state is in _PyRuntime */
#define PYABI_DEBUG_OFFSETS (1u << 10)  /* 3.13+: _Py_DebugOffsets opens _PyRuntime */
#define PYABI_REMOTE_EXEC (1u << 11)    /* 3.14+: PEP 768 sys.remote_exec */

/* Where a 3.11+ instance keeps its attribute values when it has no dict. */
enum pyabi_values {
    PYABI_VALUES_NONE,      /* 3.8-3.10: always a dict */
    PYABI_VALUES_PREHEADER, /* 3.11: PyDictValues * at obj-32 */
    PYABI_VALUES_TAGGED,    /* 3.12: at obj-24, stored as values-1 (bit 0 set) */
    PYABI_VALUES_INLINE,    /* 3.13+: after the object (Py_TPFLAGS_INLINE_VALUES) */
};

/* Positions (byte offsets) of fields in the interpreter's _Py_DebugOffsets,
 * 0 when that version's struct has no such field. Each names a value of this
 * table it is compared with at attach. */
struct pyabi_dbg {
    int free_threaded;
    int interp_gc, ts_interp, ts_next, ts_current_frame, ts_thread_id, ts_native_thread_id;
    int frame_previous, frame_executable, frame_instr_ptr, frame_owner;
    int code_filename, code_name, code_qualname, code_linetable, code_firstlineno, code_adaptive;
    int ob_type, tp_name, tp_flags, cached_keys, dict_keys, dict_values, list_items, long_tag;
    int str_state, str_ascii_size, str_compact_size;
    int gc_collecting;
    int interp_threads_head; /* PyInterpreterState.threads.head (memprof rss; also compared) */
    /* PEP 768 (PYABI_REMOTE_EXEC): where _Py_DebugOffsets keeps the offsets
     * sys.remote_exec() uses (read from the target, not compared) */
    int rt_interpreters_head, interp_threads_main;
    int rx_eval_breaker, rx_support, rx_enabled, rx_pending_call, rx_script_path, rx_script_path_size;
    int size; /* bytes to read from _PyRuntime to see them all */
};

/* Byte offsets in release builds with a GIL on x86_64/aarch64 (LP64); -1 where
 * the field does not exist in that version. */
struct pyabi {
    int minor;
    unsigned caps;
    const char *measured; /* where the numbers come from */
    struct {              /* PyThreadState */
        int interp, next, thread_id, native_thread_id;
        int frame;         /* PYABI_FRAME_OBJECTS: PyFrameObject *frame */
        int cframe;        /* PYABI_CFRAME: _PyCFrame *cframe ... */
        int cframe_current;/* ... its _PyInterpreterFrame *current_frame */
        int current_frame; /* 3.13+ */
        int gilstate_counter, on_delete; /* PYABI_TSTATE_GATE */
    } ts;
    struct {               /* the frame the walk goes through */
        int back, code;    /* f_back/previous; f_code/f_executable */
        int lasti;         /* 3.8-3.10 int f_lasti */
        int instr;         /* 3.11-3.12 prev_instr, 3.13+ instr_ptr */
        int owner;         /* 3.11+: char owner */
        int owned_by_generator;
        int first_not_python; /* owner values from here on are shim/entry frames (skip) */
        uintptr_t executable_tag; /* PYABI_STACKREF: bits to clear from f_executable */
    } frame;
    struct {               /* PyCodeObject */
        int firstlineno, filename, name, qualname; /* qualname: co_qualname, 3.11+ (-1 before) */
        int code_adaptive, firsttraceable; /* 3.11+ */
        int linetable;     /* co_linetable (a bytes object), for `memprof rss`; 0: not measured */
    } code;
    struct {               /* finding a thread's PyThreadState from outside (memprof rss); 0: not measured */
        int interpreters_head; /* _PyRuntime.interpreters.head */
        int threads_head;      /* PyInterpreterState.threads.head */
    } rt;
    struct {               /* PyHeapTypeObject (the PyTypeObject slots are PYABI_TP_*) */
        int cached_keys;   /* ht_cached_keys (3.11+) */
        unsigned long preheader_flags; /* tp_flags that add 16 bytes before the PyGC_Head */
    } type;
    struct {               /* struct _gc_runtime_state */
        int state;         /* in PyInterpreterState (in _PyRuntime with PYABI_GC_IN_RUNTIME) */
        int enabled, collecting;
        int generations;   /* struct gc_generation generations[3], 24 bytes each (3.14.0: young, old[2]) */
        int permanent;     /* permanent_generation */
        int generation0;   /* PyGC_Head *generation0 == &generations[0] (validates the state) */
    } gc;
    struct {               /* PyDictObject; instances' attribute values */
        int keys, values;  /* ma_keys, ma_values */
        enum pyabi_values inst_values;
    } dict;
    struct { int items; } list;     /* PyListObject ob_item */
    struct { int items; } tuple;    /* PyTupleObject ob_item[] (3.14+ caches ob_hash before it) */
    struct { int name; } module;    /* PyModuleObject md_name (3.15 dropped md_def) */
    struct { int tag; } longobj;    /* PYABI_LONG_TAG: lv_tag (else ob_size) */
    struct { int state, ascii_size, compact_size; } str; /* state bits; sizeof PyASCIIObject, PyCompactUnicodeObject */
    struct { int iframe, globals, locals; } frameobj; /* PyFrameObject: its _PyInterpreterFrame * (3.11+, else -1); f_globals/f_locals */
    struct { size_t small_max; } alloc; /* pymalloc's largest small request */
    struct pyabi_dbg dbg;
};

/* The entry for PY_VERSION_HEX hex; NULL for a version memprof does not know. */
const struct pyabi *pyabi_for(uint32_t hexversion);
/* 1 when 3.minor is within MP_PY_MIN_MINOR..MP_PY_MAX_MINOR. */
int pyabi_supported(int major, int minor);

/* Compares the interpreter's _Py_DebugOffsets (len bytes read from the start of
 * _PyRuntime) with abi. 0 when they agree or abi has no PYABI_DEBUG_OFFSETS;
 * -1 with err naming the first field that differs, a free-threaded build, a
 * missing cookie or another version. */
int pyabi_check_debug_offsets(const struct pyabi *abi, uint32_t hexversion, const void *buf, size_t len, char *err);

/* The field of type T at byte offset off of the object at p, as an lvalue: the one way memprof reads a
 * CPython struct of its own process by the offsets of this table (PYABI_AT(ts, abi->ts.interp, void *)). */
#define PYABI_AT(p, off, T) (*(T *)((char *)(p) + (off)))

/* A str's PyASCIIObject.state (abi->str.state), its bits the same in every supported version: kind 2-4 (1, 2
 * or 4 bytes a character), compact 5 (the characters follow the header), ascii 6. */
static inline unsigned pyabi_str_kind(uint32_t state) { return state >> 2 & 7; }
static inline int pyabi_str_compact(uint32_t state) { return state >> 5 & 1; }
static inline int pyabi_str_ascii(uint32_t state) { return state >> 6 & 1; }
/* Where a compact str's characters start: after its PyASCIIObject when ascii, else after its
 * PyCompactUnicodeObject (where a str that is not compact keeps a pointer to them). */
static inline int pyabi_str_data(const struct pyabi *a, uint32_t state)
{
    return pyabi_str_ascii(state) ? a->str.ascii_size : a->str.compact_size;
}
/* A str of this process: its state; its characters in place when it is compact ASCII, else NULL. */
static inline uint32_t pyabi_str_state(const struct pyabi *a, const void *str) { return PYABI_AT(str, a->str.state, uint32_t); }
static inline const char *pyabi_str_ascii_chars(const struct pyabi *a, const void *str)
{
    uint32_t state = pyabi_str_state(a, str);
    return pyabi_str_compact(state) && pyabi_str_ascii(state) ? (const char *)str + a->str.ascii_size : NULL;
}

/* The code object's field that names its function in every view: co_qualname
 * (Class.method, outer.<locals>.inner) where it exists (3.11+), else co_name. */
static inline int pyabi_code_name(const struct pyabi *a) { return a->code.qualname >= 0 ? a->code.qualname : a->code.name; }

#endif
