/* opts.c -- the one option parser of memprof and memprofd (see opts.h): getopt_long driven by a command's table. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common/opts.h"
#include "common/util.h"

#define OPTS_MAX 40   /* options in one table */
#define VAL_BASE 1000 /* getopt value of the table's option i: VAL_BASE + i */
#define HELP_COL 24   /* where an option's help starts */
#define WIDTH 79

static void fail_line(const struct opt_cmd *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The help of c, as --help prints it. */
static void opts_help(const struct opt_cmd *c, FILE *f);

static void fail_line(const struct opt_cmd *c, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *p = msg; *p; p++) /* one line, whatever the argument held */
        if ((unsigned char)*p < 0x20 || *p == 0x7f) *p = '?';
    if (c->err) snprintf(c->err, MP_ERRLEN, "%s", msg);
    else fprintf(stderr, "%s: %s\n", c->prog, msg);
}

int opts_usage_error(const struct opt_cmd *c, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fail_line(c, "%s (try %s --help)", msg, c->prog);
    return MP_EXIT_USAGE;
}

/* What o's argument must be, for messages: "a number of seconds from 0.1 to 86400". */
static const char *wanted(const struct opt *o, char *buf, size_t len)
{
    switch (o->kind) {
    case OPT_INT:
    case OPT_UINT:
    case OPT_U64:
        if (o->max > 0) snprintf(buf, len, "a whole number from %.0f to %.0f", o->min, o->max);
        else snprintf(buf, len, "a whole number of at least %.0f", o->min);
        break;
    case OPT_SECONDS:
        if (o->min <= 0) snprintf(buf, len, "a number of seconds above 0");
        else if (o->max > 0) snprintf(buf, len, "a number of seconds from %g to %g", o->min, o->max);
        else snprintf(buf, len, "a number of seconds of at least %g", o->min);
        break;
    case OPT_PID: snprintf(buf, len, "a process id"); break;
    case OPT_CHOICE: {
        size_t k = (size_t)snprintf(buf, len, "one of ");
        for (const char *p = o->choices; *p && k + 3 < len; p++) {
            if (*p == '|') buf[k++] = ',', buf[k++] = ' ';
            else buf[k++] = *p;
        }
        buf[k] = 0;
        break;
    }
    case OPT_CALL: snprintf(buf, len, "%s", o->what ? o->what : "a value"); break;
    default: snprintf(buf, len, "a value (%s)", o->arg ? o->arg : "see --help"); break;
    }
    return buf;
}

/* The index of arg among "a|b|c", or -1. */
static int choice_index(const char *choices, const char *arg)
{
    int i = 0;
    size_t n = strlen(arg);
    for (const char *p = choices; *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, arg, n)) return i;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

/* Store arg into o->dest: 0, or -1 when it is not what o wants. */
static int store(const struct opt *o, const char *arg)
{
    char *end;
    double d;
    errno = 0;
    switch (o->kind) {
    case OPT_FLAG: *(int *)o->dest = 1; return 0;
    case OPT_STRING: *(const char **)o->dest = arg; return 0;
    case OPT_PID: return (*(int *)o->dest = mp_parse_pid(arg)) > 0 ? 0 : -1;
    case OPT_CHOICE: return (*(int *)o->dest = choice_index(o->choices, arg)) >= 0 ? 0 : -1;
    case OPT_CALL: return o->set(arg, o->dest);
    case OPT_SECONDS:
        d = strtod(arg, &end);
        if (end == arg || *end || !isfinite(d) || !(d > 0) || d < o->min || (o->max > 0 && d > o->max)) return -1;
        *(double *)o->dest = d;
        return 0;
    case OPT_INT:
    case OPT_UINT:
    case OPT_U64: {
        long long v = 0;
        unsigned long long u = 0;
        if (o->kind == OPT_INT) v = strtoll(arg, &end, 10);
        else u = strtoull(arg, &end, 10);
        if (errno || end == arg || *end || (o->kind != OPT_INT && arg[strspn(arg, " \t")] == '-')) return -1;
        if (o->kind == OPT_INT ? (v < o->min || (o->max > 0 && v > o->max) || v < INT_MIN || v > INT_MAX)
                               : ((double)u < o->min || (o->max > 0 && (double)u > o->max) ||
                                  (o->kind == OPT_UINT && u > UINT_MAX)))
            return -1;
        if (o->kind == OPT_INT) *(int *)o->dest = (int)v;
        else if (o->kind == OPT_UINT) *(unsigned *)o->dest = (unsigned)u;
        else *(uint64_t *)o->dest = (uint64_t)u;
        return 0;
    }
    }
    return -1;
}

int opts_parse(const struct opt_cmd *c, int argc, char **argv, int *status)
{
    struct option lo[OPTS_MAX + 2];
    char shorts[3 * OPTS_MAX + 8], buf[256];
    size_t n = 0, k = 0;
    int ch, seen[OPTS_MAX] = {0};

    *status = MP_EXIT_USAGE;
    shorts[k++] = c->stop_at_arg ? '+' : ':';
    if (c->stop_at_arg) shorts[k++] = ':';
    shorts[k++] = 'h';
    for (; c->opts[n].name; n++) {
        const struct opt *o = &c->opts[n];
        if (n == OPTS_MAX) abort(); /* a table too long for this file: raise OPTS_MAX */
        lo[n] = (struct option){o->name, o->kind == OPT_FLAG ? no_argument : required_argument, NULL, VAL_BASE + (int)n};
        if (o->letter) {
            shorts[k++] = o->letter;
            if (o->kind != OPT_FLAG) shorts[k++] = ':';
        }
    }
    shorts[k] = 0;
    lo[n] = (struct option){"help", no_argument, NULL, 'h'};
    memset(&lo[n + 1], 0, sizeof lo[n + 1]);

    optind = 0; /* also resets GNU getopt's state */
    opterr = 0;
    while ((ch = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        const struct opt *o = NULL;
        if (ch == 'h') {
            opts_help(c, stdout);
            *status = MP_EXIT_OK;
            return -1;
        }
        if (ch == '?') {
            const char *arg = argv[optind - 1];
            if (optopt && !strncmp(arg, "--", 2)) /* a known long option given "=VALUE" */
                fail_line(c, "--%.*s takes no argument (try %s --help)", (int)strcspn(arg + 2, "="), arg + 2, c->prog);
            else if (optopt) fail_line(c, "unknown option '-%c' (try %s --help)", optopt, c->prog);
            else fail_line(c, "unknown option '%s' (try %s --help)", arg, c->prog);
            return -1;
        }
        if (ch == ':') {
            o = optopt >= VAL_BASE ? &c->opts[optopt - VAL_BASE] : NULL;
            for (size_t i = 0; !o && i < n; i++)
                if (c->opts[i].letter == optopt) o = &c->opts[i];
            if (o) fail_line(c, "--%s needs %s (try %s --help)", o->name, wanted(o, buf, sizeof buf), c->prog);
            else fail_line(c, "-%c needs an argument (try %s --help)", optopt, c->prog);
            return -1;
        }
        if (ch >= VAL_BASE) o = &c->opts[ch - VAL_BASE];
        for (size_t i = 0; !o && i < n; i++)
            if (c->opts[i].letter == ch) o = &c->opts[i];
        if (!o) abort(); /* getopt returned what the table does not hold */
        if (store(o, optarg) < 0) {
            fail_line(c, "--%s needs %s, got '%s'", o->name, wanted(o, buf, sizeof buf), optarg);
            return -1;
        }
        seen[o - c->opts] = 1;
    }
    for (size_t i = 0; i < n; i++)
        if (c->opts[i].required && !seen[i]) {
            fail_line(c, "--%s%s%s is required (try %s --help)", c->opts[i].name, c->opts[i].arg ? " " : "",
                      c->opts[i].arg ? c->opts[i].arg : "", c->prog);
            return -1;
        }
    if (argc - optind < c->min_args) {
        fail_line(c, "%s is missing (try %s --help)", c->args ? c->args : "an argument", c->prog);
        return -1;
    }
    if (c->max_args >= 0 && argc - optind > c->max_args) {
        fail_line(c, "unexpected argument '%s' (try %s --help)", argv[optind + c->max_args], c->prog);
        return -1;
    }
    *status = MP_EXIT_OK;
    return optind;
}

/* ------------------------------------------------------------ --help */

static const char *arg_name(const struct opt *o)
{
    if (o->kind == OPT_FLAG) return NULL;
    if (o->arg) return o->arg;
    return o->kind == OPT_CHOICE ? o->choices : "VALUE";
}

/* Append word to the usage line, wrapping under its first word after prog. */
static void usage_word(FILE *f, const char *word, size_t *col, size_t indent)
{
    size_t len = strlen(word);
    if (*col + 1 + len > WIDTH && *col > indent + 1) {
        fprintf(f, "\n%*s", (int)indent + 1, ""); /* under the first word after prog */
        *col = indent + 1;
    } else {
        fputc(' ', f);
        (*col)++;
    }
    fputs(word, f);
    *col += len;
}

static void opts_help(const struct opt_cmd *c, FILE *f)
{
    size_t col, indent = strlen("usage: ") + strlen(c->prog);
    char word[160];

    fprintf(f, "usage: %s", c->prog);
    col = indent;
    if (c->synopsis) {
        fprintf(f, " %s", c->synopsis);
    } else {
        for (const struct opt *o = c->opts; o->name; o++) {
            const char *a = arg_name(o);
            snprintf(word, sizeof word, "%s--%s%s%s%s", o->required ? "" : "[", o->name, a ? " " : "", a ? a : "",
                     o->required ? "" : "]");
            usage_word(f, word, &col, indent);
        }
        if (c->args) usage_word(f, c->args, &col, indent);
    }
    fputc('\n', f);
    if (c->about) fprintf(f, "\n%s", c->about);
    fputs("\noptions:\n", f);
    for (const struct opt *o = c->opts; o->name; o++) {
        const char *a = arg_name(o);
        int len;
        if (o->letter) len = fprintf(f, "  -%c, --%s%s%s", o->letter, o->name, a ? " " : "", a ? a : "");
        else len = fprintf(f, "  --%s%s%s", o->name, a ? " " : "", a ? a : "");
        if (len + 2 > HELP_COL) fprintf(f, "\n%*s", HELP_COL, "");
        else fprintf(f, "%*s", HELP_COL - len, "");
        for (const char *p = o->help ? o->help : ""; *p; p++) {
            fputc(*p, f);
            if (*p == '\n' && p[1]) fprintf(f, "%*s", HELP_COL, "");
        }
        fputc('\n', f);
    }
    fprintf(f, "  -h, --help%*sthis help\n", HELP_COL - 12, "");
    if (c->more) fprintf(f, "\n%s", c->more);
}
