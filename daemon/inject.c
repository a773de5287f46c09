/* inject.c -- loading a library into a live process with ptrace: stop one thread, run
 * dlopen/dlsym/start (or dlclose) on it from a private scratch page, put it back exactly.
 *
 * One injection (see PRIOR-ART.md, "Injecting into a live process"):
 *  - resolve dlopen & co. in the target's libc from its ELF file, before stopping anything;
 *  - PTRACE_SEIZE + PTRACE_INTERRUPT one thread (the main thread first, the others in turn
 *    on retries); the other threads keep running;
 *  - if that thread is not at a blocking syscall (parked in it, or just returned), it may
 *    hold the GIL, which would hold back the other Python threads: on the first round over
 *    the threads let it go and try the next at once;
 *  - if it is in libc/ld.so/a malloc library and not parked in a blocking syscall (or, in
 *    glibc's libc, just back from one), it may hold the malloc or loader lock: let it go,
 *    wait 0.5-2 ms, retry;
 *  - save its registers and FPU/AVX state; mmap a private page by single-stepping a
 *    `syscall` instruction of libc; copy the stub below and the strings there; run it:
 *    it saves errno, makes a program of calls (libc functions or raw syscalls, results
 *    feeding later arguments), and on success unmaps its own page through a libc
 *    `syscall; ret` that returns onto an int3 byte of libc, results left in registers;
 *  - restore errno, registers and FPU state; detach; re-send signals that arrived meanwhile.
 * Each resume is a round trip through the scheduler while the thread is stopped, so a
 * load makes few: the page (single step), memfd_create + socketpair (one run; then we
 * fill the memfd and take our end of the socket), closes + dlopen + close + dlsym +
 * start (one run, which unmaps the page) -- a copy already loaded needs no memfd. No byte
 * of the target's code is changed: other threads never see anything. */
#include "daemon/inject.h"

#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "daemon/deliver.h"
#include "probe/elfsym.h"
#include "probe/procfs.h"

#define CALL_TIMEOUT     5.0  /* s, the calls of one stub run */
#define STOP_TIMEOUT     5.0  /* s, for a thread to reach a ptrace stop */
#define RETRY_SECONDS    2.0  /* give up retrying unsafe moments after this long */
#define MAX_TRIES        200
#define PICKY_TRIES      8    /* first tries: only a thread at a blocking syscall (not holding the GIL) */
#define BOOST_NICE       (-15) /* our nice value while a target is stopped */
#define RED_ZONE         256  /* bytes left untouched below the thread's rsp */
#define XSTATE_MAX       (16 * 1024)
#define MAX_STRS         6
#define MAX_SIGS         8
#define RTLD_NOW_FLAG    2
#define RTLD_NOLOAD_FLAG 4
#define MFD_CLOEXEC_FLAG 0x0001U
#define MFD_EXEC_FLAG    0x0010U /* Linux >= 6.3: executable even under vm.memfd_noexec=1 */
#define AGENT_ARG_ROOM   (PATH_MAX + 1024)
#define RTLD_DLOPEN_FLAG 0x80000000 /* __libc_dlopen_mode's __RTLD_DLOPEN */
#ifndef NT_X86_SHSTK
#define NT_X86_SHSTK     0x204 /* CET shadow stack pointer */
#endif
#define EFLAGS_TF        0x100
#define EFLAGS_DF        0x400

#ifdef INJECT_TRACE
#define TRACE(...) (fprintf(stderr, "%9.3f ms  ", mp_now() * 1e3), fprintf(stderr, __VA_ARGS__), fputc('\n', stderr))
#else
#define TRACE(...) ((void)0)
#endif

/* ---- the code memprof runs in the target ---------------------------------------------- */

/* The scratch mapping: the stub's code on the first page (RX where W^X is enforced), its
 * data block at the start of the second page (RW), then the strings. */
#define STUB_DATA_OFF   4096
#define STUB_DATA_OFF_S "4096"

/* A program of up to STUB_CALLS calls: a libc function fn(a0..a5), or with STUB_RAW the
 * raw syscall number fn (its result -errno on failure). Each of fn, a0..a5 may instead
 * take the result of an earlier call (STUB_FROM). A call with STUB_STOP_ZERO that returns
 * 0 ends the program there; the program also ends at the first empty call. It saves errno
 * before the first call. A complete run with an exit gadget unmaps the page it runs from
 * (munmap through libc's `syscall; ret`, returning onto an int3 byte of libc) and leaves
 * the call results in r12, r13, r14, r10, r8, r9, errno's address in r15 and its value in
 * ebp; otherwise it stops on its own int3 with the results in its data block. rsp is
 * 16-aligned at entry and never pushed before a call. r12 points at the current call.
 * Offsets below are those of struct stub_data. */
__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        "memprof_stub:\n"
        "    lea  memprof_stub+" STUB_DATA_OFF_S "(%rip), %rbx\n"
        "    mov  0(%rbx), %rax\n"              /* errno_loc */
        "    test %rax, %rax\n"
        "    jz   1f\n"
        "    call *%rax\n"
        "    mov  %rax, 8(%rbx)\n"              /* errno_ptr */
        "    mov  (%rax), %ecx\n"
        "    mov  %rcx, 16(%rbx)\n"             /* errno_val */
        "1:  lea  64(%rbx), %r12\n"             /* call[0] */
        "    lea  544(%rbx), %r13\n"            /* end of call[] */
        "2:  cmp  %r13, %r12\n"
        "    je   4f\n"
        "    mov  56(%r12), %r14\n"             /* flags */
        "    mov  0(%r12), %rax\n"
        "    or   %r14, %rax\n"
        "    jz   4f\n"                         /* no more calls */
        "    xor  %ecx, %ecx\n"                 /* slot: fn, a0..a5 */
        "3:  mov  %r14, %rax\n"
        "    and  $15, %eax\n"
        "    jz   6f\n"
        "    imul $80, %eax, %eax\n"
        "    mov  48(%rbx,%rax), %rax\n"        /* call[src - 1].ret */
        "    mov  %rax, (%r12,%rcx)\n"
        "6:  shr  $4, %r14\n"
        "    add  $8, %ecx\n"
        "    cmp  $56, %ecx\n"
        "    jne  3b\n"
        "    mov  8(%r12), %rdi\n"
        "    mov  16(%r12), %rsi\n"
        "    mov  24(%r12), %rdx\n"
        "    mov  40(%r12), %r8\n"
        "    mov  48(%r12), %r9\n"
        "    test $1, %r14b\n"                  /* STUB_RAW */
        "    jz   7f\n"
        "    mov  0(%r12), %rax\n"
        "    mov  32(%r12), %r10\n"
        "    syscall\n"
        "    jmp  8f\n"
        "7:  mov  0(%r12), %r11\n"
        "    mov  32(%r12), %rcx\n"
        "    xor  %eax, %eax\n"
        "    call *%r11\n"
        "8:  mov  %rax, 64(%r12)\n"             /* ret */
        "    movq $1, 72(%r12)\n"               /* done */
        "    testb $0x20, 59(%r12)\n"           /* STUB_STOP_ZERO */
        "    jz   9f\n"
        "    test %rax, %rax\n"
        "    jz   5f\n"                         /* failed half-way: keep the page */
        "9:  add  $80, %r12\n"
        "    jmp  2b\n"
        "4:  mov  128(%rbx), %r12\n"            /* call[0..5].ret */
        "    mov  208(%rbx), %r13\n"
        "    mov  288(%rbx), %r14\n"
        "    mov  368(%rbx), %r10\n"
        "    mov  448(%rbx), %r8\n"
        "    mov  528(%rbx), %r9\n"
        "    mov  8(%rbx), %r15\n"
        "    mov  16(%rbx), %rbp\n"
        "    mov  24(%rbx), %r11\n"             /* exit_gadget */
        "    test %r11, %r11\n"
        "    jz   5f\n"
        "    pushq 32(%rbx)\n"                  /* exit_trap: where `ret` goes */
        "    mov  40(%rbx), %rdi\n"             /* page */
        "    mov  48(%rbx), %rsi\n"             /* page_len */
        "    mov  $11, %eax\n"                  /* munmap */
        "    jmp  *%r11\n"
        "5:  int3\n"
        "memprof_stub_trap:\n"
        "memprof_stub_end:\n"
        ".popsection\n");

extern const unsigned char memprof_stub[], memprof_stub_trap[], memprof_stub_end[]
    __attribute__((visibility("hidden")));

#define STUB_CALLS      6
#define STUB_RAW        (1ULL << 28)
#define STUB_STOP_ZERO  (1ULL << 29)
/* slot 0: fn, 1..6: a0..a5 takes the result of call k */
#define STUB_FROM(k, slot) ((uint64_t)((k) + 1) << (4 * (slot)))

struct stub_call {
    uint64_t fn, a[6], flags, ret, done;
};

struct stub_data {
    uint64_t errno_loc, errno_ptr, errno_val; /* in: __errno_location or 0; out: errno */
    uint64_t exit_gadget, exit_trap;          /* in: `syscall; ret` and an int3 in libc, or 0 */
    uint64_t page, page_len;                  /* in: the scratch page */
    int32_t sv[2];                            /* socketpair's out array */
    struct stub_call call[STUB_CALLS];
};
_Static_assert(sizeof(struct stub_call) == 80 && sizeof(struct stub_data) == 544 &&
                   offsetof(struct stub_data, call) == 64 && offsetof(struct stub_data, call[5].ret) == 528,
               "struct stub_data must match the offsets in memprof_stub");

/* ---- what we need in the target --------------------------------------------------------- */

/* Where the things we call live in the target, resolved before stopping it. */
struct target {
    pid_t pid;
    uint64_t dlopen, dlsym, dlclose, dlerror, errno_loc;
    uint64_t syscall_insn;            /* 0f 05, single-stepped for mmap/munmap */
    uint64_t exit_gadget, exit_trap;  /* 0f 05 c3 and cc in libc's text, or 0 */
    uint64_t dlopen_flags;
    struct { uint64_t lo, hi; int libc; } unsafe[16]; /* libc, ld.so, malloc libraries */
    int nunsafe;
};

/* One hijacked thread and everything needed to put it back. */
struct hijack {
    const struct target *t;
    pid_t pid, tid;
    struct user_regs_struct saved;
    uint64_t scratch;               /* the page, while mapped */
    size_t scratch_len;
    uint64_t str[MAX_STRS];         /* addresses of the strings copied into the page */
    uint64_t errno_ptr;             /* errno as it was, put back before detaching */
    int errno_val, have_errno;
    int sigs[MAX_SIGS], nsigs;      /* signals that arrived meanwhile, re-sent after detach */
    int exited;
    int sigsys;                     /* a remote syscall was stopped by a seccomp filter */
    unsigned sigsys_calls;          /* the stub's raw syscalls so stopped (bit per call) */
    int saw_sigsys;                 /* any SIGSYS stop: a single-step trap may be left pending */
    double t_resumed;               /* when we let it go */
    uint64_t ssp;                   /* shadow stack pointer, when have_ssp */
    int have_ssp;
    int xtype;                      /* NT_X86_XSTATE, NT_PRFPREG, or 0 */
    size_t xlen;
    unsigned char xbuf[XSTATE_MAX]; /* last: not cleared between tries */
};

typedef int (*work_fn)(struct hijack *h, void *ctx, char *err);

static __thread int chld_consumed; /* we ate a SIGCHLD that may not have been ours: re-raise it */

static int base_is(const char *path, const char *prefix)
{
    return strncmp(path_base(path), prefix, strlen(prefix)) == 0;
}

static int is_libc(const char *p)
{
    return base_is(p, "libc.so") || (base_is(p, "libc-") && strstr(path_base(p), ".so")) || base_is(p, "ld-musl");
}

static int is_ldso(const char *p)
{
    return base_is(p, "ld-linux") || (base_is(p, "ld-") && strstr(path_base(p), ".so"));
}

/* The first occurrence of pat in libc's text, checked against the live bytes. */
static uint64_t find_code(pid_t pid, const unsigned char *text, size_t len, uint64_t addr, const void *pat,
                          size_t plen)
{
    const unsigned char *p = memmem(text, len, pat, plen);
    unsigned char live[8];
    if (!p || plen > sizeof live || procmem_read(pid, addr + (uint64_t)(p - text), live, plen) < 0 ||
        memcmp(live, pat, plen) != 0)
        return 0;
    return addr + (uint64_t)(p - text);
}

/* A `syscall` instruction inside libc's syscall() (or another tiny wrapper), the exit
 * gadget and an int3 byte. */
static int find_gadgets(struct target *t, struct elfimg *img)
{
    static const char *fns[] = {"syscall", "getpid", "getppid", "sched_yield"};
    static const unsigned char sysret[] = {0x0f, 0x05, 0xc3}, int3[] = {0xcc};
    const unsigned char *text;
    size_t len;
    uint64_t addr;

    for (size_t i = 0; i < sizeof fns / sizeof fns[0] && !t->syscall_insn; i++) {
        uint64_t a, sz;
        unsigned char code[128];
        if (elfimg_sym(img, fns[i], ELFSYM_DYNAMIC, &a, &sz) < 0 || sz < 2) continue;
        if (sz > sizeof code) sz = sizeof code;
        if (procmem_read(t->pid, a, code, sz) < 0) continue;
        for (uint64_t k = 0; k + 1 < sz; k++)
            if (code[k] == 0x0f && code[k + 1] == 0x05) {
                t->syscall_insn = a + k;
                break;
            }
    }
    if ((text = elfimg_section(img, ".text", &len, &addr))) {
        t->exit_gadget = find_code(t->pid, text, len, addr, sysret, sizeof sysret);
        t->exit_trap = find_code(t->pid, text, len, addr, int3, sizeof int3);
        if (!t->exit_trap) t->exit_gadget = 0;
    }
    return t->syscall_insn ? 0 : -1;
}

/* With a CET shadow stack, the exit gadget's `ret` to an address we pushed would fault. */
static int has_shadow_stack(pid_t pid)
{
    char buf[4096];
    const char *p;
    if (procfs_status(pid, 0, buf, sizeof buf) < 0 || !(p = procfs_field(buf, "x86_Thread_features"))) return 0;
    const char *end = strchr(p, '\n');
    const char *hit = strstr(p, "shstk");
    return hit && (!end || hit < end);
}

static int resolve_dl(struct target *t, struct elfimg *img)
{
    if (elfimg_sym(img, "dlopen", ELFSYM_DYNAMIC, &t->dlopen, NULL) < 0 ||
        elfimg_sym(img, "dlsym", ELFSYM_DYNAMIC, &t->dlsym, NULL) < 0 ||
        elfimg_sym(img, "dlclose", ELFSYM_DYNAMIC, &t->dlclose, NULL) < 0)
        return -1;
    elfimg_sym(img, "dlerror", ELFSYM_DYNAMIC, &t->dlerror, NULL);
    t->dlopen_flags = RTLD_NOW_FLAG;
    return 0;
}

/* glibc < 2.34 without libdl loaded: the private __libc_dl* entry points. */
static int resolve_libc_dl(struct target *t, struct elfimg *img)
{
    if (elfimg_sym(img, "__libc_dlopen_mode", ELFSYM_DYNAMIC, &t->dlopen, NULL) < 0 ||
        elfimg_sym(img, "__libc_dlsym", ELFSYM_DYNAMIC, &t->dlsym, NULL) < 0 ||
        elfimg_sym(img, "__libc_dlclose", ELFSYM_DYNAMIC, &t->dlclose, NULL) < 0)
        return -1;
    t->dlerror = 0;
    t->dlopen_flags = RTLD_NOW_FLAG | RTLD_DLOPEN_FLAG;
    return 0;
}

/* Opens the C library mapped as m, refusing any but glibc: the agent is linked against glibc,
 * and memprof calls glibc's dlopen. musl names its libc ld-musl-ARCH.so.1 (Alpine) or
 * .../x86_64-linux-musl/libc.so (Debian's musl); glibc alone exports gnu_get_libc_version. */
static int libc_open_glibc(pid_t pid, pid_t task, const struct procmap *m, struct elfimg *img, char *err)
{
    char ierr[MP_ERRLEN];
    if (strstr(m->path, "musl")) {
        mp_err(err, "pid %d: unsupported libc (musl): %s; memprof profiles glibc processes only", (int)pid, m->path);
        return -1;
    }
    if (elfimg_open(task, m, img, ierr) < 0) {
        mp_err(err, "pid %d: cannot read its C library: %s", (int)pid, ierr);
        return -1;
    }
    if (elfimg_sym(img, "gnu_get_libc_version", ELFSYM_DYNAMIC, NULL, NULL) == 0) return 0;
    elfimg_close(img);
    mp_err(err, "pid %d: unsupported libc (not glibc): %s; memprof profiles glibc processes only", (int)pid, m->path);
    return -1;
}

/* The C library of pid: 0 when it is glibc, else -1 with a one-line err. */
int inject_libc_check(pid_t pid, char *err)
{
    struct procmap *maps = NULL;
    struct elfimg img;
    pid_t task = proc_live_task(pid);
    int n = procmaps_read(task, &maps), rc = 0;
    for (int i = 0; i < n; i++) {
        if (!is_libc(maps[i].path)) continue;
        if ((rc = libc_open_glibc(pid, task, &maps[i], &img, err)) == 0) elfimg_close(&img);
        break;
    }
    free(maps);
    return rc; /* no libc at all (static) or no maps: the injector says why, when it gets there */
}

static int resolve_target(pid_t pid, struct target *t, char *err)
{
    struct procmap *maps = NULL;
    struct elfimg img;
    int n, libc = -1, libdl = -1, rc = -1;
    char ierr[MP_ERRLEN];

    memset(t, 0, sizeof *t);
    t->pid = proc_live_task(pid); /* for /proc and memory: any live thread will do */
    n = procmaps_read(t->pid, &maps);
    if (n < 0) {
        if (errno == EACCES || errno == EPERM)
            mp_err(err, "pid %d: permission denied (you may only profile your own processes; try as root)",
                   (int)pid);
        else
            mp_err(err, "pid %d: no such process", (int)pid);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const char *p = maps[i].path;
        int unsafe = is_libc(p) || is_ldso(p) || strstr(path_base(p), "malloc");
        if (unsafe && t->nunsafe < (int)(sizeof t->unsafe / sizeof t->unsafe[0])) {
            t->unsafe[t->nunsafe].lo = maps[i].lo;
            t->unsafe[t->nunsafe].libc = is_libc(p) && !base_is(p, "ld-musl"); /* musl's is its loader too */
            t->unsafe[t->nunsafe++].hi = maps[i].hi;
        }
        if (is_libc(p) && libc < 0) libc = i;
        if (base_is(p, "libdl.so") || base_is(p, "libdl-")) libdl = i;
    }
    if (libc < 0) {
        mp_err(err, "pid %d: no C library mapped (statically linked?); cannot load a library into it", (int)pid);
        goto out;
    }
    if (libc_open_glibc(pid, t->pid, &maps[libc], &img, err) < 0) goto out;
    elfimg_sym(&img, "__errno_location", ELFSYM_DYNAMIC, &t->errno_loc, NULL);
    if (find_gadgets(t, &img) < 0) {
        mp_err(err, "pid %d: no syscall instruction found in %s", (int)pid, maps[libc].path);
        elfimg_close(&img);
        goto out;
    }
    if (has_shadow_stack(t->pid)) t->exit_gadget = 0;
    rc = resolve_dl(t, &img);
    if (rc < 0 && libdl >= 0) {
        struct elfimg dl;
        if (elfimg_open(t->pid, &maps[libdl], &dl, ierr) == 0) {
            rc = resolve_dl(t, &dl);
            elfimg_close(&dl);
        }
    }
    if (rc < 0) rc = resolve_libc_dl(t, &img);
    elfimg_close(&img);
    if (rc < 0) mp_err(err, "pid %d: no dlopen in its C library %s", (int)pid, maps[libc].path);
out:
    free(maps);
    return rc;
}

/* ---- process and thread state ----------------------------------------------------------- */

static int tracer_of(pid_t pid)
{
    char buf[4096];
    const char *p;
    if (procfs_status(pid, 0, buf, sizeof buf) < 0 || !(p = procfs_field(buf, "TracerPid"))) return 0;
    return atoi(p);
}

static void stopped_error(pid_t pid, char *err)
{
    mp_err(err, "pid %d: is stopped (SIGSTOP/Ctrl-Z); resume it with kill -CONT %d and retry", (int)pid,
           (int)pid);
}

static void traced_error(pid_t pid, char *err)
{
    mp_err(err, "pid %d: is already being traced by pid %d (a debugger?); detach it and retry", (int)pid,
           tracer_of(pid));
}

/* The threads of pid, main thread first. */
static int list_threads(pid_t pid, pid_t *tids, int max)
{
    char path[64];
    struct dirent *de;
    DIR *d;
    int n = 0;
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if (!(d = opendir(path))) return -1;
    tids[n++] = pid;
    while ((de = readdir(d)) && n < max) {
        pid_t tid = (pid_t)atoi(de->d_name);
        if (tid > 0 && tid != pid) tids[n++] = tid;
    }
    closedir(d);
    return n;
}

/* ---- waiting for ptrace stops ----------------------------------------------------------- */

/* Waits up to `timeout` s for tid's next stop or exit. SIGCHLD is blocked while we hold
 * the target, so sigtimedwait wakes us at once; the poll is for when it goes elsewhere. */
static int wait_tid(pid_t tid, double timeout, int *status)
{
    sigset_t chld;
    double deadline = mp_now() + timeout;
    long ns = 20000;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    for (;;) {
        pid_t r = waitpid(tid, status, __WALL | WNOHANG);
        if (r == tid) return 0;
        if (r < 0 && errno != EINTR) return -1;
        if (mp_now() > deadline) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct timespec ts = {0, ns};
        if (sigtimedwait(&chld, NULL, &ts) == SIGCHLD) chld_consumed = 1;
        if (ns < 1000000) ns *= 2;
    }
}

static int is_stop_sig(int sig)
{
    return sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

static void note_signal(struct hijack *h, int sig)
{
    for (int i = 0; i < h->nsigs; i++)
        if (h->sigs[i] == sig) return;
    if (h->nsigs < MAX_SIGS) h->sigs[h->nsigs++] = sig;
}

static void gone_error(struct hijack *h, char *err)
{
    h->exited = 1;
    mp_err(err, "pid %d: exited while memprof was loading its agent", (int)h->pid);
}

/* PTRACE_SEIZE + PTRACE_INTERRUPT. 0: stopped; 1: in a job-control stop (detached again);
 * 2: thread vanished; -1: error. Signals that arrive first are passed on at once. */
static int stop_thread(struct hijack *h, double *t0, char *err)
{
    int st;
    if (ptrace(PTRACE_SEIZE, h->tid, 0, 0) < 0) {
        if (errno == ESRCH) return 2;
        if (errno == EPERM && tracer_of(h->pid))
            traced_error(h->pid, err);
        else if (errno == EPERM)
            mp_err(err, "pid %d: permission denied by ptrace (try as root; check kernel.yama.ptrace_scope)",
                   (int)h->pid);
        else
            mp_errno(err, "pid %d: ptrace(SEIZE)", (int)h->pid);
        return -1;
    }
    *t0 = mp_now();
    TRACE("seized %d", (int)h->tid);
    if (ptrace(PTRACE_INTERRUPT, h->tid, 0, 0) < 0) {
        mp_errno(err, "pid %d: ptrace(INTERRUPT)", (int)h->pid);
        return errno == ESRCH ? 2 : -1;
    }
    for (;;) {
        if (wait_tid(h->tid, STOP_TIMEOUT, &st) < 0) {
            /* Uninterruptible sleep: it stops when it wakes, and cannot be detached before. */
            if (errno == ETIMEDOUT && wait_tid(h->tid, 60.0, &st) == 0) goto got;
            mp_err(err, "pid %d: thread %d did not stop within %.0f s (uninterruptible sleep?)", (int)h->pid,
                   (int)h->tid, STOP_TIMEOUT + 60.0);
            return -1;
        }
    got:
        if (WIFEXITED(st) || WIFSIGNALED(st)) return 2; /* the next try sees whether the process is gone */
        if (!WIFSTOPPED(st)) continue;
        int sig = WSTOPSIG(st), event = st >> 16;
        if (event == PTRACE_EVENT_STOP) {
            TRACE("stopped");
            if (!is_stop_sig(sig)) return 0;
            ptrace(PTRACE_DETACH, h->tid, 0, 0); /* it stays in its group stop */
            return 1;
        }
        /* A signal was on its way: let it be delivered; the interrupt stays pending. */
        if (ptrace(PTRACE_CONT, h->tid, 0, sig) < 0) return 2;
    }
}

/* ---- is this a safe moment to run dlopen on the thread? --------------------------------- */

static const long blocking_syscalls[] = {
    SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_open, SYS_openat,
    SYS_poll, SYS_ppoll, SYS_select, SYS_pselect6, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_pwait2,
    SYS_futex, SYS_futex_waitv, SYS_nanosleep, SYS_clock_nanosleep, SYS_pause, SYS_rt_sigsuspend,
    SYS_rt_sigtimedwait, SYS_wait4, SYS_waitid, SYS_accept, SYS_accept4, SYS_connect, SYS_recvfrom,
    SYS_recvmsg, SYS_recvmmsg, SYS_sendto, SYS_sendmsg, SYS_sendmmsg, SYS_flock, SYS_fcntl, SYS_msgrcv,
    SYS_msgsnd, SYS_semop, SYS_semtimedop, SYS_mq_timedreceive, SYS_mq_timedsend, SYS_io_getevents,
    SYS_io_uring_enter,
};

static int blocking_syscall(long nr)
{
    for (size_t i = 0; i < sizeof blocking_syscalls / sizeof blocking_syscalls[0]; i++)
        if (blocking_syscalls[i] == nr) return 1;
    return 0;
}

/* Stopped while blocked in a syscall: the kernel will restart it (or return EINTR). */
static int parked_in_syscall(const struct user_regs_struct *r)
{
    long nr = (long)r->orig_rax, rv = (long)r->rax;
    if (nr < 0) return 0;
    if (rv != -EINTR && rv != -512 && rv != -513 && rv != -514 && rv != -516) return 0;
    return blocking_syscall(nr);
}

/* Stopped as a blocking syscall returned (the interrupt came as it completed): rip just
 * after its `syscall` instruction, nothing to restart. */
static int returned_from_syscall(const struct hijack *h)
{
    const struct user_regs_struct *r = &h->saved;
    long rv = (long)r->rax;
    unsigned char insn[2];
    if ((long)r->orig_rax < 0 || !blocking_syscall((long)r->orig_rax) || (rv <= -512 && rv >= -516)) return 0;
    return procmem_read(h->tid, r->rip - 2, insn, sizeof insn) == 0 && insn[0] == 0x0f && insn[1] == 0x05;
}

/* At a blocking syscall, parked in it or just returned: a Python thread there has almost
 * always released the GIL (Py_BEGIN_ALLOW_THREADS around a blocking call, or waiting for
 * the GIL). */
static int at_syscall(const struct hijack *h)
{
    return parked_in_syscall(&h->saved) || returned_from_syscall(h);
}

/* In libc/ld.so/a malloc library and not parked in a blocking syscall: it may hold the malloc
 * or the loader lock. Just returned from one counts as parked only in glibc's libc: ld.so
 * (and musl's libc, its own loader) reads and opens files holding the loader lock, and a
 * dlopen on that thread would nest in it. */
static int unsafe_moment(const struct hijack *h)
{
    uint64_t ip = h->saved.rip;
    for (int i = 0; i < h->t->nunsafe; i++)
        if (ip >= h->t->unsafe[i].lo && ip < h->t->unsafe[i].hi)
            return !parked_in_syscall(&h->saved) && !(h->t->unsafe[i].libc && returned_from_syscall(h));
    return 0;
}

/* ---- running code in the stopped thread ------------------------------------------------- */

static struct user_regs_struct call_regs(const struct hijack *h)
{
    struct user_regs_struct r = h->saved;
    r.orig_rax = (unsigned long long)-1; /* no syscall restart at our pc */
    r.eflags &= ~(unsigned long long)(EFLAGS_TF | EFLAGS_DF);
    return r;
}

/* After a timeout the thread is running our code: interrupt it and wait for the stop. */
static void reclaim(struct hijack *h)
{
    int st;
    h->saw_sigsys = 1; /* whatever it was doing may have left a trap pending: check before detaching */
    ptrace(PTRACE_INTERRUPT, h->tid, 0, 0);
    while (wait_tid(h->tid, 1.0, &st) == 0 && WIFSTOPPED(st) && (st >> 16) != PTRACE_EVENT_STOP) {
        if (WSTOPSIG(st) != SIGTRAP) note_signal(h, WSTOPSIG(st));
        ptrace(PTRACE_CONT, h->tid, 0, 0);
    }
}

/* Runs the `syscall` instruction in libc with one single-step. */
static int remote_syscall(struct hijack *h, long nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3,
                          uint64_t a4, uint64_t a5, uint64_t *ret, char *err)
{
    struct user_regs_struct r = call_regs(h);
    int st;
    r.rip = h->t->syscall_insn;
    r.rax = (unsigned long long)nr;
    r.rdi = a0, r.rsi = a1, r.rdx = a2, r.r10 = a3, r.r8 = a4, r.r9 = a5;
    if (ptrace(PTRACE_SETREGS, h->tid, 0, &r) < 0) goto gone;
    for (int tries = 0; tries < 100; tries++) {
        if (ptrace(PTRACE_SINGLESTEP, h->tid, 0, 0) < 0) goto gone;
        if (wait_tid(h->tid, CALL_TIMEOUT, &st) < 0) {
            if (errno != ETIMEDOUT) goto gone;
            reclaim(h);
            mp_err(err, "pid %d: remote syscall %ld did not return within %.0f s", (int)h->pid, nr, CALL_TIMEOUT);
            return -1;
        }
        if (WIFEXITED(st) || WIFSIGNALED(st) || ptrace(PTRACE_GETREGS, h->tid, 0, &r) < 0) goto gone;
        int sig = WSTOPSIG(st);
        if ((st >> 16) == 0 && sig == SIGSYS) {
            h->sigsys = h->saw_sigsys = 1;
            mp_err(err, "pid %d: a seccomp filter forbids the syscalls memprof needs (%ld)", (int)h->pid, nr);
            return -1;
        }
        if ((st >> 16) == 0 && sig != SIGTRAP) note_signal(h, sig);
        if (r.rip == h->t->syscall_insn + 2) {
            TRACE("syscall %ld done", nr);
            *ret = r.rax;
            return 0;
        }
    }
    mp_err(err, "pid %d: remote syscall %ld did not complete", (int)h->pid, nr);
    return -1;
gone:
    gone_error(h, err);
    return -1;
}

static const char *sig_name(int sig)
{
    const char *s = sigabbrev_np(sig);
    return s ? s : "?";
}

/* Runs the stub with data *d (final: it may unmap its page when all calls succeed) and
 * reads the results back into *d. */
static int run_stub(struct hijack *h, struct stub_data *d, int final, const char *what, char *err)
{
    uint64_t data = h->scratch + STUB_DATA_OFF;
    uint64_t trap = h->scratch + (uint64_t)(memprof_stub_trap - memprof_stub);
    struct user_regs_struct r = call_regs(h);
    double deadline = mp_now() + CALL_TIMEOUT;
    int st;

    h->sigsys_calls = 0;
    d->exit_gadget = final ? h->t->exit_gadget : 0;
    d->exit_trap = h->t->exit_trap;
    d->page = h->scratch;
    d->page_len = h->scratch_len;
    if (procmem_write(h->tid, data, d, sizeof *d) < 0) {
        mp_errno(err, "pid %d: writing to its memory", (int)h->pid);
        return -1;
    }
    r.rip = h->scratch;
    r.rsp = (h->saved.rsp - RED_ZONE) & ~15ULL; /* 16-aligned at each call: 8 mod 16 in the callee */
    if (ptrace(PTRACE_SETREGS, h->tid, 0, &r) < 0 || ptrace(PTRACE_CONT, h->tid, 0, 0) < 0) goto gone;
    for (;;) {
        double left = deadline - mp_now();
        if (left <= 0 || wait_tid(h->tid, left, &st) < 0) {
            if (left > 0 && errno != ETIMEDOUT) goto gone;
            reclaim(h); /* probably deadlocked on a lock the thread itself holds */
            mp_err(err, "pid %d: %s did not return within %.0f s in the target (deadlock?); gave up", (int)h->pid,
                   what, CALL_TIMEOUT);
            return -1;
        }
        if (WIFEXITED(st) || WIFSIGNALED(st)) goto gone;
        int sig = WSTOPSIG(st), event = st >> 16;
        if (event == 0 && sig == SIGTRAP) {
            if (ptrace(PTRACE_GETREGS, h->tid, 0, &r) < 0) goto gone;
            if (r.rip == trap) {
                TRACE("%s: stub returned", what);
                if (procmem_read(h->tid, data, d, sizeof *d) < 0) {
                    mp_errno(err, "pid %d: reading its memory", (int)h->pid);
                    return -1;
                }
                return 0;
            }
            if (d->exit_gadget && r.rip == d->exit_trap + 1) { /* complete; the page is gone */
                TRACE("%s: stub exited", what);
                if (r.rax == 0) h->scratch = 0;
                uint64_t rets[STUB_CALLS] = {r.r12, r.r13, r.r14, r.r10, r.r8, r.r9};
                for (int i = 0, more = 1; i < STUB_CALLS; i++) {
                    more = more && (d->call[i].fn || d->call[i].flags);
                    d->call[i].done = (uint64_t)more;
                    if (more) d->call[i].ret = rets[i];
                }
                d->errno_ptr = r.r15, d->errno_val = r.rbp;
                return 0;
            }
        } else if (event == 0 && sig == SIGSYS) {
            uint64_t first = data + offsetof(struct stub_data, call);
            h->saw_sigsys = 1;
            if (ptrace(PTRACE_GETREGS, h->tid, 0, &r) < 0) goto gone;
            if (r.rip < h->scratch || r.rip >= trap || r.r12 < first ||
                (r.r12 - first) / sizeof(struct stub_call) >= STUB_CALLS) {
                mp_err(err, "pid %d: a seccomp filter stopped %s in the target", (int)h->pid, what);
                return -1;
            }
            /* one of our raw syscalls (SECCOMP_RET_TRAP): it fails with ENOSYS, the signal is dropped */
            h->sigsys_calls |= 1u << ((r.r12 - first) / sizeof(struct stub_call));
            r.rax = (unsigned long long)-ENOSYS;
            if (ptrace(PTRACE_SETREGS, h->tid, 0, &r) < 0) goto gone;
        } else if (event == 0) {
            siginfo_t si;
            int fault = sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE || sig == SIGABRT;
            /* A fault of its own (or abort()), not a signal someone sent meanwhile. */
            if (fault && ptrace(PTRACE_GETSIGINFO, h->tid, 0, &si) == 0 &&
                (si.si_code > 0 || (si.si_code == SI_TKILL && si.si_pid == h->pid))) {
                mp_err(err, "pid %d: %s crashed in the target (%s); the thread was put back", (int)h->pid, what,
                       sig_name(sig));
                return -1;
            }
            note_signal(h, sig); /* delivered after we detach */
        }
        /* Group stops and our interrupt's trap: go on; the kernel re-enters a group stop
         * when we detach. */
        if (ptrace(PTRACE_CONT, h->tid, 0, 0) < 0) goto gone;
    }
gone:
    gone_error(h, err);
    return -1;
}

static int map_scratch(struct hijack *h, const char **strs, int nstrs, char *err);

/* Runs a program of calls: the first run of a hijack also saves errno. */
static int run_calls(struct hijack *h, struct stub_data *d, int final, const char *what, char *err)
{
    if (!h->have_errno) d->errno_loc = h->t->errno_loc;
    if (run_stub(h, d, final, what, err) < 0) return -1;
    if (d->errno_loc && d->errno_ptr) {
        h->errno_ptr = d->errno_ptr;
        h->errno_val = (int)d->errno_val;
        h->have_errno = 1;
    }
    return 0;
}

/* Reads a NUL-terminated string from the target, page by page. */
static void read_cstr(pid_t pid, uint64_t addr, char *out, size_t outlen)
{
    size_t n = 0;
    out[0] = 0;
    while (addr && n + 1 < outlen) {
        size_t chunk = 4096 - (addr & 4095);
        if (chunk > outlen - 1 - n) chunk = outlen - 1 - n;
        if (procmem_read(pid, addr, out + n, chunk) < 0) break;
        out[n + chunk] = 0;
        size_t l = strlen(out + n);
        for (size_t i = n; i < n + l; i++)
            if ((unsigned char)out[i] < 0x20 || (unsigned char)out[i] >= 0x7f) out[i] = '?';
        n += l;
        if (l < chunk) break;
        addr += chunk;
    }
}

/* dlerror() in the target. */
static void remote_dlerror(struct hijack *h, char *msg, size_t len)
{
    struct stub_data d;
    char ignored[MP_ERRLEN];
    memset(&d, 0, sizeof d);
    snprintf(msg, len, "no message (dlerror unavailable)");
    d.call[0].fn = h->t->dlerror;
    if (!d.call[0].fn || (!h->scratch && map_scratch(h, NULL, 0, ignored) < 0)) return;
    /* not final: the page stays for what comes next (the /tmp copy's path); hijack_run unmaps it */
    if (run_calls(h, &d, 0, "dlerror", ignored) == 0 && d.call[0].ret)
        read_cstr(h->tid, d.call[0].ret, msg, len);
}

/* ---- save, set up, run, tear down, restore ---------------------------------------------- */

/* The registers are in h->saved already (read to judge the moment). */
static int save_state(struct hijack *h)
{
    struct iovec iov = {h->xbuf, sizeof h->xbuf}, ssp = {&h->ssp, sizeof h->ssp};
    h->have_ssp = ptrace(PTRACE_GETREGSET, h->tid, (void *)NT_X86_SHSTK, &ssp) == 0;
    if (ptrace(PTRACE_GETREGSET, h->tid, (void *)NT_X86_XSTATE, &iov) == 0) {
        h->xtype = NT_X86_XSTATE;
        h->xlen = iov.iov_len;
        return 0;
    }
    iov.iov_len = sizeof h->xbuf;
    if (ptrace(PTRACE_GETREGSET, h->tid, (void *)NT_PRFPREG, &iov) == 0) {
        h->xtype = NT_PRFPREG;
        h->xlen = iov.iov_len;
        return 0;
    }
    return -1;
}

static int restore_state(struct hijack *h)
{
    struct iovec iov = {h->xbuf, h->xlen}, ssp = {&h->ssp, sizeof h->ssp};
    int rc = ptrace(PTRACE_SETREGS, h->tid, 0, &h->saved);
    if (h->have_ssp && ptrace(PTRACE_SETREGSET, h->tid, (void *)NT_X86_SHSTK, &ssp) < 0) rc = -1;
    if (h->xtype && ptrace(PTRACE_SETREGSET, h->tid, (void *)(long)h->xtype, &iov) < 0) rc = -1;
    return rc;
}

/* Lets the thread go; its stop ends when the detach starts (t_resumed). */
static void detach(struct hijack *h)
{
    h->t_resumed = mp_now();
    ptrace(PTRACE_DETACH, h->tid, 0, 0);
    for (int i = 0; i < h->nsigs; i++) syscall(SYS_tgkill, h->pid, h->tid, h->sigs[i]);
    h->nsigs = 0;
}

/* The scratch mapping (see STUB_DATA_OFF): RWX, or RW with the code page then made RX
 * where W^X is enforced (SELinux execmem, seccomp). */
static int map_scratch(struct hijack *h, const char **strs, int nstrs, char *err)
{
    size_t code = (size_t)(memprof_stub_end - memprof_stub), len = STUB_DATA_OFF + sizeof(struct stub_data);
    uint64_t ret, off;
    unsigned char *buf;
    int wx = 1;

    for (int i = 0; i < nstrs; i++) len += strlen(strs[i]) + 1;
    h->scratch_len = (len + 4095) & ~(size_t)4095;
    if (remote_syscall(h, SYS_mmap, 0, h->scratch_len, PROT_READ | PROT_WRITE | PROT_EXEC,
                       MAP_PRIVATE | MAP_ANONYMOUS, (uint64_t)-1, 0, &ret, err) < 0)
        return -1;
    if ((int64_t)ret == -EACCES || (int64_t)ret == -EPERM) {
        wx = 0;
        if (remote_syscall(h, SYS_mmap, 0, h->scratch_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           (uint64_t)-1, 0, &ret, err) < 0)
            return -1;
    }
    if ((int64_t)ret < 0 && (int64_t)ret > -4096) {
        mp_err(err, "pid %d: mmap in the target failed: %s", (int)h->pid, strerror((int)-(int64_t)ret));
        return -1;
    }
    h->scratch = ret;
    if (!(buf = calloc(1, len))) {
        mp_err(err, "out of memory");
        return -1;
    }
    memcpy(buf, memprof_stub, code);
    off = STUB_DATA_OFF + sizeof(struct stub_data);
    for (int i = 0; i < nstrs; i++) {
        size_t l = strlen(strs[i]) + 1;
        memcpy(buf + off, strs[i], l);
        h->str[i] = h->scratch + off;
        off += l;
    }
    int rc = procmem_write(h->tid, h->scratch, buf, len);
    free(buf);
    if (rc < 0) {
        mp_errno(err, "pid %d: writing to its memory", (int)h->pid);
        return -1;
    }
    if (!wx && (remote_syscall(h, SYS_mprotect, h->scratch, STUB_DATA_OFF, PROT_READ | PROT_EXEC, 0, 0, 0, &ret,
                               err) < 0 ||
                ret != 0)) {
        if (!*err) mp_err(err, "pid %d: mprotect in the target failed", (int)h->pid);
        return -1;
    }
    return 0;
}

/* Is a SIGTRAP or SIGSYS queued for the thread (a single-step trap left behind when a
 * seccomp SIGSYS was reported first)? */
static int own_signal_pending(const struct hijack *h)
{
    char buf[4096];
    const char *p;
    if (procfs_status(h->pid, h->tid, buf, sizeof buf) < 0 || !(p = procfs_field(buf, "SigPnd"))) return 0;
    unsigned long long mask = strtoull(p, NULL, 16);
    return (mask & (1ULL << (SIGTRAP - 1))) || (mask & (1ULL << (SIGSYS - 1)));
}

/* Lets such signals be reported and dropped, with rip on an int3 of libc so that nothing
 * runs either way; otherwise they would kill the target after we detach. */
static void drain_own_signals(struct hijack *h)
{
    for (int i = 0; i < 4 && h->t->exit_trap && own_signal_pending(h); i++) {
        struct user_regs_struct r = call_regs(h);
        int st;
        r.rip = h->t->exit_trap;
        if (ptrace(PTRACE_SETREGS, h->tid, 0, &r) < 0 || ptrace(PTRACE_CONT, h->tid, 0, 0) < 0) return;
        if (wait_tid(h->tid, 1.0, &st) < 0) {
            reclaim(h);
            return;
        }
        if (!WIFSTOPPED(st)) {
            h->exited = 1;
            return;
        }
        int sig = WSTOPSIG(st);
        if ((st >> 16) == 0 && sig != SIGTRAP && sig != SIGSYS) note_signal(h, sig);
    }
}

/* With the thread stopped at a safe moment: run work() and put everything back. */
static int hijack_run(struct hijack *h, const char **strs, int nstrs, work_fn work, void *ctx, char *err)
{
    uint64_t ret;
    int rc = -1;

    err[0] = 0;
    if (save_state(h) < 0) {
        mp_errno(err, "pid %d: saving the thread's registers", (int)h->pid);
        if (errno == ESRCH) return -1; /* gone: nothing to restore */
        detach(h);
        return -1;
    }
    if (map_scratch(h, strs, nstrs, err) == 0) rc = work(h, ctx, err);
    if (h->exited) return -1;
    if (h->have_errno) procmem_write(h->tid, h->errno_ptr, &h->errno_val, sizeof h->errno_val);
    if (h->scratch) {
        char ignored[MP_ERRLEN];
        remote_syscall(h, SYS_munmap, h->scratch, h->scratch_len, 0, 0, 0, 0, &ret, ignored);
        h->scratch = 0;
        if (h->exited) return -1;
    }
    if (h->saw_sigsys) drain_own_signals(h); /* else nothing of ours can be pending: no /proc read */
    if (h->exited) return -1;
    if (restore_state(h) < 0 && rc == 0) {
        mp_errno(err, "pid %d: restoring the thread's registers", (int)h->pid);
        rc = -1;
    }
    TRACE("restored");
    detach(h);
    TRACE("detached");
    return rc;
}

static void sleep_us(long us)
{
    struct timespec ts = {0, us * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

/* Stops a thread of pid at a safe moment (retrying), runs work() on it, puts it back. Other
 * threads keep running, unless the stopped one holds a lock they want: the GIL above all.
 * So the first tries (one round over the threads, at most PICKY_TRIES) take a thread only
 * at a blocking syscall, where Python threads have released the GIL, and pass over one
 * running code (most likely Python's, with the GIL) at once to the next; after them, any
 * thread not in libc/ld.so/malloc will do, as with a single thread. */
static int with_thread(pid_t pid, const char **strs, int nstrs, work_fn work, void *ctx, double *stop_ms,
                       unsigned *retries, char *err)
{
    struct target t;
    struct hijack *h;
    sigset_t block, old;
    double give_up;
    int rc = -1, oldnice, boosted, in_d = 0;

    *stop_ms = 0;
    if (retries) *retries = 0;
    if (resolve_target(pid, &t, err) < 0) return -1;
    if (!(h = calloc(1, sizeof *h))) {
        mp_err(err, "out of memory");
        return -1;
    }
    /* Being interrupted must never leave the target stopped or half-modified. SIGCHLD:
     * ours to consume while we wait, and a handler reaping with waitpid(-1) must not
     * steal our tracee's stops. */
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    /* While it holds the target stopped, this thread should not wait behind other work
     * (root only; restored after). */
    errno = 0;
    oldnice = getpriority(PRIO_PROCESS, 0);
    boosted = errno == 0 && oldnice > BOOST_NICE && setpriority(PRIO_PROCESS, 0, BOOST_NICE) == 0;
    chld_consumed = 0;
    give_up = mp_now() + RETRY_SECONDS;

    for (unsigned attempt = 0;; attempt++) {
        pid_t tids[256];
        int n = list_threads(pid, tids, 256), r, picky;
        double t0 = 0;
        char st;

        if (n <= 0) {
            mp_err(err, "pid %d: no such process", (int)pid);
            break;
        }
        st = procfs_state(pid, proc_live_task(pid));
        if (st == 'T') {
            stopped_error(pid, err);
            break;
        }
        if (st == 't' && tracer_of(pid)) {
            traced_error(pid, err);
            break;
        }
        memset(h, 0, offsetof(struct hijack, xtype));
        h->t = &t;
        h->pid = pid;
        h->tid = tids[attempt % (unsigned)n];
        st = procfs_state(pid, h->tid);
        if (st == 'Z' || st == 'X' || st == 'D' || st == 0) {
            if (n == 1 && st != 'D') {
                if (st)
                    mp_err(err, "pid %d: is a zombie (it has exited)", (int)pid);
                else
                    mp_err(err, "pid %d: no such process", (int)pid);
                break;
            }
            r = 2;
            in_d = st == 'D';
        } else {
            r = stop_thread(h, &t0, err);
            in_d = 0;
        }
        if (r == 0 && ptrace(PTRACE_GETREGS, h->tid, 0, &h->saved) < 0) r = 2;
        if (r == 0) TRACE("tid %d (#%u of %d) rip %llx orig_rax %lld rax %lld at syscall %d unsafe %d", (int)h->tid,
                          attempt, n, h->saved.rip, (long long)h->saved.orig_rax, (long long)h->saved.rax,
                          at_syscall(h), unsafe_moment(h));
        picky = n > 1 && attempt < (unsigned)(n < PICKY_TRIES ? n : PICKY_TRIES);
        if (r == 0 && !unsafe_moment(h) && (!picky || at_syscall(h))) {
            rc = hijack_run(h, strs, nstrs, work, ctx, err);
            *stop_ms += ((h->t_resumed ? h->t_resumed : mp_now()) - t0) * 1e3;
            break;
        }
        if (r == 0) { /* maybe holding the malloc or loader lock, or the GIL: let it run on */
            detach(h);
            *stop_ms += (h->t_resumed - t0) * 1e3;
            if (retries) (*retries)++;
        } else if (r == 1) {
            *stop_ms += (mp_now() - t0) * 1e3;
            stopped_error(pid, err);
            break;
        } else if (r < 0) {
            if (t0) *stop_ms += (mp_now() - t0) * 1e3;
            break;
        }
        if (attempt + 1 >= MAX_TRIES || mp_now() > give_up) {
            if (in_d)
                mp_err(err, "pid %d: stayed in uninterruptible sleep (D state, disk or NFS I/O?) for %.1f s; retry later",
                       (int)pid, RETRY_SECONDS);
            else
                mp_err(err,
                       "pid %d: its threads stayed busy inside libc/ld.so (malloc or the dynamic loader) for %u "
                       "tries in %.1f s; retry later",
                       (int)pid, attempt + 1, RETRY_SECONDS);
            break;
        }
        if (!picky) sleep_us(500 + (long)((attempt * 397u) % 1500u)); /* picky: the next thread at once */
    }
    if (boosted) setpriority(PRIO_PROCESS, 0, oldnice);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (chld_consumed) kill(getpid(), SIGCHLD);
    free(h);
    return rc;
}

/* ---- the two operations ----------------------------------------------------------------- */

/* The strings copied into the scratch page for a load; ARG and PATH are rewritten there. */
enum { S_BASE, S_SYM, S_ARG, S_PATH, S_COUNT };
#define ARG_ROOM  32  /* for " fd=N" */
#define PATH_ROOM 320 /* /proc/thread-self/fd/N or the /tmp copy's path */
#define MAX_CLOSE 3

struct load_ctx {
    const struct libbytes *lb;
    const char *sym, *arg;
    int flags, loaded;
    unsigned mfd_flags; /* MFD_EXEC where the kernel knows it */
    struct inject_result *res;
    int pidfd;          /* INJECT_SOCKET: the target's pidfd, opened before it is stopped, or -1 */
    char why_pidfd[MP_ERRLEN];
};

/* What a load has made in the target so far, to use or to undo. */
struct load_state {
    int mfd;                      /* the filled memfd, or -1 */
    int tfd;                      /* the agent's end of the socket pair, or -1 */
    int close[MAX_CLOSE], nclose; /* descriptors to close in the next run */
    uint64_t handle;
    int noload;                   /* handle came from RTLD_NOLOAD: not our reference */
    int started;                  /* the start function ran and started the agent's thread */
    struct fileid mfd_id;         /* the memfd's identity in /proc/PID/maps */
    char why_memfd[MP_ERRLEN], why_tmp[MP_ERRLEN], why_sock[MP_ERRLEN];
};

static void remote_close(struct hijack *h, int fd)
{
    uint64_t ret;
    char ignored[MP_ERRLEN];
    if (fd >= 0 && !h->exited) remote_syscall(h, SYS_close, (uint64_t)fd, 0, 0, 0, 0, 0, &ret, ignored);
}

/* memfd_create's result (ret, or sigsys): retried without MFD_EXEC where the kernel does
 * not know it, then filled with the library through /proc/TID/fd. The descriptor, or -1
 * with a note in st->why_memfd (or err). */
static int memfd_result(struct hijack *h, struct load_ctx *c, struct load_state *st, int64_t ret, int sigsys,
                        char *err)
{
    char ierr[MP_ERRLEN];
    uint64_t r;
    if (!sigsys && ret == -EINVAL && (c->mfd_flags & MFD_EXEC_FLAG)) { /* before Linux 6.3 */
        c->mfd_flags &= ~MFD_EXEC_FLAG;
        if (remote_syscall(h, SYS_memfd_create, h->str[S_BASE], c->mfd_flags, 0, 0, 0, 0, &r, err) == 0)
            ret = (int64_t)r;
        else if (!h->sigsys)
            return -1;
        sigsys = h->sigsys;
        err[0] = 0;
    }
    if (sigsys) {
        snprintf(st->why_memfd, sizeof st->why_memfd, "memfd_create stopped by a seccomp filter (SIGSYS)");
        return -1;
    }
    if (ret < 0) {
        snprintf(st->why_memfd, sizeof st->why_memfd, "memfd_create refused: %s", strerror((int)-ret));
        return -1;
    }
    if (deliver_fill_memfd(h->tid, (int)ret, c->lb, &st->mfd_id, ierr) < 0) {
        snprintf(st->why_memfd, sizeof st->why_memfd, "%s", ierr);
        st->close[st->nclose++] = (int)ret;
        return -1;
    }
    TRACE("memfd filled");
    return (int)ret;
}

/* socketpair's result: its first end comes over to us (pidfd_getfd) and is closed in the
 * target by the next run; the other is the agent's (st->tfd). */
static void socket_result(struct load_ctx *c, struct load_state *st, int64_t ret, int sigsys,
                          const int32_t sv[2])
{
    char ierr[MP_ERRLEN];
    if (sigsys) {
        snprintf(st->why_sock, sizeof st->why_sock, "socketpair stopped by a seccomp filter");
        return;
    }
    if (ret < 0) {
        snprintf(st->why_sock, sizeof st->why_sock, "socketpair refused: %s", strerror((int)-ret));
        return;
    }
    if (c->pidfd < 0)
        snprintf(ierr, sizeof ierr, "%s", c->why_pidfd);
    else
        c->res->sock_fd = deliver_take_fd(c->pidfd, sv[0], ierr);
    st->close[st->nclose++] = sv[0];
    if (c->res->sock_fd < 0) {
        snprintf(st->why_sock, sizeof st->why_sock, "%s", ierr);
        st->close[st->nclose++] = sv[1];
        return;
    }
    st->tfd = sv[1];
    TRACE("socket taken");
}

/* The first run: memfd_create (unless a copy is mapped already) and socketpair, in one go. */
static int prepare(struct hijack *h, struct load_ctx *c, struct load_state *st, char *err)
{
    struct stub_data d;
    int n = 0, i_mfd = -1, i_sp = -1;
    unsigned sigsys;
    memset(&d, 0, sizeof d);
    if (!c->loaded) {
        i_mfd = n++;
        d.call[i_mfd] = (struct stub_call){.fn = SYS_memfd_create, .a = {h->str[S_BASE], c->mfd_flags},
                                           .flags = STUB_RAW};
    }
    if (c->flags & INJECT_SOCKET) {
        i_sp = n++;
        d.call[i_sp] = (struct stub_call){.fn = SYS_socketpair,
                                          .a = {AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                                                h->scratch + STUB_DATA_OFF + offsetof(struct stub_data, sv)},
                                          .flags = STUB_RAW};
    }
    if (!n) return 0;
    if (run_calls(h, &d, 0, "memfd_create and socketpair", err) < 0) return -1;
    sigsys = h->sigsys_calls;
    if (i_sp >= 0) socket_result(c, st, (int64_t)d.call[i_sp].ret, sigsys >> i_sp & 1, d.sv);
    if (i_mfd >= 0) st->mfd = memfd_result(h, c, st, (int64_t)d.call[i_mfd].ret, sigsys >> i_mfd & 1, err);
    return err[0] ? -1 : 0;
}

/* A memfd made with a single step, when the mapped copy could not be reused. */
static int memfd_step(struct hijack *h, struct load_ctx *c, struct load_state *st, char *err)
{
    uint64_t ret;
    if (remote_syscall(h, SYS_memfd_create, h->str[S_BASE], c->mfd_flags, 0, 0, 0, 0, &ret, err) < 0) {
        if (!h->sigsys) return -1;
        err[0] = 0;
        return memfd_result(h, c, st, 0, 1, err);
    }
    return memfd_result(h, c, st, (int64_t)ret, 0, err);
}

/* What a failed dlopen of the file id left mapped (glibc keeps its reservation of the
 * library's span when mapping a later segment fails, e.g. on a noexec mount): unmapped, so
 * that nothing of ours stays in the target. Only that file's mappings: its name is ours. */
static void unmap_leftovers(struct hijack *h, const struct fileid *id)
{
    char path[64], line[PATH_MAX + 128];
    unsigned long long lo[8], hi[8], ino;
    unsigned maj, min;
    int n = 0;
    FILE *f;
    if (!id || !id->ino) return;
    snprintf(path, sizeof path, "/proc/%d/task/%d/maps", (int)h->pid, (int)h->tid);
    if (!(f = fopen(path, "re"))) return;
    while (n < 8 && fgets(line, sizeof line, f))
        if (sscanf(line, "%llx-%llx %*s %*x %x:%x %llu", &lo[n], &hi[n], &maj, &min, &ino) == 5 && ino == id->ino &&
            maj == id->dev_major && min == id->dev_minor)
            n++;
    fclose(f);
    for (int i = 0; i < n && !h->exited; i++) {
        uint64_t ret;
        char ignored[MP_ERRLEN];
        remote_syscall(h, SYS_munmap, lo[i], hi[i] - lo[i], 0, 0, 0, 0, &ret, ignored);
        TRACE("unmapped a leftover of the failed dlopen");
    }
}

/* One final run: the pending closes, dlopen(path) (the soname with RTLD_NOLOAD when path is
 * NULL; then dlclose gives back the reference NOLOAD took: the copy keeps the one of whoever
 * loaded it), close(mfd), dlsym, start(arg). 1: started; 0: dlopen failed, with a note;
 * -1: error (st->handle set when the library got loaded). */
static int try_load(struct hijack *h, struct load_ctx *c, struct load_state *st, const char *path,
                    const struct fileid *id, char *note, size_t notelen, char *err)
{
    struct stub_data d;
    char msg[400];
    int n = 0, i_dl, i_mfd = -1, i_sym, i_start, noload = !path, mfd = path ? st->mfd : -1, nclose, ran;
    memset(&d, 0, sizeof d);
    if (path && procmem_write(h->tid, h->str[S_PATH], path, strlen(path) + 1) < 0) {
        snprintf(note, notelen, "writing to its memory: %s", strerror(errno));
        return 0;
    }
    while (st->nclose > STUB_CALLS - 4) remote_close(h, st->close[--st->nclose]);
    for (int i = 0; i < st->nclose; i++)
        d.call[n++] = (struct stub_call){.fn = SYS_close, .a = {(uint64_t)st->close[i]}, .flags = STUB_RAW};
    nclose = st->nclose;
    i_dl = n++;
    d.call[i_dl] = (struct stub_call){
        .fn = h->t->dlopen,
        .a = {h->str[noload ? S_BASE : S_PATH], h->t->dlopen_flags | (noload ? RTLD_NOLOAD_FLAG : 0)},
        .flags = STUB_STOP_ZERO};
    if (mfd >= 0) {
        i_mfd = n++;
        d.call[i_mfd] = (struct stub_call){.fn = SYS_close, .a = {(uint64_t)mfd}, .flags = STUB_RAW};
    }
    if (noload) d.call[n++] = (struct stub_call){.fn = h->t->dlclose, .flags = STUB_FROM(i_dl, 1)};
    i_sym = n++;
    d.call[i_sym] = (struct stub_call){.fn = h->t->dlsym, .a = {0, h->str[S_SYM]},
                                       .flags = STUB_FROM(i_dl, 1) | STUB_STOP_ZERO};
    i_start = n++;
    d.call[i_start] = (struct stub_call){.a = {h->str[S_ARG]}, .flags = STUB_FROM(i_sym, 0)};

    /* After a failed run (a crash, a timeout) its data block says what got done; where it
     * cannot be read, descriptors are left open rather than closing a number reused since. */
    ran = run_calls(h, &d, 1, "loading the agent", err) == 0 ||
          (!h->exited && h->scratch && procmem_read(h->tid, h->scratch + STUB_DATA_OFF, &d, sizeof d) == 0);
    st->nclose = 0;
    if (mfd >= 0 && (!ran || d.call[i_mfd].done)) st->mfd = -1;
    if (!ran) return -1;
    for (int i = 0; i < nclose; i++)
        if (!d.call[i].done) st->close[st->nclose++] = (int)d.call[i].a[0];
    if (d.call[i_dl].done && d.call[i_dl].ret) {
        st->handle = d.call[i_dl].ret;
        st->noload = noload;
    }
    /* its thread runs code of the library from here: only memprofd may unload it, once that has ended */
    st->started = d.call[i_start].done && d.call[i_start].ret == 0;
    if (err[0]) return -1;
    if (!d.call[i_dl].ret) {
        remote_close(h, st->mfd);
        st->mfd = -1;
        if (!noload) {
            unmap_leftovers(h, id);
            remote_dlerror(h, msg, sizeof msg);
            snprintf(note, notelen, "dlopen: %s", msg);
        }
        return 0;
    }
    if (!d.call[i_sym].ret) {
        mp_err(err, "pid %d: %s has no symbol %s", (int)h->pid, c->lb->base, c->sym);
        return -1;
    }
    c->res->start_rc = (int)(int32_t)d.call[i_start].ret;
    return 1;
}

/* dlclose(handle) on the hijacked thread, in a scratch page of its own when the load's is gone. */
static void unload_now(struct hijack *h, uint64_t handle)
{
    struct stub_data d;
    char ignored[MP_ERRLEN];
    memset(&d, 0, sizeof d);
    d.call[0] = (struct stub_call){.fn = h->t->dlclose, .a = {handle}};
    if (h->scratch || map_scratch(h, NULL, 0, ignored) == 0) run_calls(h, &d, 1, "dlclose", ignored);
}

/* Round trips while the thread is stopped: the scratch page (a single step), memfd_create
 * and socketpair (one run), then, with the library written into the memfd and our end of
 * the socket taken meanwhile, one run that closes, loads, starts and unmaps the page. */
static int do_load(struct hijack *h, void *vctx, char *err)
{
    struct load_ctx *c = vctx;
    struct inject_result *res = c->res;
    struct load_state *st;
    char arg[AGENT_ARG_ROOM], path[64];
    int r = 0, rc = -1;

    if (!(st = calloc(1, sizeof *st))) {
        mp_err(err, "out of memory");
        return -1;
    }
    st->mfd = st->tfd = -1;
    if (prepare(h, c, st, err) < 0) goto undo;
    if (st->why_sock[0]) snprintf(res->sock_note, sizeof res->sock_note, "%.290s", st->why_sock);
    if (st->tfd >= 0)
        snprintf(arg, sizeof arg, "%s fd=%d", c->arg, st->tfd);
    else
        snprintf(arg, sizeof arg, "%s", c->arg);
    if (procmem_write(h->tid, h->str[S_ARG], arg, strlen(arg) + 1) < 0) {
        mp_errno(err, "pid %d: writing to its memory", (int)h->pid);
        goto undo;
    }
    if (c->loaded) { /* a copy mapped already (left loaded, or memprof run's): reuse it by its soname */
        if ((r = try_load(h, c, st, NULL, NULL, st->why_memfd, sizeof st->why_memfd, err)) > 0)
            snprintf(res->how, sizeof res->how, "already loaded");
        else if (r == 0 && (st->mfd = memfd_step(h, c, st, err)) < 0 && err[0])
            goto undo;
    }
    if (r == 0 && !err[0] && st->mfd >= 0) {
        /* thread-self: /proc/self/fd is empty when the main thread has exited */
        snprintf(path, sizeof path, "/proc/thread-self/fd/%d", st->mfd);
        if ((r = try_load(h, c, st, path, &st->mfd_id, st->why_memfd, sizeof st->why_memfd, err)) > 0)
            snprintf(res->how, sizeof res->how, "memfd");
    }
    if (r == 0 && !err[0]) { /* the fallback: a private copy in the target's /tmp, removed right after dlopen */
        struct tmpcopy tc;
        char ierr[MP_ERRLEN];
        if (deliver_tmp_copy(h->tid, c->lb, &tc, ierr) < 0) {
            const char *why = ierr;
            int skip = 0;
            if (sscanf(ierr, "pid %*d: %n", &skip) == 0 && skip > 0) why += skip; /* said once, up front */
            snprintf(st->why_tmp, sizeof st->why_tmp, "%s", why);
        } else {
            r = try_load(h, c, st, tc.path, &tc.id, st->why_tmp, sizeof st->why_tmp, err);
            deliver_tmp_remove(&tc);
        }
        if (r > 0) snprintf(res->how, sizeof res->how, "a copy in its /tmp (memfd: %.200s)", st->why_memfd);
    }
    if (r <= 0) {
        if (!err[0])
            mp_err(err, "pid %d: cannot load %s: memfd: %.200s; copy in its /tmp: %.200s", (int)h->pid, c->lb->base,
                   st->why_memfd, st->why_tmp);
        goto undo;
    }
    res->handle = st->handle;
    if (res->start_rc != 0) { /* no thread started: the agent did not take its socket, nor needs the library */
        remote_close(h, st->tfd);
        if (res->sock_fd >= 0) close(res->sock_fd);
        res->sock_fd = -1;
        st->tfd = -1;
        if (!st->noload) unload_now(h, st->handle);
        res->handle = 0;
    }
    rc = 0;
    goto out;
undo:
    if (st->started) res->handle = st->handle; /* memprofd unloads it once the thread has ended */
    if (!h->exited) {
        for (int i = 0; i < st->nclose; i++) remote_close(h, st->close[i]);
        remote_close(h, st->mfd);
        if (!st->started) remote_close(h, st->tfd); /* else the agent's own now */
        if (st->handle && !st->noload && !st->started) unload_now(h, st->handle);
    }
    if (res->sock_fd >= 0) close(res->sock_fd); /* a started agent finds it closed and leaves */
    res->sock_fd = -1;
out:
    free(st);
    return rc;
}

/* Is a copy of the library (file name base, or a memfd named so) mapped in pid? */
static int lib_mapped(pid_t pid, const char *base)
{
    struct procmap *maps = NULL;
    int n = procmaps_read(proc_live_task(pid), &maps), found = 0;
    for (int i = 0; i < n && !found; i++) {
        const char *b = path_base(maps[i].path);
        if (!strncmp(b, "memfd:", 6)) b += 6;
        found = strcmp(b, base) == 0;
    }
    free(maps);
    return found;
}

/* MFD_EXEC is Linux >= 6.3's (an older kernel says EINVAL: then retried without). */
static unsigned memfd_flags(void)
{
    struct utsname u;
    int major = 0, minor = 0;
    if (uname(&u) == 0 && sscanf(u.release, "%d.%d", &major, &minor) == 2 && major * 100 + minor < 603)
        return MFD_CLOEXEC_FLAG;
    return MFD_CLOEXEC_FLAG | MFD_EXEC_FLAG;
}

int inject_load(pid_t pid, const char *lib_path, const char *start_sym, const char *arg, int flags,
                struct inject_result *res, char *err)
{
    struct libbytes lb;
    char argroom[AGENT_ARG_ROOM], pathroom[PATH_ROOM + 1];
    const char *strs[S_COUNT];
    struct load_ctx c = {&lb, start_sym, arg ? arg : "", flags, 0, memfd_flags(), res, -1, ""};
    int rc;

    memset(res, 0, sizeof *res);
    res->sock_fd = -1;
    if (lib_path[0] != '/') {
        mp_err(err, "agent library path must be absolute: %s", lib_path);
        return -1;
    }
    if (strlen(c.arg) + ARG_ROOM >= sizeof argroom) {
        mp_err(err, "injection argument too long");
        return -1;
    }
    if (deliver_read_lib(lib_path, &lb, err) < 0) return -1;
    c.loaded = lib_mapped(pid, lb.base);
    snprintf(argroom, sizeof argroom, "%s%*s", c.arg, ARG_ROOM, "");
    memset(pathroom, 'x', PATH_ROOM);
    pathroom[PATH_ROOM] = 0;
    strs[S_BASE] = lb.base;
    strs[S_SYM] = start_sym;
    strs[S_ARG] = argroom;
    strs[S_PATH] = pathroom;
    if (flags & INJECT_SOCKET) c.pidfd = deliver_pidfd(pid, c.why_pidfd);
    rc = with_thread(pid, strs, S_COUNT, do_load, &c, &res->stop_ms, &res->retries, err);
    if (c.pidfd >= 0) close(c.pidfd);
    deliver_free_lib(&lb);
    return rc;
}

static int do_unload(struct hijack *h, void *vctx, char *err)
{
    struct stub_data d;
    char msg[400];
    memset(&d, 0, sizeof d);
    d.call[0] = (struct stub_call){.fn = h->t->dlclose, .a = {*(uint64_t *)vctx}};
    if (run_calls(h, &d, 1, "dlclose", err) < 0) return -1;
    if ((int)d.call[0].ret != 0) {
        remote_dlerror(h, msg, sizeof msg);
        mp_err(err, "pid %d: dlclose failed in target: %s", (int)h->pid, msg);
        return -1;
    }
    return 0;
}

int inject_unload(pid_t pid, uint64_t handle, double *stop_ms, char *err)
{
    double ms = 0;
    int rc;
    if (!handle) {
        mp_err(err, "pid %d: no agent handle to unload", (int)pid);
        return -1;
    }
    rc = with_thread(pid, NULL, 0, do_unload, &handle, &ms, NULL, err);
    if (stop_ms) *stop_ms = ms;
    return rc;
}
