/* opts.h -- the one option parser of memprof and memprofd: a table per command, parsed, checked and turned into --help. */
#ifndef MEMPROF_OPTS_H
#define MEMPROF_OPTS_H

#include <stdint.h>
#include <stdio.h>

#include "common/exitcodes.h"

/* What an option's argument is, and where it goes (dest's type):
 *   OPT_FLAG     no argument; *(int *)dest = 1
 *   OPT_INT      *(int *)dest, a whole number from min to max (max 0: no upper bound)
 *   OPT_UINT     *(unsigned *)dest, likewise
 *   OPT_U64      *(uint64_t *)dest, likewise
 *   OPT_SECONDS  *(double *)dest, a number of seconds above 0, from min to max (max 0: no upper bound)
 *   OPT_PID      *(int *)dest, a process id
 *   OPT_STRING   *(const char **)dest = the argument
 *   OPT_CHOICE   *(int *)dest = the index of the argument in choices ("line|function")
 *   OPT_CALL     set(arg, dest) returns 0, or -1 when arg is not `what` (e.g. "an address like 0x7f3a1c2b4d80");
 *                also for repeatable options (memprof run --function)
 * A bad argument is reported as one line, "memprof top: --interval needs a
 * number of seconds from 0.1 to 86400, got 'x'", and opts_parse() returns -1
 * with MP_EXIT_USAGE. --help and -h are every command's: no row may use them. */
enum opt_kind { OPT_FLAG, OPT_INT, OPT_UINT, OPT_U64, OPT_SECONDS, OPT_PID, OPT_STRING, OPT_CHOICE, OPT_CALL };

/* A table row names its first fields in order and the rest by name, all others zero:
 *   {"limit", 0, OPT_INT, &limit, "N", "at most N rows (default 20)", .min = 0, .max = 1000}
 * so rows may leave fields out (-Wmissing-field-initializers is off where this header is included). */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

struct opt {
    const char *name;   /* long name, without "--" (NULL ends a table) */
    char letter;        /* short option, e.g. 'o' for -o; 0: none */
    enum opt_kind kind;
    void *dest;
    const char *arg;    /* the argument's name in --help ("PID", "SECONDS"); OPT_CHOICE: choices if NULL */
    const char *help;   /* its line(s) in --help; '\n' continues on an indented line */
    double min, max;    /* numbers' range */
    const char *choices;                      /* OPT_CHOICE: "a|b|c" */
    const char *what;                         /* OPT_CALL: what the argument must be, for errors */
    int (*set)(const char *arg, void *dest);  /* OPT_CALL */
    int required;       /* missing: "--pid PID is required" (a usage error) */
};

struct opt_cmd {
    const char *prog;     /* "memprof top": message prefix and usage line */
    const struct opt *opts;
    const char *synopsis; /* the usage line after prog; NULL: generated from opts and args */
    const char *args;     /* positional arguments, for the generated usage line ("A B", "-- PROGRAM [ARGS...]") */
    int min_args, max_args; /* how many positional arguments (max -1: any) */
    int stop_at_arg;      /* options end at the first positional argument (memprof run: the program's own follow) */
    const char *about;    /* --help: the paragraph(s) after the usage line */
    const char *more;     /* --help: text after the option list (examples); may be NULL */
    char *err;            /* when set (MP_ERRLEN bytes), a bad option's line goes here, without PROG, instead of
                           * stderr (memprofd serve --watch: a rule's tracking settings) */
};

/* Parse argv (argv[0] is the command's name) against c. Returns the index in
 * argv of the first positional argument (argc when none) to go on, or -1 when
 * the command should end at once with *status: MP_EXIT_OK after --help/-h
 * printed the help to stdout, MP_EXIT_USAGE after one line on stderr (an
 * unknown option, a missing or bad argument, a missing required option, too
 * few or too many positional arguments). May be called more than once per process. */
int opts_parse(const struct opt_cmd *c, int argc, char **argv, int *status);

/* A usage error the table cannot express (options that exclude each other...):
 * prints "PROG: MESSAGE (try PROG --help)" on stderr and returns MP_EXIT_USAGE. */
int opts_usage_error(const struct opt_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
