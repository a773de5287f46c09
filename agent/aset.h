/* aset.h -- sets of object addresses as bitmaps (aset.c): what `types --all` and backrefs have already seen of
 * the objects the collector does not track. */
#ifndef MEMPROF_ASET_H
#define MEMPROF_ASET_H

#include <stddef.h>
#include <stdint.h>

/* Objects seen, one bit per 16 bytes of address (two objects never start in the same 16 bytes:
 * each is 16 bytes or more), in a bitmap of 16 KiB per 2 MiB region they lie in: 20 MiB for a
 * heap spread over 2.5 GiB, where a pointer set takes 11 bytes per object and rehashes. For the
 * untracked objects of `types --all` and backrefs, which can be tens of millions. */
#define AS_REGION_SHIFT 21
#ifndef AS_MAX_REGIONS /* (tests/unit/test_aset.c reaches a smaller cap) */
#define AS_MAX_REGIONS (1u << 16) /* 1 GiB of bitmaps, 128 GiB of address range */
#endif
struct aregion {
    uintptr_t key; /* address >> AS_REGION_SHIFT, plus one (0: an empty slot) */
    uint64_t *bits;
};
struct aset {
    struct aregion *v;
    size_t mask, n;
    uintptr_t last_key;
    uint64_t *last_bits;
};

void as_free(struct aset *s);
/* The bitmap of region key (address >> AS_REGION_SHIFT, plus one), made if new; NULL: out of memory, or a new
 * region past AS_MAX_REGIONS. */
uint64_t *as_region(struct aset *s, uintptr_t key);

/* Adds a: 1 added, 0 already there, -1 out of memory (or past AS_MAX_REGIONS). */
static inline int as_add(struct aset *s, uintptr_t a)
{
    uintptr_t key = (a >> AS_REGION_SHIFT) + 1;
    uint64_t *bits = key == s->last_key ? s->last_bits : as_region(s, key), bit;
    size_t i = (a >> 4) & ((1u << (AS_REGION_SHIFT - 4)) - 1);
    if (!bits) return -1;
    bit = (uint64_t)1 << (i & 63);
    if (bits[i >> 6] & bit) return 0;
    bits[i >> 6] |= bit;
    return 1;
}

#endif
