/* symbolize.h -- native addresses of a live process named with libdwfl (module, function, line): memprofd's
 * --native-frames and memprof rss's native frames. */
#ifndef MEMPROF_SYMBOLIZE_H
#define MEMPROF_SYMBOLIZE_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

struct symbolizer;

struct sym_frame {
    char module[PATH_MAX]; /* the mapped file's path in the target, "?" outside any */
    char func[512];        /* symbol containing the address, else "module+0xOFFSET" (else "0xADDRESS") */
    char file[PATH_MAX];   /* source file where debug info has it, else the module's path */
    unsigned line;         /* 0: unknown */
    uint64_t offset;       /* the address in the module's ELF addresses (the address itself outside any) */
    int named;             /* 1: func is a symbol's name */
};

/* The modules of a live pid (its /proc/PID/maps); NULL when they cannot be read. lines 1: source files and
 * lines from debug info where it is found (else sym_frame's file is the module and its line 0). */
struct symbolizer *sym_open(pid_t pid, int lines);
void sym_close(struct symbolizer *y);
/* Name an address: a return address (ret 1: the call before it is named) or an instruction's own (ret 0: a
 * leaf frame, a faulting instruction). Always fills o. An address in no module makes the maps be read again,
 * at most once a second. */
void sym_resolve(struct symbolizer *y, uint64_t pc, int ret, struct sym_frame *o);
/* How many times the maps were read: a name that was not a symbol may be one after the next reading. */
unsigned sym_generation(const struct symbolizer *y);

#endif
