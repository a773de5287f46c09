/* log.h -- the agent's debug log: one line to stderr when MEMPROF_AGENT_DEBUG / debug=1, else nothing. */
#ifndef MEMPROF_LOG_H
#define MEMPROF_LOG_H

/* Whether agent_log writes (set once at the agent's start). */
extern int agent_debug;

/* One line to stderr when agent_debug; else nothing. No stdio: never its locks. */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
