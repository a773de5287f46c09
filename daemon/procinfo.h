/* procinfo.h -- facts about processes read from /proc: owner, state, access checks, ps listing. */
#ifndef MEMPROF_PROCINFO_H
#define MEMPROF_PROCINFO_H

#include <sys/types.h>
#include "proto/wire.h"

/* Real uid of pid, -1 when it does not exist. */
int proc_uid(pid_t pid, uid_t *uid);
/* State letter from /proc/PID/stat ('R','S','T','Z',...), 0 when gone. */
char proc_state(pid_t pid);
pid_t proc_ppid(pid_t pid);          /* 0 when unknown */
int proc_alive(pid_t pid);           /* exists and is not a zombie */
/* Gone, a zombie, or on its way there (PF_EXITING: a SIGKILLed process closes its files, the agent's socket
 * among them, before it is a zombie). */
int proc_exiting(pid_t pid);
int proc_thread_alive(pid_t pid, int tid);
unsigned long long proc_rss(pid_t pid);
/* pid inside its innermost pid namespace (last field of NSpid), pid itself when none. */
pid_t proc_ns_pid(pid_t pid);
/* The host tid of pid's thread whose tid is ns_tid in pid's own namespace; 0 if none. */
pid_t proc_host_tid(pid_t pid, pid_t ns_tid);
/* When pid lives in other namespaces than memprofd (a container): a short hint, its
 * cgroup's last component with a long id cut to 12 characters ("docker-3f2a1b0c9d8e"),
 * or the namespaces that differ ("ns:mnt,pid,net"). "" for a process of the host. */
void proc_container(pid_t pid, char *out, size_t outlen);
/* May a client of uid `client` profile pid? 0 yes; -1 with a one-line err. */
int proc_may_access(uid_t client, pid_t pid, char *err);
/* The category of a failed check on pid, by what is true of pid now: NO_SUCH_PROCESS when it is
 * gone or a zombie, PERMISSION_DENIED when memprofd may not read its /proc/PID/maps, else otherwise. */
Memprof__ErrorReply__Code proc_error_code(pid_t pid, Memprof__ErrorReply__Code otherwise);
/* The Python processes client may attach to, for `memprof ps`. */
int proc_list_python(uid_t client, Memprof__PsReply *out);
void proc_list_free(Memprof__PsReply *out);

#endif
