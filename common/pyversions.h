/* pyversions.h -- the CPython versions memprof supports, defined once for the agent, the daemon and the CLI. */
#ifndef MEMPROF_PYVERSIONS_H
#define MEMPROF_PYVERSIONS_H

/* Python 3.MIN ... 3.MAX: every minor in between has an entry in common/pyabi.c
 * (checked there at compile time). */
#define MP_PY_MIN_MINOR 8
#define MP_PY_MAX_MINOR 15

#define MP_PY_STR_(x) #x
#define MP_PY_STR(x) MP_PY_STR_(x)
/* "3.8 to 3.15", for messages */
#define MP_PY_RANGE "3." MP_PY_STR(MP_PY_MIN_MINOR) " to 3." MP_PY_STR(MP_PY_MAX_MINOR)
/* "3.8-3.15", for usage texts */
#define MP_PY_RANGE_SHORT "3." MP_PY_STR(MP_PY_MIN_MINOR) "-3." MP_PY_STR(MP_PY_MAX_MINOR)

#endif
