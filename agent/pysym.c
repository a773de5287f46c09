/* pysym.c -- the Python C API's symbols found in the interpreter's image: one name, a name that changed between
 * versions, a table of rows (some optional). The bottom of the agent: it calls no other agent file. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "agent/agent.h"

static void *lib; /* dlopen(pylib, RTLD_NOLOAD) handle, or NULL */

void pyapi_sym_open(const char *pylib)
{
    pyapi_sym_close();
    /* RTLD_NOLOAD: never load a Python into the target, only find the one in
     * use. Fails for an executable with a static libpython: then the global
     * scope, where such executables export the API. */
    if (pylib && *pylib) lib = dlopen(pylib, RTLD_NOLOAD | RTLD_LAZY);
}

void pyapi_sym_close(void)
{
    if (lib) dlclose(lib);
    lib = NULL;
}

void *pyapi_sym_lib(void) { return lib; }

void *pyapi_sym(const char *name)
{
    void *p = lib ? dlsym(lib, name) : NULL;
    return p ? p : dlsym(RTLD_DEFAULT, name);
}

void *pyapi_sym_any(const char *names)
{
    char name[128];
    for (const char *p = names, *end; *p; p = *end ? end + 1 : end) {
        void *addr;
        end = strchrnul(p, '/');
        snprintf(name, sizeof name, "%.*s", (int)(end - p), p);
        if ((addr = pyapi_sym(name))) return addr;
    }
    return NULL;
}

const struct pyapi_symbol *pyapi_resolve(const struct pyapi_symbol *table, size_t n)
{
    const struct pyapi_symbol *missing = NULL;
    for (size_t i = 0; i < n; i++) {
        *table[i].slot = pyapi_sym_any(table[i].names);
        if (!*table[i].slot && !table[i].optional && !missing) missing = &table[i];
    }
    return missing;
}
