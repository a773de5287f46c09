/* offsets_check.c -- test helper: walks the calling thread's Python frames with
 * pyapi's walk and offset table, so that verify_offsets.py can compare the result with
 * what the interpreter itself reports. Built with agent/pyapi.c into a shared
 * library and called through ctypes.PyDLL (with the GIL held). */
#include <stdio.h>

#include "agent/pyapi.h"
#include "common/util.h"

__attribute__((visibility("default"))) int oc_walk(char *out, int outlen);

/* One line per frame, innermost first: "name|filename|firstlineno|line", from the agent's own walk
 * (pyapi_walk, as the hooks capture stacks; lines from the interpreter's PyCode_Addr2Line).
 * Returns the number of frames, or -1 with the reason in out. */
int oc_walk(char *out, int outlen)
{
    static struct pyframe frames[500];
    char err[MP_ERRLEN];
    int n, len = 0;

    out[0] = 0;
    if (pyapi_init("", err) < 0 || pyapi_load_version(err) < 0 || pyapi_walk_init(err) < 0) {
        snprintf(out, (size_t)outlen, "%s", err);
        return -1;
    }
    n = pyapi_walk(PY.ThreadState_Get(), frames, 500);
    for (int i = 0; i < n; i++) {
        const char *file, *func;
        int first, line;
        pyapi_code_where(&frames[i], &file, &func, &first, &line);
        len += snprintf(out + len, (size_t)(outlen - len), "%s|%s|%d|%d\n", func, file, first, line);
        if (len >= outlen) return -1;
    }
    pyapi_fini();
    return n;
}
