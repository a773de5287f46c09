/* check.h -- the C unit tests' one assertion: counts and prints each check, pass or fail. */
#ifndef MEMPROF_TESTS_CHECK_H
#define MEMPROF_TESTS_CHECK_H
#include <stdio.h>

static int passed, failed;

#define CHECK(cond, name)                                                    \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
            printf("ok      %s\n", name);                                    \
        } else {                                                             \
            failed++;                                                        \
            printf("FAILED  %s (%s:%d: %s)\n", name, __FILE__, __LINE__, #cond); \
        }                                                                    \
    } while (0)

#endif
