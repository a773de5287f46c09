/* exitcodes.h -- the exit statuses of every memprof and memprofd command (listed in --help and the man pages). */
#ifndef MEMPROF_EXITCODES_H
#define MEMPROF_EXITCODES_H

enum mp_exit {
    MP_EXIT_OK = 0,      /* done */
    MP_EXIT_FAIL = 1,    /* the command could not do its job: one line on stderr says why */
    MP_EXIT_USAGE = 2,   /* a usage error: unknown command or option, missing or malformed argument */
    MP_EXIT_ALREADY = 3, /* memprofd attach: the process is already attached (nothing changed) */
};

/* The table as --help prints it (4-space indent, one status a line). */
#define MP_EXIT_HELP                                                                    \
    "exit status:\n"                                                                    \
    "    0  success\n"                                                                  \
    "    1  failure: the command could not do its job (one line on stderr says why)\n" \
    "    2  usage error: unknown command or option, missing or malformed argument\n"   \
    "    3  memprofd attach: the process is already attached\n"

#endif
