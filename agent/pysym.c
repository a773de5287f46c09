/* pysym.c -- the agent's tables of C-API symbols resolved: each row's names tried in turn, some rows optional. */
#include <stdio.h>
#include <string.h>

#include "agent/agent.h"

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
