/* exitcodes.h -- the exit statuses of every memprof and memprofd command (listed in --help and the man pages). */
#ifndef MEMPROF_EXITCODES_H
#define MEMPROF_EXITCODES_H

enum mp_exit {
    MP_EXIT_OK = 0,      /* done */
    MP_EXIT_FAIL = 1,    /* the command could not do its job: one line on stderr says why */
    MP_EXIT_USAGE = 2,   /* a usage error: unknown command or option, missing or malformed argument */
    MP_EXIT_ALREADY = 3, /* memprofd attach: the process is already attached (nothing changed) */
    MP_EXIT_NO_PROCESS = 4,   /* no such process (or it has exited) */
    MP_EXIT_PERMISSION = 5,   /* permission denied: not yours to profile */
    MP_EXIT_NOT_ATTACHED = 6, /* no session for that pid or session id */
    MP_EXIT_UNSUPPORTED = 7,  /* not a Python process, or an unsupported Python version or libc */
};
/* The daemon says which of 4-7 applies by ErrorReply.Code; client_exit_status() maps it. */

/* The table as --help prints it (4-space indent, one status a line). */
#define MP_EXIT_HELP                                                                    \
    "exit status:\n"                                                                    \
    "    0  success\n"                                                                  \
    "    1  failure: the command could not do its job (one line on stderr says why)\n" \
    "    2  usage error: unknown command or option, missing or malformed argument\n"   \
    "    3  memprofd attach: the process is already attached\n"                        \
    "    4  no such process (or it has exited)\n"                                      \
    "    5  permission denied: not your process to profile\n"                          \
    "    6  not attached: no session for that pid or session id\n"                   \
    "    7  unsupported target: not Python, or its version or libc is unsupported\n"

#endif
