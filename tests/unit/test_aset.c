/* test_aset.c -- unit tests of agent/aset.c: addresses counted once, regions far apart, the table's growth and
 * its cap (the addresses are never dereferenced, so made-up ones do). */
#include <stdint.h>
#include <stdio.h>

#include "agent/aset.h"
#include "tests/unit/check.h"

#define REGION ((uintptr_t)1 << AS_REGION_SHIFT)

static void test_once(void)
{
    struct aset s = {0};
    uintptr_t base = (uintptr_t)0x7f0000000000;
    int added = 0, again = 0;
    for (uintptr_t a = base; a < base + 3 * REGION; a += 16) added += as_add(&s, a) == 1;
    for (uintptr_t a = base; a < base + 3 * REGION; a += 48) again += as_add(&s, a) == 0;
    CHECK(added == (int)(3 * REGION / 16), "every 16-byte slot of three regions added once");
    CHECK(again == (int)((3 * REGION + 47) / 48), "added again: already there");
    CHECK(as_add(&s, base + 8) == 0 && as_add(&s, base + 24) == 0, "an address in a slot already seen (same 16 bytes)");
    CHECK(s.n == 3, "three regions");
    CHECK(as_add(&s, 16) == 1 && as_add(&s, 16) == 0 && as_add(&s, ((uintptr_t)1 << 47) - 16) == 1,
          "the lowest and highest user addresses");
    as_free(&s);
    CHECK(s.v == NULL && s.n == 0, "freed");
}

static void test_growth_and_cap(void)
{
    struct aset s = {0};
    int ok = 1, full = 0;
    /* every other region, so that neighbours are not the same hash slot by construction */
    for (uintptr_t r = 0; r < AS_MAX_REGIONS && ok; r++) ok = as_add(&s, (2 * r + 1) * REGION + 32) == 1;
    CHECK(ok && s.n == AS_MAX_REGIONS, "AS_MAX_REGIONS regions, the table grown as they came");
    full = as_add(&s, (2 * (uintptr_t)AS_MAX_REGIONS + 1) * REGION) == -1;
    CHECK(full, "one region more: -1");
    CHECK(as_add(&s, 1 * REGION + 32) == 0 && as_add(&s, 3 * REGION + 48) == 1 && as_add(&s, 3 * REGION + 48) == 0,
          "at the cap, the regions it has still answer (found before any room is asked for)");
    as_free(&s);
}

int main(void)
{
    test_once();
    test_growth_and_cap();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
