/* watch.h -- memprofd serve --watch: attach by policy (rules, and the /proc scan that applies them). */
#ifndef MEMPROF_WATCH_H
#define MEMPROF_WATCH_H

/* At most this many sessions attached by rules at once (--watch-max); a new matching process waits for one to end. */
extern unsigned watch_max;

/* A rule: blank-separated terms, all of which must match (command=REGEX, user=NAME|UID, container=ID-PREFIX,
 * pod=PATTERN, namespace=PATTERN) and memprofd attach's settings (sample-rate=BYTES, native...). 0, or -1 with err naming the problem. */
int watch_add_rule(const char *text, char *err);
/* The rules of a file, one a line (# comments, blank lines); 0, or -1 with err naming the line and the problem. */
int watch_add_file(const char *path, char *err);
int watch_active(void); /* any rule? */
/* After loop_init: the scan starts (when there are rules). 0, or -1 with err. */
int watch_start(char *err);
void watch_stop(void); /* a stop was asked for: attach nothing more */
void watch_free(void); /* after the loop: the rules go */

#endif
