/* logging.h -- memprofd's log lines on stderr, and the rate-limited ones about peers turned away. */
#ifndef MEMPROF_LOGGING_H
#define MEMPROF_LOGGING_H

/* One timestamped line on stderr. */
void server_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A line about a peer turned away before its hello: at most one a second, the rest counted and told in one
 * line when the second is over (strangers cannot fill the log). */
void log_refusal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
