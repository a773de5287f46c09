/* rss.bpf.c -- memprof rss in the kernel: one process's page faults, mmap/munmap/mremap/brk and (--rss-stat)
 * rss_stat. Sampled faults and the mappings go into a ring buffer with the user stack and (CPython 3.11+) the
 * Python frames. Dual MIT/GPL: the kernel lends its tracing helpers only to GPL-compatible programs. */
#include "gen/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpf/rss.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

const volatile struct rss_cfg cfg = {};

/* Read by memprof rss (bss): */
__u64 events_lost;          /* ring buffer full */
/* --rss-stat: the target's RSS counters in pages (file, anon, swap, shmem: seeded from /proc by memprof rss),
 * and the highest file + anon + shmem since memprof rss last zeroed it */
__u64 rss_pages[RSS_NMEMBERS];
__u64 peak_pages;
__u64 target_mm;            /* the target's mm_struct, once one of its threads has been seen */

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

static __always_inline __u64 rd(__u64 addr)
{
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof v, (void *)addr);
    return v;
}


/* The Python walk runs in bpf_loop callbacks: the verifier checks each once, whatever the count. */
struct walk {
    __u64 ts, found, frame; /* frame: at first the thread state's current frame (3.13+) or cframe */
    __u32 tid, n;
};

/* A frame's or thread state's fields from one read of its first SPAN bytes (every version's frame back, code,
 * instruction pointer and owner, and thread state next, native thread id and frame lie there): a read of user
 * memory costs more than the bytes it copies. */
#define SPAN 192
#define SPAN_BUF 264 /* room for an 8-byte field at any offset & 255: the bound the verifier checks */

/* Per CPU, off the BPF stack: the event being built (then copied into the ring buffer) and the bytes of the thread
 * state or frame being read. The verifier allows 512 bytes of stack for a program and the bpf_loop callbacks it
 * runs together (the callback's frame counts on top of its caller's): a span on the stack in both the program and
 * a callback was 624 bytes, refused. */
struct scratch {
    struct rss_record rec;
    __u8 span[SPAN_BUF];
};
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct scratch);
} scratch SEC(".maps");

static __always_inline struct scratch *scratch_get(void)
{
    __u32 zero = 0;
    return bpf_map_lookup_elem(&scratch, &zero);
}
static __always_inline __u64 field(const __u8 *b, __s32 off, __u64 addr)
{
    __u64 v = 0;
    if (off >= 0 && off <= SPAN - 8) __builtin_memcpy(&v, b + (off & 255), 8);
    else if (off >= 0) v = rd(addr + off);
    return v;
}

/* The thread state at ts: 1 when it is the faulting thread's (w->found, w->frame set), else w->ts its next. */
static __always_inline int thread_is(struct walk *w, __u64 ts)
{
    struct scratch *s = scratch_get();
    __u8 *b;
    __s32 at = cfg.ts_current_frame >= 0 ? cfg.ts_current_frame : cfg.ts_cframe;
    if (!s) return w->ts = 0, 0;
    b = s->span;
    if (bpf_probe_read_user(b, SPAN, (void *)ts)) { /* at the very end of its mapping: field by field */
        if ((__u32)rd(ts + cfg.ts_native_tid) != w->tid) return w->ts = rd(ts + cfg.ts_next), 0;
        w->frame = rd(ts + at);
    } else {
        if ((__u32)field(b, cfg.ts_native_tid, ts) != w->tid) return w->ts = field(b, cfg.ts_next, ts), 0;
        w->frame = field(b, at, ts);
    }
    w->found = ts;
    return 1;
}

/* The faulting thread's PyThreadState: the interpreter's thread list, matched by native thread id. */
static long thread_step(__u32 i, void *c)
{
    struct walk *w = c;
    return !w->ts || thread_is(w, w->ts);
}

/* Each thread's PyThreadState once found (checked again by its thread id at every use): the list is walked
 * only for a thread not seen yet. */
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, RSS_MAX_THREADS);
    __type(key, __u32);
    __type(value, __u64);
} tstates SEC(".maps");

/* One _PyInterpreterFrame: its code object and instruction offset (Python frames only), then the caller's. */
static long frame_step(__u32 i, void *c)
{
    struct walk *w = c;
    struct scratch *s;
    struct rss_record *e;
    __u8 owner = 0, *b;
    __u64 code, instr, back;
    if (!w->frame || w->n >= RSS_MAX_PYFRAMES || !(s = scratch_get())) return 1;
    e = &s->rec;
    b = s->span;
    if (bpf_probe_read_user(b, SPAN, (void *)w->frame) == 0) {
        code = field(b, cfg.fr_code, w->frame);
        instr = field(b, cfg.fr_instr, w->frame);
        back = field(b, cfg.fr_back, w->frame);
        if (cfg.fr_owner >= 0 && cfg.fr_owner < SPAN) owner = b[cfg.fr_owner & 255];
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
    __u64 interp, *known;
    if (!cfg.runtime) return 0;
    if (cfg.pidns_ino) { /* a target in a container knows its threads by their ids there */
        if (bpf_get_ns_current_pid_tgid(cfg.pidns_dev, cfg.pidns_ino, &ns, sizeof ns)) return 0;
        w.tid = ns.pid;
    }
    if (!(known = bpf_map_lookup_elem(&tstates, &w.tid)) || !thread_is(&w, *known)) {
        if (!(interp = rd(cfg.runtime + cfg.rt_interp_head))) return 0;
        w.ts = rd(interp + cfg.interp_threads_head);
        bpf_loop(RSS_MAX_THREADS, thread_step, &w, 0);
        if (!w.found) return 0;
        bpf_map_update_elem(&tstates, &w.tid, &w.found, BPF_ANY);
    }
    if (cfg.ts_current_frame < 0) w.frame = rd(w.frame + cfg.cframe_current); /* 3.11, 3.12: via the cframe */
    bpf_loop(RSS_MAX_PYVISIT, frame_step, &w, 0);
    return (int)w.n;
}

/* memprof rss reads the buffer at least every 100 ms; it is woken early only when this much waits (once, as the
 * fill crosses it: a wakeup is an interrupt the faulting thread pays for) */
#define WAKE_AT (2 << 20)

static __always_inline void emit(void *ctx, __u32 kind, __u32 tid, __u64 addr, __u64 len, __u64 addr2, __u64 len2)
{
    __u32 npy;
    __s64 nstack;
    __u64 flags, size, avail;
    struct scratch *s = scratch_get();
    struct rss_record *e;
    if (!s) return;
    e = &s->rec;
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

/* A page fault of the target, one in sample_period: the kernel counts the target's threads' faults in per-thread
 * software perf events (memprof rss opens one per thread, inherited by the threads they start) and runs this on
 * the overflow. Nothing runs for the faults in between, nor for any other process's. */
SEC("perf_event")
int on_fault(struct bpf_perf_event_data *ctx)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    emit(ctx, RSS_FAULT, tid, ctx->addr, ctx->sample_period * RSS_PAGE, 0, 0);
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

/* --rss-stat: every change of the target's RSS counters (a tracepoint of every process's every page fault, so
 * the target's faults cost more: off by default). First known from its own threads, then by the mm itself, which
 * also catches changes made by others (reclaim, the exit of its last thread). */
SEC("tp_btf/rss_stat")
int on_rss_stat(__u64 *ctx)
{
    struct mm_struct *mm = (struct mm_struct *)ctx[0];
    __u32 m = (__u32)ctx[1];
    __u32 tid;
    __s64 pages = 0;
    __u64 total;
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
    rss_pages[m] = pages > 0 ? (__u64)pages : 0;
    total = rss_pages[RSS_FILE] + rss_pages[RSS_ANON] + rss_pages[RSS_SHMEM];
    if (total > peak_pages) peak_pages = total;
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
