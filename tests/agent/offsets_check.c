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
    const struct pyabi *o;
    char err[MP_ERRLEN];
    int n = 0, len = 0;

    out[0] = 0;
    if (pyapi_init("", err) < 0 || pyapi_load_version(err) < 0) {
        snprintf(out, (size_t)outlen, "%s", err);
        return -1;
    }
    o = pyapi_abi();
    utf8 = (const char *(*)(void *))pyapi_sym("PyUnicode_AsUTF8");
    addr2line = (int (*)(void *, int))pyapi_sym("PyCode_Addr2Line");
    code_type = pyapi_sym("PyCode_Type");
    if (!o || !PY.ThreadState_Get || !utf8 || !addr2line || !code_type) {
        snprintf(out, (size_t)outlen, "no ABI entry for %s (%s) or missing symbols", pyapi_version(),
                 pyapi_abi_error());
        return -1;
    }
    tstate = PY.ThreadState_Get();
    /* the same walk as the hooks' pyapi_walk, spelled out from the table */
    for (frame = pyapi_top_frame(tstate); frame && n < 500; frame = FIELD(frame, o->frame.back, void *)) {
        void *code = pyapi_frame_code(frame);
        int lasti;
        if (!code || FIELD(code, PYABI_OB_TYPE, void *) != code_type) continue; /* 3.13+ f_executable */
        if (o->frame.owner >= 0) {
            int owner = FIELD(frame, o->frame.owner, char);
            char *first = (char *)code + o->code.code_adaptive;
            char *instr = FIELD(frame, o->frame.instr, char *);
            if (owner >= o->frame.first_not_python) continue; /* shim or entry frame */
            if (owner != o->frame.owned_by_generator &&
                instr < first + 2 * FIELD(code, o->code.firsttraceable, int))
                continue; /* incomplete */
            lasti = (int)(instr - first);
        } else {
            lasti = FIELD(frame, o->frame.lasti, int);
            if (o->caps & PYABI_LASTI_UNITS) lasti *= 2; /* 3.10 counts code units */
        }
        len += snprintf(out + len, (size_t)(outlen - len), "%s|%s|%d|%d\n",
                        utf8(FIELD(code, o->code.name, void *)),
                        utf8(FIELD(code, o->code.filename, void *)),
                        FIELD(code, o->code.firstlineno, int), addr2line(code, lasti));
        if (len >= outlen) return -1;
        n++;
    }
    pyapi_fini();
    return n;
}
