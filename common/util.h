/* util.h -- small helpers every memprof program shares: error buffers, clocks, paths. */
#ifndef MEMPROF_UTIL_H
#define MEMPROF_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One error convention across memprof: functions return 0 on success and -1 on
 * failure, after writing a one-line, user-actionable message into a caller
 * supplied buffer of MP_ERRLEN bytes. */
#define MP_ERRLEN 512

void mp_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like mp_err, with ": strerror(errno)" appended. */
void mp_errno(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

double mp_now(void);      /* CLOCK_MONOTONIC seconds */
double mp_wallclock(void); /* CLOCK_REALTIME seconds */

/* The daemon's default socket: /run/memprof/memprofd.sock for root, else
 * $XDG_RUNTIME_DIR/memprof/memprofd.sock, else /tmp/memprof-UID/memprofd.sock.
 * $MEMPROF_SOCKET overrides. Whoever uses it checks its directory first (mp_open_socket_dir). */
int mp_default_socket(char *out, size_t outlen);

/* "name (uid N)", or "uid N" when the user has no name; into out, which it returns. */
const char *mp_user_name(uid_t uid, char *out, size_t outlen);

/* The directory of the daemon's socket (and of memprofd.log, when a client starts the daemon), opened without
 * following a symlink (O_PATH; openat the files in it) and checked to be one no one else could have planted a
 * socket or a symlink in: a real directory, owned by this user -- or, for a client (!daemon), by root -- and
 * writable by no one else; for the daemon, which listens there, mode 700 exactly. With create, made first (0700,
 * missing parents 0755) when missing. Returns the fd, or -1 with err naming the directory, its owner and mode,
 * and the fix (errno: ENOENT when it does not exist, EPERM when it is refused). */
int mp_open_socket_dir(const char *dir, int create, int daemon, char *err);

/* Read a whole small file (e.g. under /proc) into buf, NUL-terminated. Returns
 * bytes read or -1. */
ssize_t mp_read_file(const char *path, char *buf, size_t buflen);

/* /proc/PID/cmdline with NULs turned into spaces. */
int mp_proc_cmdline(pid_t pid, char *out, size_t outlen);

/* Parse a decimal pid; -1 if not a positive integer. */
pid_t mp_parse_pid(const char *s);
/* 1 when a and b are the same 32-character token; time independent of where they differ. */
int mp_token_equal(const char *a, const char *b);

/* Whether a Python file is library code rather than the user's: the standard
 * library (.../lib/pythonX.Y/, lib64 too, <frozen ...>) or an installed package
 * (site-packages, dist-packages). The views show what library code allocates at
 * the user's line that called it (docs/commands.md, "Library frames"). */
int mp_is_library_file(const char *file);

#endif
