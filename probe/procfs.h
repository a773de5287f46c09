/* procfs.h -- the one reader of /proc/PID/stat and /proc/PID/status for memprofd and memprof. */
#ifndef MEMPROF_PROCFS_H
#define MEMPROF_PROCFS_H

#include <stddef.h>
#include <sys/types.h>

#define PROCFS_PF_KTHREAD 0x00200000u /* flags: a kernel thread */
#define PROCFS_PF_EXITING 0x00000004u /* flags: in the kernel's exit path (its files may be closed already) */

/* The fields of a stat line memprof uses. comm may hold spaces and ')': it runs from the first '(' to the
 * last ')', and the fields are read after that last ')'. */
struct procfs_stat {
    char comm[64];
    char state; /* 'R', 'S', 'T', 't', 'Z', 'X', ... */
    pid_t ppid;
    unsigned flags; /* PF_* */
    unsigned long long starttime; /* clock ticks after boot (field 22); 0 when the line stops short */
};

/* Parses the text of a stat file; 0, or -1 when it has no ") S ppid pgrp session tty tpgid flags". */
int procfs_parse_stat(const char *buf, struct procfs_stat *st);
/* /proc/PID/stat (tid 0) or /proc/PID/task/TID/stat parsed; -1 when gone or unreadable. */
int procfs_stat(pid_t pid, pid_t tid, struct procfs_stat *st);
/* Its state letter; 0 when gone. */
char procfs_state(pid_t pid, pid_t tid);

/* /proc/PID/status (tid 0) or /proc/PID/task/TID/status into buf (NUL-terminated); -1 when gone or empty. */
int procfs_status(pid_t pid, pid_t tid, char *buf, size_t len);
/* The value of the line "key:" of a status text (what follows the colon, up to the end of the text: parse
 * it with strtoul and the like), NULL when there is none. */
const char *procfs_field(const char *status, const char *key);
/* The last number of the NSpid: line (the pid in the innermost pid namespace); 0 when there is none. */
pid_t procfs_nspid(const char *status);
/* This process's effective capabilities (CapEff: bit N is capability N); -1 when unreadable. */
long long procfs_self_caps(void);

#endif
