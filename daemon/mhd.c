/* mhd.c -- libmicrohttpd's functions, resolved when the HTTP endpoint is asked for (mhd.h). The build names the
 * library by the soname of the one pkg-config found (MEMPROF_MHD_SONAME). */
#include "daemon/mhd.h"

#include <dlfcn.h>

#include "common/util.h"

#ifndef MEMPROF_MHD_SONAME
#error "the build names libmicrohttpd's soname in MEMPROF_MHD_SONAME"
#endif
_Static_assert(sizeof MEMPROF_MHD_SONAME > 1, "the build found no libmicrohttpd (pkg-config, objdump)");

struct mhd_fns mhd_fn;

int mhd_load(char *err)
{
    static int loaded;
    void *lib;
    if (loaded) return 0;
    if (!(lib = dlopen(MEMPROF_MHD_SONAME, RTLD_NOW | RTLD_LOCAL))) {
        mp_err(err, "the HTTP endpoint needs libmicrohttpd (%s), which cannot be loaded: %s", MEMPROF_MHD_SONAME,
               dlerror());
        return -1;
    }
#define MHD_RESOLVE(name)                                                                                        \
    if (!(*(void **)&mhd_fn.name = dlsym(lib, "MHD_" #name))) {                                                  \
        mp_err(err, "%s has no MHD_" #name, MEMPROF_MHD_SONAME);                                                 \
        dlclose(lib);                                                                                            \
        return -1;                                                                                               \
    }
    MHD_FNS(MHD_RESOLVE)
#undef MHD_RESOLVE
    loaded = 1;
    return 0;
}
