/* commands.h -- every `memprof` subcommand: int cmd_NAME(argc, argv) returns the exit code. */
#ifndef MEMPROF_COMMANDS_H
#define MEMPROF_COMMANDS_H

#include <stddef.h>
#include <stdio.h>

#include "common/opts.h"

int cmd_status(int argc, char **argv);
int cmd_ps(int argc, char **argv);
int cmd_types(int argc, char **argv);
int cmd_growth(int argc, char **argv);
int cmd_backrefs(int argc, char **argv);
int cmd_chain(int argc, char **argv);
int cmd_top(int argc, char **argv);
int cmd_lines(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_flamegraph(int argc, char **argv);
int cmd_rss(int argc, char **argv);
/* memprof export --format speedscope: speedscope's JSON of d; *live_total: the live bytes in it. 0 or -1. */
struct Memprof__AllocData;
int export_speedscope(FILE *f, const struct Memprof__AllocData *d, double *live_total);
int cmd_ipython_path(int argc, char **argv);
int cmd_inproc(int argc, char **argv); /* the IPython extension's run; not in --help */
int cmd_mprun_data(int argc, char **argv); /* %mprun's data; not in --help */

/* For `memprof growth`: follow the attached process's allocation sites across
 * calls and print those whose live memory grew, steadiest first (nothing when
 * allocation tracking is off). The first call is the baseline. */
void alloc_leak_suspects(int pid, int limit, FILE *out);

/* The allocation data of pid's session, or of session session_id (non-zero),
 * with the history when asked: 0 and *reply (wire_free it), or -1 with err. */
struct Memprof__Envelope;
int alloc_fetch(int pid, unsigned session_id, int history, struct Memprof__Envelope **reply, char *err);
/* The same from a file memprof rss --save wrote (plot and export --rss FILE): 0 and *reply, or -1 with err. */
int alloc_load(const char *path, struct Memprof__Envelope **reply, char *err);
/* memprof run: memory_profiler's report of func (file and def line first when
 * known, else the best match by name) from a session's AllocData. 0, or
 * MP_EXIT_FAIL after printing an error. */
struct Memprof__AllocData;
int alloc_lines_report(FILE *o, const struct Memprof__AllocData *d, const char *func, const char *file,
                       unsigned first);
int cmd_run(int argc, char **argv);
/* --session ID, an OPT_CALL row: {"session", 0, OPT_CALL, &id (unsigned), "ID", help, .what = CLI_SESSION_WHAT,
 * .set = cli_set_session}. */
int cli_set_session(const char *arg, void *dest);
/* --pid PID, required, of a command that asks about an attached process. */
#define CLI_SESSION_OPT(dest)                                                                                 \
    {"session", 0, OPT_CALL, dest, "ID", "an attached or ended session, by id (memprof status)", .what = CLI_SESSION_WHAT, \
     .set = cli_set_session}
/* --pid PID of a command that takes --pid PID or --session ID. */
#define CLI_PID_OR_SESSION_OPT(dest) {"pid", 0, OPT_PID, dest, "PID", "the session of this process (attached or ended)"}
#define CLI_PID_OPT(dest) \
    {"pid", 0, OPT_PID, dest, "PID", "the process (attach first: memprofd attach --pid PID)", .required = 1}
#define CLI_SESSION_WHAT "a session id (memprof status lists them)"
/* "pid N" or "session ID", for messages. */
void cli_who(int pid, unsigned session_id, char *out, size_t len);

/* Shared by the commands: print "memprof: MSG" to stderr and return MP_EXIT_FAIL. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same for a failed request to the daemon (alloc_fetch, client_call...): prints err and returns the exit
 * status of its category (client_exit_status: 4 no such process, 5 permission, 6 not attached...). */
int cli_fail_call(const char *err);
/* s for a table cell or a message line, into out (cut to fit len): \n, \t, \r
 * and the other control characters (< 0x20, 0x7f) as \n, \t, \r and \xNN, so
 * that a string from the target (command line, file, function or type name)
 * never breaks a row. Every table and message of the CLI goes through it;
 * JSON has cli_json_str. Returns out. */
const char *cli_esc(const char *s, char *out, size_t len);
/* s as a JSON string literal (control characters as \u00XX). */
void cli_json_str(FILE *f, const char *s);
/* "12.3 MiB" style sizes. */
const char *cli_bytes(double n, char *buf, size_t len);
/* "[pid 1 in docker-3f2a1b0c9d8e] " for a process in a container (its pid there and a
 * hint which container), "" for one of the host. */
const char *cli_container(int ns_pid, const char *container, char *buf, size_t len);
/* "[container 3f2a1b0c9d8e, pod shop/web-7d4b9] ": the container id when the hint does not already show it, and
 * the Kubernetes namespace/pod when known; "" when neither. */
const char *cli_identity(const char *hint, const char *container_id, const char *pod, const char *ns, char *buf,
                         size_t len);
/* The identity fields of a JSON object: , "container_id": ..., "pod": ..., "namespace": ..., "pod_uid": ... */
void cli_json_identity(FILE *f, const char *container_id, const char *pod, const char *ns, const char *pod_uid);

#endif
