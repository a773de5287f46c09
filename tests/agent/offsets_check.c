/* offsets_check.c -- test helper: walks the calling thread's Python frames with
 * pyapi's offset table, so that verify_offsets.py can compare the result with
 * what the interpreter itself reports. Built with agent/pyapi.c into a shared
 * library and called through ctypes.PyDLL (with the GIL held). */
#include <stdio.h>
#include <string.h>

#include "pyapi.h"
#include "util.h"

#define FIELD(p, off, type) (*(type *)((char *)(p) + (off)))

__attribute__((visibility("default"))) int oc_walk(char *out, int outlen);

/* One line per frame, innermost first: "name|filename|firstlineno|line".
 * Returns the number of frames, or -1 with the reason in out. */
int oc_walk(char *out, int outlen)
{
    const char *(*utf8)(void *) = NULL;
    int (*addr2line)(void *, int) = NULL;
    void *code_type, *tstate, *frame;
    const struct pyoffsets *o;
    char err[MP_ERRLEN];
    int n = 0, len = 0;

    out[0] = 0;
    if (pyapi_init("", err) < 0 || pyapi_load_version(err) < 0) {
        snprintf(out, (size_t)outlen, "%s", err);
        return -1;
    }
    o = pyapi_offsets();
    utf8 = (const char *(*)(void *))pyapi_sym("PyUnicode_AsUTF8");
    addr2line = (int (*)(void *, int))pyapi_sym("PyCode_Addr2Line");
    code_type = pyapi_sym("PyCode_Type");
    if (!o || !PY.ThreadState_Get || !utf8 || !addr2line || !code_type) {
        snprintf(out, (size_t)outlen, "no offsets for %s or missing symbols", pyapi_version());
        return -1;
    }
    tstate = PY.ThreadState_Get();
    if (o->ts_frame >= 0) frame = FIELD(tstate, o->ts_frame, void *);
    else if (o->ts_cframe >= 0)
        frame = FIELD(FIELD(tstate, o->ts_cframe, void *), o->cframe_current_frame, void *);
    else frame = FIELD(tstate, o->ts_current_frame, void *);

    for (; frame && n < 500; frame = FIELD(frame, o->frame_back, void *)) {
        void *code = FIELD(frame, o->frame_code, void *);
        int lasti;
        if (FIELD(code, o->ob_type, void *) != code_type) continue; /* 3.13 f_executable */
        if (o->frame_owner >= 0) {
            int owner = FIELD(frame, o->frame_owner, char);
            char *first = (char *)code + o->co_code_adaptive;
            char *instr = FIELD(frame, o->frame_instr, char *);
            if (owner == o->owner_cstack) continue; /* shim frame */
            if (owner != o->owner_generator &&
                instr < first + 2 * FIELD(code, o->co_firsttraceable, int))
                continue; /* incomplete */
            lasti = (int)(instr - first);
        } else {
            lasti = FIELD(frame, o->frame_lasti, int);
            if (o->minor == 10) lasti *= 2; /* 3.10 counts code units */
        }
        len += snprintf(out + len, (size_t)(outlen - len), "%s|%s|%d|%d\n",
                        utf8(FIELD(code, o->co_name, void *)),
                        utf8(FIELD(code, o->co_filename, void *)),
                        FIELD(code, o->co_firstlineno, int), addr2line(code, lasti));
        if (len >= outlen) return -1;
        n++;
    }
    pyapi_fini();
    return n;
}
