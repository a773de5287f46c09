/* pyabi.c -- every per-version CPython fact memprof relies on: one entry per minor version, grouped by struct. */
#include "common/pyabi.h"

#include <stdio.h>
#include <string.h>

#include "common/util.h"

/* Shared by many entries: what did not move between the versions named. */

/* struct _gc_runtime_state 3.8-3.13: trash 0, enabled 0x0c, generations[3] at
 * 0x18 (24 bytes each), generation0 pointer 0x60, permanent_generation 0x68. */
#define GC_3_8 .enabled = 0x0c, .generations = 0x18, .generation0 = 0x60, .permanent = 0x68

#define NO_TSTATE_GATE .gilstate_counter = -1, .on_delete = -1
#define NO_OWNER .owner = -1, .owned_by_generator = -1, .first_not_python = 256

#define F_MANAGED_WEAKREF (1UL << 3) /* Py_TPFLAGS_MANAGED_WEAKREF, 3.12+ */
#define F_MANAGED_DICT (1UL << 4)    /* Py_TPFLAGS_MANAGED_DICT, 3.11+ */

/* Offsets read with gdb `ptype /o` / `print &((T*)0)->f` from the debug info of
 * the pyenv builds 3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1, 3.13.0 on x86_64 (3.14
 * and 3.15: offsetof compiled against Debian sid's headers, see their entries) and
 * checked at run time by tests/agent/verify_offsets.py (a frame walk compared with
 * traceback) and tests/test_objects.py (the census against gc.get_objects) on
 * those and on Debian's 3.11. These are private structures: a micro release may
 * in principle move them, which is why readers validate what they read (code
 * object type, bounded depth, list heads) and 3.13+ are checked against the
 * interpreter's own _Py_DebugOffsets at attach. .rt and .code.linetable (memprof rss):
 * gdb on the pyenv builds, and for all of 3.11-3.15 found in-process (the fields
 * that point at the interpreter, its thread state, the code's co_linetable),
 * which agree with _Py_DebugOffsets where it has them. */
static const struct pyabi table[] = {
    {.minor = 8, .caps = PYABI_FRAME_OBJECTS | PYABI_GC_IN_RUNTIME, .measured = "gdb, pyenv 3.8.18",
     .ts = {.interp = 16, .next = 8, .thread_id = 176, .native_thread_id = -1, .frame = 24, .cframe = -1,
            .cframe_current = -1, .current_frame = -1, NO_TSTATE_GATE},
     .frame = {.back = 24, .code = 32, .lasti = 104, .instr = -1, NO_OWNER},
     .code = {.firstlineno = 40, .filename = 104, .name = 112, .qualname = -1, .code_adaptive = -1,
              .firsttraceable = -1},
     .type = {.cached_keys = -1, .preheader_flags = 0},
     .gc = {.state = 0x158, .collecting = 0xc8, GC_3_8},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_NONE},
     .list = {.items = 0x18}, .tuple = {.items = 0x18}, .module = {.name = 0x30}, .longobj = {.tag = -1},
     .str = {.state = 0x20, .ascii_size = 48, .compact_size = 72},
     .frameobj = {.iframe = -1, .globals = 0x30, .locals = 0x38},
     .alloc = {.small_max = 512}},
    {.minor = 9, .caps = PYABI_FRAME_OBJECTS, .measured = "gdb, pyenv 3.9.18",
     .ts = {.interp = 16, .next = 8, .thread_id = 176, .native_thread_id = -1, .frame = 24, .cframe = -1,
            .cframe_current = -1, .current_frame = -1, NO_TSTATE_GATE},
     .frame = {.back = 24, .code = 32, .lasti = 104, .instr = -1, NO_OWNER},
     .code = {.firstlineno = 40, .filename = 104, .name = 112, .qualname = -1, .code_adaptive = -1,
              .firsttraceable = -1},
     .type = {.cached_keys = -1, .preheader_flags = 0},
     .gc = {.state = 0x268, .collecting = 0xc8, GC_3_8},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_NONE},
     .list = {.items = 0x18}, .tuple = {.items = 0x18}, .module = {.name = 0x30}, .longobj = {.tag = -1},
     .str = {.state = 0x20, .ascii_size = 48, .compact_size = 72},
     .frameobj = {.iframe = -1, .globals = 0x30, .locals = 0x38},
     .alloc = {.small_max = 512}},
    /* 3.10 has a tstate->cframe too, but it only carries use_tracing: frames
     * are still PyFrameObjects hanging off tstate->frame. */
    {.minor = 10, .caps = PYABI_FRAME_OBJECTS | PYABI_LASTI_UNITS | PYABI_TSTATE_GATE,
     .measured = "gdb, pyenv 3.10.13",
     .ts = {.interp = 16, .next = 8, .thread_id = 176, .native_thread_id = -1, .frame = 24, .cframe = -1,
            .cframe_current = -1, .current_frame = -1, .gilstate_counter = 0xa0, .on_delete = 0xc8},
     .frame = {.back = 24, .code = 32, .lasti = 96, .instr = -1, NO_OWNER},
     .code = {.firstlineno = 40, .filename = 104, .name = 112, .qualname = -1, .code_adaptive = -1,
              .firsttraceable = -1},
     .type = {.cached_keys = -1, .preheader_flags = 0},
     .gc = {.state = 0x268, .collecting = 0xc8, GC_3_8},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_NONE},
     .list = {.items = 0x18}, .tuple = {.items = 0x18}, .module = {.name = 0x30}, .longobj = {.tag = -1},
     .str = {.state = 0x20, .ascii_size = 48, .compact_size = 72},
     .frameobj = {.iframe = -1, .globals = 0x30, .locals = 0x38},
     .alloc = {.small_max = 512}},
    {.minor = 11, .caps = PYABI_CFRAME | PYABI_DICT_KEYS_V2 | PYABI_FRAME_SIZED_BY_CODE,
     .measured = "gdb, pyenv 3.11.7; Debian 3.11.2",
     .ts = {.interp = 16, .next = 8, .thread_id = 152, .native_thread_id = 160, .frame = -1, .cframe = 56,
            .cframe_current = 8, .current_frame = -1, NO_TSTATE_GATE},
     .frame = {.back = 48, .code = 32, .lasti = -1, .instr = 56, .owner = 69, .owned_by_generator = 1,
               .first_not_python = 256},
     .code = {.firstlineno = 72, .filename = 112, .name = 120, .qualname = 128, .code_adaptive = 184,
              .firsttraceable = 168, .linetable = 136},
     .rt = {.interpreters_head = 40, .threads_head = 16},
     .type = {.cached_keys = 0x368, .preheader_flags = F_MANAGED_DICT},
     .gc = {.state = 0x288, .collecting = 0xc8, GC_3_8},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_PREHEADER},
     .list = {.items = 0x18}, .tuple = {.items = 0x18}, .module = {.name = 0x30}, .longobj = {.tag = -1},
     .str = {.state = 0x20, .ascii_size = 48, .compact_size = 72},
     .frameobj = {.iframe = 0x18, .globals = 0x08, .locals = 0x18},
     .alloc = {.small_max = 512}},
    {.minor = 12, .caps = PYABI_CFRAME | PYABI_DICT_KEYS_V2 | PYABI_FRAME_SIZED_BY_CODE | PYABI_LONG_TAG,
     .measured = "gdb, pyenv 3.12.1",
     .ts = {.interp = 16, .next = 8, .thread_id = 136, .native_thread_id = 144, .frame = -1, .cframe = 56,
            .cframe_current = 0, .current_frame = -1, NO_TSTATE_GATE},
     .frame = {.back = 8, .code = 0, .lasti = -1, .instr = 56, .owner = 70, .owned_by_generator = 1,
               .first_not_python = 3 /* FRAME_OWNED_BY_CSTACK: shim frames */},
     .code = {.firstlineno = 68, .filename = 112, .name = 120, .qualname = 128, .code_adaptive = 192,
              .firsttraceable = 176, .linetable = 136},
     .rt = {.interpreters_head = 40, .threads_head = 72},
     .type = {.cached_keys = 0x370, .preheader_flags = F_MANAGED_DICT | F_MANAGED_WEAKREF},
     .gc = {.state = 0x070, .collecting = 0xc8, GC_3_8},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_TAGGED},
     .list = {.items = 0x18}, .tuple = {.items = 0x18}, .module = {.name = 0x30}, .longobj = {.tag = 0x10},
     .str = {.state = 0x20, .ascii_size = 40, .compact_size = 56},
     .frameobj = {.iframe = 0x18, .globals = 0x18, .locals = 0x28},
     .alloc = {.small_max = 512}},
    {.minor = 13,
     .caps = PYABI_DICT_KEYS_V2 | PYABI_FRAME_SIZED_BY_CODE | PYABI_LONG_TAG | PYABI_ANY_EXECUTABLE |
             PYABI_DEBUG_OFFSETS,
     .measured = "gdb and _Py_DebugOffsets, pyenv 3.13.0",
     .ts = {.interp = 16, .next = 8, .thread_id = 152, .native_thread_id = 160, .frame = -1, .cframe = -1,
            .cframe_current = -1, .current_frame = 72, NO_TSTATE_GATE},
     .frame = {.back = 8, .code = 0, .lasti = -1, .instr = 56, .owner = 70, .owned_by_generator = 1,
               .first_not_python = 3 /* FRAME_OWNED_BY_CSTACK */},
     .code = {.firstlineno = 68, .filename = 112, .name = 120, .qualname = 128, .code_adaptive = 200,
              .firsttraceable = 184, .linetable = 136},
     .rt = {.interpreters_head = 632, .threads_head = 7344},
     .type = {.cached_keys = 0x370, .preheader_flags = F_MANAGED_DICT | F_MANAGED_WEAKREF},
     .gc = {.state = 0x1ce8, .collecting = 0xc8, GC_3_8},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_INLINE},
     .list = {.items = 0x18}, .tuple = {.items = 0x18}, .module = {.name = 0x30}, .longobj = {.tag = 0x10},
     .str = {.state = 0x20, .ascii_size = 40, .compact_size = 56},
     .frameobj = {.iframe = 0x18, .globals = 0x18, .locals = 0x28},
     .alloc = {.small_max = 512},
     /* Include/internal/pycore_debug_offsets.h of 3.13 */
     .dbg = {.free_threaded = 16, .rt_interpreters_head = 40, .interp_threads_head = 72, .interp_gc = 80,
             .ts_interp = 176, .ts_next = 168, .ts_current_frame = 184,
             .ts_thread_id = 192, .ts_native_thread_id = 200, .frame_previous = 232, .frame_executable = 240,
             .frame_instr_ptr = 248, .frame_owner = 264, .code_filename = 280, .code_name = 288,
             .code_qualname = 296, .code_linetable = 304, .code_firstlineno = 312, .code_adaptive = 344,
             .ob_type = 360,
             .tp_name = 376, .tp_flags = 392, .list_items = 432, .dict_keys = 456, .dict_values = 464,
             .long_tag = 496, .str_state = 544, .str_ascii_size = 560, .gc_collecting = 576, .size = 584}},
    /* 3.14: f_executable became a _PyStackRef (tag bits 3); frame owner moved
     * to 74 and FRAME_OWNED_BY_INTERPRETER (3, entry frames) joined CSTACK (4)
     * among the frames to skip; code objects grew by 8 (co_code_adaptive 208).
     * Tuples cache their hash (ob_hash) before ob_item, now at 0x20.
 * GC: 3.14.0 shipped the incremental collector (young, old[2], permanent at
     * the same places as generations[3], permanent; no generation0 pointer), later
     * 3.14.x went back to the generational one with generation0 at 256. Where
     * generation0 does not check out, the census lists objects with gc.get_objects. */
    {.minor = 14,
     .caps = PYABI_DICT_KEYS_V2 | PYABI_FRAME_SIZED_BY_CODE | PYABI_LONG_TAG | PYABI_ANY_EXECUTABLE |
             PYABI_STACKREF | PYABI_DEBUG_OFFSETS | PYABI_REMOTE_EXEC,
     .measured = "offsetof with Debian sid's 3.14.10 headers; its _Py_DebugOffsets",
     .ts = {.interp = 16, .next = 8, .thread_id = 152, .native_thread_id = 160, .frame = -1, .cframe = -1,
            .cframe_current = -1, .current_frame = 72, NO_TSTATE_GATE},
     .frame = {.back = 8, .code = 0, .lasti = -1, .instr = 56, .owner = 74, .owned_by_generator = 1,
               .first_not_python = 3 /* FRAME_OWNED_BY_INTERPRETER */, .executable_tag = 3},
     .code = {.firstlineno = 68, .filename = 112, .name = 120, .qualname = 128, .code_adaptive = 208,
              .firsttraceable = 192, .linetable = 136},
     .rt = {.interpreters_head = 808, .threads_head = 7344},
     .type = {.cached_keys = 0x370, .preheader_flags = F_MANAGED_DICT | F_MANAGED_WEAKREF},
     .gc = {.state = 7408, .enabled = 0x0c, .collecting = 192, .generations = 0x18, .permanent = 0x60,
            .generation0 = 256},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_INLINE},
     .list = {.items = 0x18}, .tuple = {.items = 0x20}, .module = {.name = 0x30}, .longobj = {.tag = 0x10},
     .str = {.state = 0x20, .ascii_size = 40, .compact_size = 56},
     .frameobj = {.iframe = 0x18, .globals = 0x18, .locals = 0x28},
     .alloc = {.small_max = 512},
     .dbg = {.free_threaded = 16, .interp_gc = 88, .ts_interp = 200, .ts_next = 192, .ts_current_frame = 208,
             .ts_thread_id = 216, .ts_native_thread_id = 224, .frame_previous = 256, .frame_executable = 264,
             .frame_instr_ptr = 272, .frame_owner = 288, .code_filename = 320, .code_name = 328,
             .code_qualname = 336, .code_linetable = 344, .code_firstlineno = 352, .code_adaptive = 384, .ob_type = 408,
             .tp_name = 424, .tp_flags = 440, .list_items = 480, .dict_keys = 536, .dict_values = 544,
             .long_tag = 576, .str_state = 624, .str_ascii_size = 640, .gc_collecting = 656,
             .rt_interpreters_head = 40, .interp_threads_head = 72, .interp_threads_main = 80,
             .rx_eval_breaker = 712, .rx_support = 720,
             .rx_enabled = 728, .rx_pending_call = 736, .rx_script_path = 744, .rx_script_path_size = 752,
             .size = 760}},
    /* 3.15: thread_id/native_thread_id moved by 24; CSTACK frames are gone
     * (INTERPRETER, 3, is the first non-Python owner; each thread's bottom is a
     * base_frame of that kind); ht_cached_keys at 888; the collector's state
     * lost its trash fields (enabled 0, generations 8, permanent 80, collecting
     * 112, generation0 168); modules lost md_def (md_name at 0x28). Its _Py_DebugOffsets also give ht_cached_keys and
     * sizeof(PyCompactUnicodeObject), both checked. */
    {.minor = 15,
     .caps = PYABI_DICT_KEYS_V2 | PYABI_FRAME_SIZED_BY_CODE | PYABI_LONG_TAG | PYABI_ANY_EXECUTABLE |
             PYABI_STACKREF | PYABI_DEBUG_OFFSETS | PYABI_REMOTE_EXEC,
     .measured = "offsetof with Debian sid's 3.15.2 headers; its _Py_DebugOffsets",
     .ts = {.interp = 16, .next = 8, .thread_id = 176, .native_thread_id = 184, .frame = -1, .cframe = -1,
            .cframe_current = -1, .current_frame = 72, NO_TSTATE_GATE},
     .frame = {.back = 8, .code = 0, .lasti = -1, .instr = 56, .owner = 74, .owned_by_generator = 1,
               .first_not_python = 3 /* FRAME_OWNED_BY_INTERPRETER */, .executable_tag = 3},
     .code = {.firstlineno = 68, .filename = 112, .name = 120, .qualname = 128, .code_adaptive = 208,
              .firsttraceable = 192, .linetable = 136},
     .rt = {.interpreters_head = 936, .threads_head = 7336},
     .type = {.cached_keys = 888, .preheader_flags = F_MANAGED_DICT | F_MANAGED_WEAKREF},
     .gc = {.state = 7400, .enabled = 0, .collecting = 112, .generations = 8, .permanent = 80, .generation0 = 168},
     .dict = {.keys = 0x20, .values = 0x28, .inst_values = PYABI_VALUES_INLINE},
     .list = {.items = 0x18}, .tuple = {.items = 0x20}, .module = {.name = 0x28}, .longobj = {.tag = 0x10},
     .str = {.state = 0x20, .ascii_size = 40, .compact_size = 56},
     .frameobj = {.iframe = 0x18, .globals = 0x18, .locals = 0x28},
     .alloc = {.small_max = 512},
     .dbg = {.free_threaded = 16, .interp_gc = 88, .ts_interp = 200, .ts_next = 192, .ts_current_frame = 208,
             .ts_thread_id = 240, .ts_native_thread_id = 248, .frame_previous = 320, .frame_executable = 328,
             .frame_instr_ptr = 336, .frame_owner = 352, .code_filename = 384, .code_name = 392,
             .code_qualname = 400, .code_linetable = 408, .code_firstlineno = 416, .code_adaptive = 448, .ob_type = 472,
             .tp_name = 488, .tp_flags = 504, .cached_keys = 536, .list_items = 576, .dict_keys = 632,
             .dict_values = 640, .long_tag = 672, .str_state = 720, .str_ascii_size = 736,
             .str_compact_size = 744, .gc_collecting = 760,
             .rt_interpreters_head = 40, .interp_threads_head = 72, .interp_threads_main = 80,
             .rx_eval_breaker = 840, .rx_support = 848,
             .rx_enabled = 856, .rx_pending_call = 864, .rx_script_path = 872, .rx_script_path_size = 880,
             .size = 888}},
};

#define NENTRIES (sizeof table / sizeof table[0])
_Static_assert(NENTRIES == MP_PY_MAX_MINOR - MP_PY_MIN_MINOR + 1, "one pyabi entry per supported minor version");

int pyabi_supported(int major, int minor)
{
    return major == 3 && minor >= MP_PY_MIN_MINOR && minor <= MP_PY_MAX_MINOR;
}

const struct pyabi *pyabi_for(uint32_t hex)
{
    int major = (int)(hex >> 24), minor = (int)(hex >> 16 & 0xff);
    if (!pyabi_supported(major, minor)) return NULL;
    for (size_t i = 0; i < NENTRIES; i++)
        if (table[i].minor == minor) return &table[i];
    return NULL;
}

/* ------------------------------------------------ _Py_DebugOffsets cross-check */

static uint64_t dbg_u64(const void *buf, int pos)
{
    uint64_t v;
    memcpy(&v, (const char *)buf + pos, sizeof v);
    return v;
}

int pyabi_check_debug_offsets(const struct pyabi *a, uint32_t hex, const void *buf, size_t len, char *err)
{
    const struct pyabi_dbg *d = &a->dbg;
    const struct { int pos; long want; const char *name; } f[] = {
        {d->interp_gc, a->gc.state, "interpreter_state.gc"},
        {d->ts_interp, a->ts.interp, "thread_state.interp"},
        {d->ts_next, a->ts.next, "thread_state.next"},
        {d->ts_current_frame, a->ts.current_frame, "thread_state.current_frame"},
        {d->ts_thread_id, a->ts.thread_id, "thread_state.thread_id"},
        {d->ts_native_thread_id, a->ts.native_thread_id, "thread_state.native_thread_id"},
        {d->frame_previous, a->frame.back, "interpreter_frame.previous"},
        {d->frame_executable, a->frame.code, "interpreter_frame.executable"},
        {d->frame_instr_ptr, a->frame.instr, "interpreter_frame.instr_ptr"},
        {d->frame_owner, a->frame.owner, "interpreter_frame.owner"},
        {d->code_filename, a->code.filename, "code_object.filename"},
        {d->code_name, a->code.name, "code_object.name"},
        {d->code_qualname, a->code.qualname, "code_object.qualname"},
        {d->code_linetable, a->code.linetable, "code_object.linetable"},
        {d->rt_interpreters_head, a->rt.interpreters_head, "runtime_state.interpreters_head"},
        {d->interp_threads_head, a->rt.threads_head, "interpreter_state.threads_head"},
        {d->code_firstlineno, a->code.firstlineno, "code_object.firstlineno"},
        {d->code_adaptive, a->code.code_adaptive, "code_object.co_code_adaptive"},
        {d->ob_type, PYABI_OB_TYPE, "pyobject.ob_type"},
        {d->tp_name, PYABI_TP_NAME, "type_object.tp_name"},
        {d->tp_flags, PYABI_TP_FLAGS, "type_object.tp_flags"},
        {d->cached_keys, a->type.cached_keys, "heap_type_object.ht_cached_keys"},
        {d->list_items, a->list.items, "list_object.ob_item"},
        {d->dict_keys, a->dict.keys, "dict_object.ma_keys"},
        {d->dict_values, a->dict.values, "dict_object.ma_values"},
        {d->long_tag, a->longobj.tag, "long_object.lv_tag"},
        {d->str_state, a->str.state, "unicode_object.state"},
        {d->str_ascii_size, a->str.ascii_size, "unicode_object.asciiobject_size"},
        {d->str_compact_size, a->str.compact_size, "unicode_object.compactunicodeobject_size"},
        {d->gc_collecting, a->gc.collecting, "gc.collecting"},
    };
    if (!(a->caps & PYABI_DEBUG_OFFSETS)) return 0;
    if (len < (size_t)d->size || memcmp(buf, "xdebugpy", 8) != 0) {
        mp_err(err, "Python 3.%d: no _Py_DebugOffsets at the start of _PyRuntime", a->minor);
        return -1;
    }
    if (dbg_u64(buf, d->free_threaded)) {
        mp_err(err, "Python 3.%d: free-threaded builds are not supported (use the default build with a GIL)",
               a->minor);
        return -1;
    }
    if ((dbg_u64(buf, 8) & 0xffff0000u) != (hex & 0xffff0000u)) {
        mp_err(err, "Python 3.%d: _Py_DebugOffsets says version 0x%08llx", a->minor,
               (unsigned long long)dbg_u64(buf, 8));
        return -1;
    }
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        uint64_t got;
        if (!f[i].pos) continue;
        got = dbg_u64(buf, f[i].pos);
        if (f[i].want < 0 || got != (uint64_t)f[i].want) {
            mp_err(err, "Python %u.%u.%u: its layout differs from memprof's table (%s is %llu, expected %ld); "
                   "not attaching", hex >> 24, hex >> 16 & 0xff, hex >> 8 & 0xff, f[i].name,
                   (unsigned long long)got, f[i].want);
            return -1;
        }
    }
    return 0;
}
