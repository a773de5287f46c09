/* version.h -- memprof's version string: the Makefile passes -DMEMPROF_VERSION, read from the VERSION file. */
#ifndef MEMPROF_VERSION_H
#define MEMPROF_VERSION_H

#ifndef MEMPROF_VERSION
#error "MEMPROF_VERSION is set by the Makefile from the VERSION file (build with make)"
#endif

#endif
