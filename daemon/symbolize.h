/* symbolize.h -- native return addresses of a target named with libdwfl (module, function, line). */
#ifndef MEMPROF_SYMBOLIZE_H
#define MEMPROF_SYMBOLIZE_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

struct symbolizer;

struct sym_frame {
    char module[PATH_MAX]; /* the mapped file's path in the target, "?" outside any */
    char func[512];        /* symbol containing the address, else "module+0xOFFSET" */
    char file[PATH_MAX];   /* source file where debug info has it, else the module's path */
    unsigned line;         /* 0: unknown */
    uint64_t offset;       /* the call site in the module's ELF addresses */
};

/* The modules of a live pid (its /proc/PID/maps); NULL when they cannot be read. */
struct symbolizer *sym_open(pid_t pid);
void sym_close(struct symbolizer *y);
/* Name a return address (the call before it). Always fills o. */
void sym_resolve(struct symbolizer *y, uint64_t pc, struct sym_frame *o);

#endif
