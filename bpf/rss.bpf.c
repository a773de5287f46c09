/* rss.bpf.c -- memprof rss in the kernel: one process's page faults, mmap/munmap/mremap/brk and rss_stat.
 * Sampled faults and the mappings go into a ring buffer with the user stack and (CPython 3.11+) the Python
 * frames. GPL: the kernel lends its tracing helpers only to GPL-compatible programs. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "rss.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct rss_cfg cfg = {};

/* Read by memprof rss (bss): */
__u64 events_lost;          /* ring buffer full */
__u64 rss[RSS_NMEMBERS];    /* bytes per rss_stat member, as last reported */
__u64 rss_seen[RSS_NMEMBERS]; /* 1: rss[m] holds a value */
__u64 target_mm;            /* the target's mm_struct, once one of its threads has been seen */
__s64 last_pages[RSS_NMEMBERS]; /* rss_stat's count when last seen */

/* every page fault of the target, counted per CPU (no locked add on the fault path), and the last one's
 * thread and address (rss_stat, which comes during the fault, has no address) */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rss_fault_cpu);
} faults SEC(".maps");

/* Linux before 6.2: rss_stat reported the count itself, and an mm's counters were a struct mm_rss_stat */
struct mm_rss_stat___old {
    long count[RSS_NMEMBERS];
} __attribute__((preserve_access_index));

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 8 << 20);
} events SEC(".maps");

struct sys_args {
    __u64 a0, a1, a2;
};
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u32);
    __type(value, struct sys_args);
} inflight SEC(".maps");

static __always_inline int is_target(__u32 *tid)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct bpf_pidns_info ns;
    *tid = (__u32)id;
    if (!cfg.matchns_ino) return (id >> 32) == cfg.tgid;
    /* the helper answers only for a task's own pid namespace: the target's, with its pid there */
    return !bpf_get_ns_current_pid_tgid(cfg.matchns_dev, cfg.matchns_ino, &ns, sizeof ns) && ns.tgid == cfg.ns_tgid;
}

static __always_inline __u64 current_mm(void)
{
    return (__u64)bpf_get_current_task_btf()->mm;
}

/* The hot path: every page fault of every process runs this. In the initial pid namespace one compare; in a
 * container, others are told apart by their mm, and the namespace helper runs only for the target's. */
static __always_inline int is_target_fast(__u32 *tid)
{
    __u64 mm;
    if (!cfg.matchns_ino) {
        __u64 id = bpf_get_current_pid_tgid();
        *tid = (__u32)id;
        return (id >> 32) == cfg.tgid;
    }
    mm = current_mm();
    if (target_mm && mm != target_mm) return 0;
    if (!is_target(tid)) return 0;
    target_mm = mm;
    return 1;
}

static __always_inline __u64 rd(__u64 addr)
{
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof v, (void *)addr);
    return v;
}

/* The event is built here (too big for the BPF stack), then copied into the ring buffer. */
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct rss_record);
} scratch SEC(".maps");

/* The Python walk runs in bpf_loop callbacks: the verifier checks each once, whatever the count. */
struct walk {
    __u64 ts, found, frame;
    __u32 tid, n;
};

/* The faulting thread's PyThreadState: the interpreter's thread list, matched by native thread id. */
static long thread_step(__u32 i, void *c)
{
    struct walk *w = c;
    if (!w->ts) return 1;
    if ((__u32)rd(w->ts + cfg.ts_native_tid) == w->tid) {
        w->found = w->ts;
        return 1;
    }
    w->ts = rd(w->ts + cfg.ts_next);
    return 0;
}

/* A frame's fields, from one read of its first FRAME_SPAN bytes (every version's back, code, instruction pointer
 * and owner lie there): a read of user memory costs more than the bytes it copies. */
#define FRAME_SPAN 80
#define FRAME_BUF 136 /* room for a read at any offset & 127: the bound the verifier checks */
static __always_inline __u64 field(const __u8 *b, __s32 off, __u64 addr)
{
    __u64 v = 0;
    if (off >= 0 && off <= FRAME_SPAN - 8) __builtin_memcpy(&v, b + (off & 127), 8);
    else if (off >= 0) v = rd(addr + off);
    return v;
}

/* One _PyInterpreterFrame: its code object and instruction offset (Python frames only), then the caller's. */
static long frame_step(__u32 i, void *c)
{
    struct walk *w = c;
    __u32 zero = 0;
    struct rss_record *e;
    __u8 owner = 0, b[FRAME_BUF] = {};
    __u64 code, instr, back;
    if (!w->frame || w->n >= RSS_MAX_PYFRAMES || !(e = bpf_map_lookup_elem(&scratch, &zero))) return 1;
    if (bpf_probe_read_user(b, FRAME_SPAN, (void *)w->frame) == 0) {
        code = field(b, cfg.fr_code, w->frame);
        instr = field(b, cfg.fr_instr, w->frame);
        back = field(b, cfg.fr_back, w->frame);
        if (cfg.fr_owner >= 0 && cfg.fr_owner < FRAME_SPAN) owner = b[cfg.fr_owner & 127];
    } else { /* a frame at the very end of its mapping: field by field */
        code = rd(w->frame + cfg.fr_code);
        instr = rd(w->frame + cfg.fr_instr);
        back = rd(w->frame + cfg.fr_back);
        if (cfg.fr_owner >= 0) bpf_probe_read_user(&owner, 1, (void *)(w->frame + cfg.fr_owner));
    }
    code &= ~cfg.exec_tag;
    if (code && owner < cfg.first_not_python) {
        e->v[2 * (w->n & (RSS_MAX_PYFRAMES - 1))] = code;
        e->v[2 * (w->n & (RSS_MAX_PYFRAMES - 1)) + 1] = instr - (code + cfg.code_adaptive);
        w->n++;
    }
    w->frame = back;
    return 0;
}

static __always_inline int py_walk(__u32 tid)
{
    struct walk w = {.tid = tid};
    struct bpf_pidns_info ns;
    __u64 interp;
    if (!cfg.runtime || !(interp = rd(cfg.runtime + cfg.rt_interp_head))) return 0;
    if (cfg.pidns_ino) { /* a target in a container knows its threads by their ids there */
        if (bpf_get_ns_current_pid_tgid(cfg.pidns_dev, cfg.pidns_ino, &ns, sizeof ns)) return 0;
        w.tid = ns.pid;
    }
    w.ts = rd(interp + cfg.interp_threads_head);
    bpf_loop(RSS_MAX_THREADS, thread_step, &w, 0);
    if (!w.found) return 0;
    if (cfg.ts_current_frame >= 0)
        w.frame = rd(w.found + cfg.ts_current_frame);
    else
        w.frame = rd(rd(w.found + cfg.ts_cframe) + cfg.cframe_current);
    bpf_loop(RSS_MAX_PYVISIT, frame_step, &w, 0);
    return (int)w.n;
}

/* memprof rss reads the buffer at least every 100 ms; it is woken early only when this much waits (once, as the
 * fill crosses it: a wakeup is an interrupt the faulting thread pays for) */
#define WAKE_AT (2 << 20)

static __always_inline void emit(void *ctx, __u32 kind, __u32 tid, __u64 addr, __u64 len, __u64 addr2, __u64 len2)
{
    __u32 zero = 0, npy;
    __s64 nstack;
    __u64 flags, size, avail;
    struct rss_record *e = bpf_map_lookup_elem(&scratch, &zero);
    if (!e) return;
    e->kind = kind;
    e->tid = tid;
    e->ts = bpf_ktime_get_ns();
    e->addr = addr;
    e->len = len;
    e->addr2 = addr2;
    e->len2 = len2;
    npy = (__u32)py_walk(tid);
    if (npy > RSS_MAX_PYFRAMES) npy = RSS_MAX_PYFRAMES;
    nstack = bpf_get_stack(ctx, &e->v[2 * npy], RSS_MAX_STACK * 8, BPF_F_USER_STACK);
    if (nstack < 0) nstack = 0;
    if (nstack > RSS_MAX_STACK * 8) nstack = RSS_MAX_STACK * 8;
    e->npy = (__s32)npy;
    e->nstack = (__s32)nstack;
    size = __builtin_offsetof(struct rss_record, v) + 16 * npy + (__u64)nstack;
    if (size > sizeof *e) return;
    avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
    flags = avail < WAKE_AT && avail + size >= WAKE_AT ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
    if (bpf_ringbuf_output(&events, e, size, flags)) __sync_fetch_and_add(&events_lost, 1);
}

/* BTF-typed (raw) tracepoints for the two that fire on every page fault of the machine: the classic ones build
 * a perf record for each call before the program runs, which cost the target a quarter of its faulting time. */
SEC("tp_btf/page_fault_user")
int BPF_PROG(on_fault, unsigned long address, struct pt_regs *regs, unsigned long error_code)
{
    __u32 tid, zero = 0;
    __u32 every = cfg.sample_every ? cfg.sample_every : 1;
    struct rss_fault_cpu *f;
    if (!is_target_fast(&tid)) return 0;
    if ((f = bpf_map_lookup_elem(&faults, &zero))) {
        f->n++;
        f->addr = address;
        f->tid = tid;
    }
    if (every > 1 && bpf_get_prandom_u32() % every) return 0; /* at random: no aliasing with a loop's stride */
    emit(ctx, RSS_FAULT, tid, address, (__u64)every * RSS_PAGE, 0, 0);
    return 0;
}

/* nargs: a syscall tracepoint's record has only its own arguments (reading past them fails the attach) */
static __always_inline int enter(struct trace_event_raw_sys_enter *ctx, int nargs)
{
    __u32 tid;
    struct sys_args a = {};
    if (!is_target(&tid)) return 0;
    a.a0 = ctx->args[0];
    if (nargs > 1) a.a1 = ctx->args[1];
    if (nargs > 2) a.a2 = ctx->args[2];
    bpf_map_update_elem(&inflight, &tid, &a, BPF_ANY);
    return 0;
}

/* The syscall's arguments saved at entry, when it succeeded (ret not an -errno). */
static __always_inline struct sys_args *exited(struct trace_event_raw_sys_exit *ctx, __u32 *tid)
{
    struct sys_args *a;
    if (!is_target(tid)) return 0;
    a = bpf_map_lookup_elem(&inflight, tid);
    if (!a) return 0;
    if (ctx->ret < 0 && ctx->ret > -4096) {
        bpf_map_delete_elem(&inflight, tid);
        return 0;
    }
    return a;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int on_mmap_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 2); }
SEC("tracepoint/syscalls/sys_enter_munmap")
int on_munmap_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 2); }
SEC("tracepoint/syscalls/sys_enter_mremap")
int on_mremap_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 3); }
SEC("tracepoint/syscalls/sys_enter_brk")
int on_brk_enter(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, 1); }

SEC("tracepoint/syscalls/sys_exit_mmap")
int on_mmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    emit(ctx, RSS_MMAP, tid, (__u64)ctx->ret, a->a1, 0, 0);
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_munmap")
int on_munmap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    emit(ctx, RSS_MUNMAP, tid, a->a0, a->a1, 0, 0);
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_mremap")
int on_mremap_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    emit(ctx, RSS_MREMAP, tid, a->a0, a->a1, (__u64)ctx->ret, a->a2);
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

SEC("tracepoint/syscalls/sys_exit_brk")
int on_brk_exit(struct trace_event_raw_sys_exit *ctx)
{
    __u32 tid;
    struct sys_args *a = exited(ctx, &tid);
    if (!a) return 0;
    if (a->a0) emit(ctx, RSS_BRK, tid, a->a0, 0, (__u64)ctx->ret, 0); /* brk(0) only asks */
    bpf_map_delete_elem(&inflight, &tid);
    return 0;
}

/* RSS counters of the target's mm: first known from its own threads, then by the mm itself, which also
 * catches changes made by others (reclaim, the exit of its last thread). */
SEC("tp_btf/rss_stat")
int on_rss_stat(__u64 *ctx)
{
    struct mm_struct *mm = (struct mm_struct *)ctx[0];
    __u32 m = (__u32)ctx[1];
    __u32 tid;
    __s64 pages = 0;
    if (!target_mm) {
        if ((__u64)mm != current_mm() || !is_target(&tid)) return 0;
        target_mm = (__u64)mm;
    } else if ((__u64)mm != target_mm) {
        return 0;
    }
    if (m >= RSS_NMEMBERS) return 0;
    if (bpf_core_type_exists(struct mm_rss_stat___old)) {
        pages = (__s64)ctx[2]; /* (mm, member, count) */
    } else {
        /* (mm, member): the counter is a percpu_counter; its count is what /proc/PID/status reads (the
         * index a constant: the verifier takes no variable offset into a kernel object) */
        switch (m) {
        case RSS_FILE: pages = mm->rss_stat[RSS_FILE].count; break;
        case RSS_ANON: pages = mm->rss_stat[RSS_ANON].count; break;
        case RSS_SWAP: pages = mm->rss_stat[RSS_SWAP].count; break;
        default: pages = mm->rss_stat[RSS_SHMEM].count; break;
        }
    }
    m &= RSS_NMEMBERS - 1; /* a power of two: the verifier sees the bound the compiler may have dropped */
    /* A transparent huge page mapped by a fault of the target (numpy asks for them for its big arrays): one
     * page_fault_user, weighed as a small page, brought in huge_bytes. The counter moves by the huge page at once
     * (a per-CPU batch of small pages moves it by at most 2 x 64 pages on up to 128 CPUs), during the fault, in the
     * faulting thread: recorded here, every one, at its size. */
    if (cfg.huge_bytes && m != RSS_SWAP && rss_seen[m] && (__u64)mm == current_mm() &&
        pages - last_pages[m] >= (__s64)(cfg.huge_bytes / RSS_PAGE / 2)) {
        __u32 zero = 0;
        struct rss_fault_cpu *f = bpf_map_lookup_elem(&faults, &zero);
        tid = (__u32)bpf_get_current_pid_tgid();
        emit(ctx, RSS_FAULT, tid, f && f->tid == tid ? f->addr : 0, cfg.huge_bytes, 0, 0);
    }
    last_pages[m] = pages;
    rss[m] = pages > 0 ? (__u64)pages * RSS_PAGE : 0;
    rss_seen[m] = 1;
    return 0;
}

/* The target execs: a new mm. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
    __u32 tid;
    if (target_mm && is_target(&tid)) target_mm = current_mm();
    return 0;
}
