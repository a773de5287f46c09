/* rss.h -- what rss.bpf.c and memprof rss share: the configuration and the ring buffer's event records. */
#ifndef MEMPROF_RSS_H
#define MEMPROF_RSS_H

#define RSS_MAX_STACK 8    /* native frames per event (bpf_get_stack, frame pointers): a row keeps 8 */
#define RSS_MAX_PYFRAMES 32 /* Python frames kept per event, innermost first */
#define RSS_MAX_PYVISIT 256 /* interpreter frames walked (bpf_loop: the verifier checks one step) */
#define RSS_MAX_THREADS 1024 /* thread states looked at to find the faulting thread's (bpf_loop) */
#define RSS_PAGE 4096

enum rss_kind { RSS_FAULT = 1, RSS_MMAP, RSS_MUNMAP, RSS_MREMAP, RSS_BRK };
/* rss_stat's members (enum in include/linux/mm_types_task.h) */
enum { RSS_FILE, RSS_ANON, RSS_SWAP, RSS_SHMEM, RSS_NMEMBERS };

/* Set by memprof rss before loading (read-only to the programs). Offsets of -1: that
 * field does not exist in this interpreter; runtime 0: no Python line. */
struct rss_cfg {
    __u32 tgid;
    __u32 sample_every;        /* one page fault in about this many is recorded (the perf events' period) */
    __u64 pidns_dev, pidns_ino; /* the target's pid namespace: thread ids as its PyThreadStates have them */
    /* memprof not in the initial pid namespace (a container): tgid is a pid of its namespace, which the programs
     * cannot translate; the target is matched in its own namespace instead, by its pid there (ns_tgid) */
    __u64 matchns_dev, matchns_ino;
    __u32 ns_tgid;
    __u64 runtime;             /* address of _PyRuntime in the target */
    __u64 exec_tag;            /* bits to clear from a frame's code pointer (3.14+) */
    __s32 rt_interp_head, interp_threads_head, ts_next, ts_native_tid;
    __s32 ts_cframe, cframe_current, ts_current_frame;
    __s32 fr_back, fr_code, fr_instr, fr_owner, first_not_python, code_adaptive;
};

/* An event as the ring buffer carries it: the header, then npy (code object, instruction offset) pairs, then
 * nstack bytes of native return addresses -- only what was found (a full record is 5x what a typical one uses,
 * and the copy and the buffer's room are the target's cost). */
#define RSS_RECORD_WORDS (2 * RSS_MAX_PYFRAMES + RSS_MAX_STACK)
struct rss_record {
    __u32 kind, tid;
    __u64 ts, addr, len, addr2, len2;
    __s32 nstack, npy;
    __u64 v[RSS_RECORD_WORDS];
};

/* The same, unpacked by memprof rss. */
struct rss_event {
    __u32 kind;      /* enum rss_kind */
    __u32 tid;
    __u64 ts;        /* bpf_ktime_get_ns */
    __u64 addr;      /* fault address; mapping start (munmap, mremap: the old one) */
    __u64 len;       /* bytes: fault weight (the period in effect, in 4 KiB pages); mapped or unmapped length */
    __u64 addr2;     /* mremap: new address; brk: the new break */
    __u64 len2;      /* mremap: new length */
    __s32 nstack;    /* bytes of stack (bpf_get_stack) */
    __s32 npy;       /* Python frames, innermost first */
    __u64 stack[RSS_MAX_STACK];
    __u64 pycode[RSS_MAX_PYFRAMES];  /* code object */
    __s64 pyoff[RSS_MAX_PYFRAMES];   /* byte offset of the instruction in co_code_adaptive */
};

#endif
