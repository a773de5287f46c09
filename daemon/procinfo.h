/* procinfo.h -- facts about processes read from /proc: owner, state, access checks, ps listing. */
#ifndef MEMPROF_PROCINFO_H
#define MEMPROF_PROCINFO_H

#include <sys/types.h>
#include "wire.h"

/* Real uid of pid, -1 when it does not exist. */
int proc_uid(pid_t pid, uid_t *uid);
/* State letter from /proc/PID/stat ('R','S','T','Z',...), 0 when gone. */
char proc_state(pid_t pid);
pid_t proc_ppid(pid_t pid);          /* 0 when unknown */
int proc_alive(pid_t pid);           /* exists and is not a zombie */
int proc_thread_alive(pid_t pid, int tid);
unsigned long long proc_rss(pid_t pid);
/* May a client of uid `client` profile pid? 0 yes; -1 with a one-line err. */
int proc_may_access(uid_t client, pid_t pid, char *err);
/* The Python processes client may attach to, for `memprof ps`. */
int proc_list_python(uid_t client, Memprof__PsReply *out);
void proc_list_free(Memprof__PsReply *out);

#endif
