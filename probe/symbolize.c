/* symbolize.c -- names for native addresses of a live process (the return addresses agents send with
 * --native-frames, memprof rss's stacks), with libdwfl against the target's mappings: module, function, source file and line where debug info has them,
 * else the function from .symtab/.dynsym, else "module+0xOFFSET" -- never a symbol that does not
 * contain the address (a nearest-preceding symbol of a static function would be a wrong name).
 * C++ names are demangled, without parameter list and return type (common/demangle.c).
 *
 * The modules are those of /proc/PID/maps (dwfl_linux_proc_report); each file is opened through
 * /proc/PID/root (its path as the target sees it: proc_target_path), so a target in another mount namespace
 * (a container, a chroot) is read from its own files, never from a file of the same name here. A mapping
 * whose file was deleted or replaced since (" (deleted)") is not opened: offsets only. The vDSO is read
 * from the target's memory (libdwfl's own dwfl_linux_proc_find_elf).
 * Addresses in no reported module make the maps be read again, at most once a second. */
#include "probe/symbolize.h"

#include <elfutils/libdwfl.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/demangle.h"
#include "common/util.h"
#include "probe/elfsym.h"

struct symbolizer {
    Dwfl *dwfl;
    pid_t pid;
    double last_report;
    unsigned generation;
    int lines;
};

/* libdwfl's find_elf has no user pointer: the pid being reported or resolved (the daemon is one thread) */
static pid_t current_pid;

static int find_elf(Dwfl_Module *mod, void **userdata, const char *name, Dwarf_Addr base, char **file_name,
                    Elf **elfp)
{
    char target[PATH_MAX], path[PATH_MAX + 32];
    struct stat st;
    int fd;
    *elfp = NULL;
    if (name[0] != '/') return dwfl_linux_proc_find_elf(mod, userdata, name, base, file_name, elfp); /* [vdso] */
    if (strstr(name, " (deleted)")) return -1;
    snprintf(target, sizeof target, "%s", name);
    proc_target_path(current_pid, target);
    snprintf(path, sizeof path, "/proc/%d/root%s", (int)current_pid, target);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    *file_name = strdup(path);
    return fd;
}

static const Dwfl_Callbacks callbacks = {
    .find_elf = find_elf,
    .find_debuginfo = dwfl_standard_find_debuginfo,
    .section_address = dwfl_offline_section_address,
};

static int report(struct symbolizer *y)
{
    int rc;
    y->last_report = mp_now();
    y->generation++;
    current_pid = y->pid;
    dwfl_report_begin(y->dwfl);
    rc = dwfl_linux_proc_report(y->dwfl, y->pid);
    dwfl_report_end(y->dwfl, NULL, NULL);
    return rc == 0 ? 0 : -1;
}

struct symbolizer *sym_open(pid_t pid, int lines)
{
    struct symbolizer *y = calloc(1, sizeof *y);
    if (!y) return NULL;
    y->pid = pid;
    y->lines = lines;
    y->dwfl = dwfl_begin(&callbacks);
    if (!y->dwfl || report(y) < 0) {
        sym_close(y);
        return NULL;
    }
    return y;
}

void sym_close(struct symbolizer *y)
{
    if (!y) return;
    if (y->dwfl) dwfl_end(y->dwfl);
    free(y);
}

unsigned sym_generation(const struct symbolizer *y)
{
    return y->generation;
}

void sym_resolve(struct symbolizer *y, uint64_t pc, int ret, struct sym_frame *o)
{
    Dwarf_Addr at = ret && pc ? pc - 1 : pc; /* a return address: the call is the instruction before */
    Dwarf_Addr start = 0, bias = 0;
    Dwfl_Module *m;
    const char *mname, *fn;
    char dm[sizeof o->func];
    GElf_Sym sym;
    GElf_Off off = 0;
    Dwfl_Line *l;
    memset(o, 0, sizeof *o);
    current_pid = y->pid;
    m = dwfl_addrmodule(y->dwfl, at);
    if (!m && mp_now() - y->last_report >= 1.0 && report(y) == 0) m = dwfl_addrmodule(y->dwfl, at);
    if (!m) {
        snprintf(o->module, sizeof o->module, "?");
        snprintf(o->func, sizeof o->func, "0x%llx", (unsigned long long)pc);
        snprintf(o->file, sizeof o->file, "?");
        o->offset = pc;
        return;
    }
    mname = dwfl_module_info(m, NULL, &start, NULL, NULL, NULL, NULL, NULL);
    snprintf(o->module, sizeof o->module, "%s", mname ? mname : "?");
    o->offset = dwfl_module_getelf(m, &bias) ? at - bias : at - start;
    fn = dwfl_module_addrinfo(m, at, &off, &sym, NULL, NULL, NULL);
    if ((o->named = fn && *fn && sym.st_size > 0 && off < sym.st_size))
        snprintf(o->func, sizeof o->func, "%s", mp_demangle(fn, dm, sizeof dm)); /* C++: demangled */
    else snprintf(o->func, sizeof o->func, "%s+0x%llx", path_base(o->module), (unsigned long long)o->offset);
    snprintf(o->file, sizeof o->file, "%s", o->module);
    if (y->lines && (l = dwfl_module_getsrc(m, at)) != NULL) {
        int line = 0;
        const char *src = dwfl_lineinfo(l, NULL, &line, NULL, NULL, NULL);
        if (src && *src && line > 0) {
            snprintf(o->file, sizeof o->file, "%s", src);
            o->line = (unsigned)line;
        }
    }
}
