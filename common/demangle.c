/* demangle.c -- C++ symbol names for display, with libstdc++'s demangler (__cxa_demangle, its C ABI). */
#include "common/demangle.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libstdc++'s (cxxabi.h is C++ only): a malloc'd name, or NULL with status < 0 */
char *__cxa_demangle(const char *mangled, char *buf, size_t *len, int *status);

enum { DM_SHORT, DM_FULL, DM_NO };

static int mode(void)
{
    static int m = -1;
    if (m < 0) {
        const char *e = getenv("MEMPROF_DEMANGLE");
        m = e && !strcmp(e, "full") ? DM_FULL : e && (!strcmp(e, "no") || !strcmp(e, "0")) ? DM_NO : DM_SHORT;
    }
    return m;
}

static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

/* d (demangled, writable) without its return type and parameter list: "void ns::f<int>(int*, long) const
 * [clone .cold]" -> "ns::f<int> [clone .cold]". Names with no parameter list (data, vtables) are kept. */
static void shorten(char *d)
{
    static const char *const quals[] = {" const", " volatile", " &&", " &", " noexcept"};
    char *clone = strstr(d, " [clone "), *suffix = NULL, *start = d;
    size_t n = clone ? (size_t)(clone - d) : strlen(d);
    int depth = 0, function = 0;
    if (clone && !(suffix = strdup(clone))) return;
    for (int again = 1; again;) {
        again = 0;
        for (size_t i = 0; i < sizeof quals / sizeof quals[0]; i++)
            if (ends_with(d, n, quals[i])) n -= strlen(quals[i]), again = 1;
    }
    if (n > 0 && d[n - 1] == ')') { /* the parameter list: back to its '(' */
        size_t i = n;
        while (i-- > 0) {
            depth += d[i] == ')' ? 1 : d[i] == '(' ? -1 : 0;
            if (!depth) break;
        }
        if (depth == 0 && i > 0 && i < n) n = i, function = 1;
    }
    d[n] = 0;
    /* a function's return type (template functions): the last space outside brackets, before any "operator" */
    depth = 0;
    for (char *p = d; function && *p; p++) {
        if (!depth && !strncmp(p, "operator", 8) && (p == d || p[-1] == ':' || p[-1] == ' ')) break;
        if (strchr("<({[", *p)) depth++;
        else if (strchr(">)}]", *p) && depth > 0) depth--;
        else if (*p == ' ' && !depth) start = p + 1;
    }
    if (start != d) memmove(d, start, strlen(start) + 1);
    if (suffix) {
        size_t l = strlen(d);
        memmove(d + l, suffix, strlen(suffix) + 1); /* shorter than what was cut: fits */
        free(suffix);
    }
}

const char *mp_demangle(const char *name, char *out, size_t len)
{
    int status = -1;
    char *d;
    if (!name || name[0] != '_' || name[1] != 'Z' || !len || mode() == DM_NO) return name;
    d = __cxa_demangle(name, NULL, NULL, &status);
    if (!d || status != 0 || !*d) {
        free(d);
        return name;
    }
    if (mode() == DM_SHORT) shorten(d);
    snprintf(out, len, "%s", *d ? d : name);
    free(d);
    return out;
}
