/* aset.c -- sets of object addresses as bitmaps per 2 MiB region, the regions in a small hash table (aset.h). */
#include "agent/aset.h"

#include <stdlib.h>
#include <string.h>

static size_t as_slot(const struct aset *s, uintptr_t key)
{
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & s->mask;
    while (s->v[i].key && s->v[i].key != key) i = (i + 1) & s->mask;
    return i;
}

static int as_grow(struct aset *s)
{
    struct aset g = {.mask = s->mask ? s->mask * 2 + 1 : 255, .n = s->n};
    if (!(g.v = calloc(g.mask + 1, sizeof *g.v))) return -1;
    for (size_t i = 0; s->v && i <= s->mask; i++)
        if (s->v[i].key) g.v[as_slot(&g, s->v[i].key)] = s->v[i];
    free(s->v);
    *s = g;
    return 0;
}

uint64_t *as_region(struct aset *s, uintptr_t key)
{
    size_t i = s->v ? as_slot(s, key) : 0;
    if (!s->v || !s->v[i].key) { /* a new region: the table at most half full */
        if ((s->n + 1) * 2 > s->mask + 1) {
            if (s->n >= AS_MAX_REGIONS || as_grow(s) < 0) return NULL;
            i = as_slot(s, key);
        }
        if (!(s->v[i].bits = calloc((size_t)1 << (AS_REGION_SHIFT - 4 - 3), 1))) return NULL;
        s->v[i].key = key;
        s->n++;
    }
    s->last_key = key;
    return s->last_bits = s->v[i].bits;
}

void as_free(struct aset *s)
{
    for (size_t i = 0; s->v && i <= s->mask; i++) free(s->v[i].bits);
    free(s->v);
    memset(s, 0, sizeof *s);
}
