"""memprof's IPython magics: %memit / %%memit, %mprun, %memprof_top."""
import json
import linecache
import inspect
import os
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from . import _agent

MiB = 1048576.0
REPORT_WAIT_S = 10.0  # for the agent's report (every 100 ms) to reach memprofd


def _rss():
    """(current RSS, peak RSS) in bytes, from /proc/self/status."""
    cur = peak = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def _rss_peak_reset():
    """Restart the kernel's peak-RSS counter (VmHWM) from the current RSS; False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemitResult:
    """What %memit -o returns (as memory_profiler's): peaks and increments, MiB, one per run."""

    def __init__(self, peaks, increments, rss_peaks, rss_increments, mode):
        self.mem_usage = peaks
        self.increments = increments
        self.peak = max(peaks)
        self.increment = max(increments)
        self.rss_peak = max(rss_peaks)
        self.rss_increment = max(rss_increments)
        self.mode = mode

    def __str__(self):
        return ("peak memory: %.2f MiB, increment: %.2f MiB  (tracked heap, %s; RSS: peak %.2f MiB, increment %.2f MiB)"
                % (self.peak, self.increment, self.mode, self.rss_peak, self.rss_increment))

    def _repr_pretty_(self, p, cycle):
        p.text("<MemitResult : " + str(self) + ">")


def _ensure():
    """The agent is running, or a UsageError that says why and how to retry."""
    if not _agent.state["started"]:
        why = _agent.state["error"] or "not started"
        raise UsageError("memprof is not running in this process (%s); fix it and run %%reload_ext memprof" % why)
    if not _agent.heap()[4]:
        raise UsageError("memprof was detached from this process (memprofd detach): attach again with "
                         "memprofd attach --pid %d, or restart the kernel" % os.getpid())


def _stacks(files):
    """What %mprun's report needs of this process's session: the frames in these files, the stacks through them and
    the total allocated (memprof mprun-data: the CLI leaves out the rest and the history, so the cost stays that of
    the profiled code, not of the session's age)."""
    args = ["mprun-data", "--pid", os.getpid()]
    for f in files:
        args += ["--file", f]
    rc, out, err = _agent.run_cli(*args, timeout=60)
    if rc != 0:
        raise UsageError(err.strip() or "memprof mprun-data failed")
    return json.loads(out)


def _stacks_after(files, allocated):
    """_stacks once memprofd has what the agent counted up to `allocated` bytes."""
    deadline = time.time() + REPORT_WAIT_S
    while True:
        d = _stacks(files)
        if d["totals"]["allocated"] >= allocated * 0.999999 or time.time() > deadline:
            return d
        time.sleep(0.05)


def _user_traceback(error):
    """The exception as raised by the user's statement: its traceback from the statement on, without this module's
    frames (the magic's plumbing is not where the user's error is)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return error.with_traceback(tb)


def _code_of(obj):
    obj = inspect.unwrap(obj)
    obj = getattr(obj, "__func__", obj)
    code = getattr(obj, "__code__", None)
    if code is None:
        raise UsageError("%r is not a Python function (no __code__)" % (obj,))
    return code


def _line_report(code, before, after, mode):
    """memprof's line report (the format of memprof lines / memprof run) of code over what
    happened between two exports of this process's session."""
    file, first = code.co_filename, code.co_firstlineno
    name = getattr(code, "co_qualname", code.co_name)  # as the frames name it (3.11+: qualified)
    src = linecache.getlines(file)  # IPython keeps cells here too
    end = first
    if src and first <= len(src):
        end = first + len(inspect.getblock(src[first - 1:])) - 1
    old = {s["id"]: s for s in before["stacks"]}
    frames = {f["id"]: f for f in after["frames"]}
    inc, occ = {}, {}
    for st in after["stacks"]:
        line = None
        for fid in st["frames"]:  # innermost first: the first frame in this function's lines
            f = frames.get(fid)
            if not f or f["file"] != file:
                continue
            if (f["function"] == name and f["first_line"] == first) or first <= f["first_line"] and f["line"] <= end:
                line = f["line"]  # its own lines, or a comprehension/lambda inside it (exact mode keeps one frame)
                break
        if line is None:
            continue
        b = old.get(st["id"], {"live": 0, "peak_live": 0, "alloc_bytes": 0, "alloc_count": 0})
        allocs = st["alloc_count"] - b["alloc_count"]
        if st["peak_live"] > b["peak_live"]:
            grew = st["peak_live"] - b["live"]  # a new peak: reached during the statement
        else:
            grew = min(st["alloc_bytes"] - b["alloc_bytes"], max(0.0, b["peak_live"] - b["live"]))
        if allocs <= 0 and grew <= 0:
            continue
        inc[line] = inc.get(line, 0.0) + max(0.0, grew)
        occ[line] = occ.get(line, 0.0) + allocs
    start = first
    end = max([end] + list(inc))
    out = ["Filename: %s  (function %s, pid %d, %s mode: %s; Increment = the line's peak held memory during the statement)"
           % (file, name, os.getpid(), mode, "exact counts" if mode == "exact" else "sampled estimates"), "",
           "Line #    Mem usage    Increment  Occurrences   Line Contents",
           "============================================================="]
    run = 0.0
    for l in range(start, end + 1):
        text = src[l - 1].rstrip("\r\n") if src and l <= len(src) else ""
        if l in inc or l in occ:
            run += inc.get(l, 0.0)
            out.append("%6u %9.1f MiB %9.1f MiB %12.0f   %s" % (l, run / MiB, inc.get(l, 0.0) / MiB, occ.get(l, 0), text))
        else:
            out.append("%6u %12s %12s %12s   %s" % (l, "", "", "", text))
    if not src:
        out.append("")
        out.append("(source of %s not found, in the file nor in linecache)" % file)
    elif not inc:
        out.append("")
        out.append("(no allocations recorded in %s during the statement%s)" % (name, "" if mode == "exact" else " at this sample rate"))
    return "\n".join(out) + "\n"


@magics_class
class MemprofMagics(Magics):
    def _exec(self, src, ns):
        code = self.shell.transform_cell(src)
        exec(compile(code, "<memprof>", "exec"), ns)

    @line_cell_magic
    def memit(self, line="", cell=None):
        """Peak memory and increment of a statement, from memprof's tracked heap.

        %memit [-r N] [-i] [-t T] [-c] [-q] [-o] statement
        %%memit [options] [setup]      (the cell is measured; the rest of the line runs first, untimed)

        -r N: run N times (default 1) and report the largest; -q: quiet;
        -o: return a MemitResult. -i, -t and -c are accepted for memory_profiler's
        sake: the heap is tracked, not polled, so there is no interval or timeout,
        and child processes are not counted.
        """
        _ensure()
        opts, stmt = self.parse_options(line, "r:t:i:cqo", posix=False, strict=False)
        try:
            repeat = int(getattr(opts, "r", 1))
        except ValueError:
            raise UsageError("%%memit -r: a number of runs, not %r" % opts.r)
        if repeat < 1:
            raise UsageError("%memit -r: at least 1 run")
        ns = self.shell.user_ns
        if cell is not None:
            if stmt.strip():
                self._exec(stmt, ns)
            stmt = cell
        if not stmt.strip():
            raise UsageError("usage: %memit [-r N] statement   (e.g. %memit [0] * 10**7)")
        import gc
        gc.collect()  # as memory_profiler: garbage freed during the statement would blur the baseline
        peaks, incs, rpeaks, rincs = [], [], [], []
        error = None
        for _ in range(repeat):
            live0 = _agent.heap()[0]
            rss0 = _rss()[0]
            hwm_ok = _rss_peak_reset()
            _agent.peak_reset()
            try:
                self._exec(stmt, ns)
            except BaseException as e:  # report what it held until then, then the exception
                error = e
            live, peak = _agent.heap()[:2]
            rss, hwm = _rss()
            rpeak = hwm if hwm_ok else max(rss0, rss)
            peaks.append(peak / MiB)
            incs.append(max(0.0, peak - live0) / MiB)
            rpeaks.append(rpeak / MiB)
            rincs.append(max(0, rpeak - rss0) / MiB)
            if error is not None:
                break
        result = MemitResult(peaks, incs, rpeaks, rincs, _agent.session_mode())
        if "q" not in opts:
            print(result)
        if error is not None:
            __tracebackhide__ = True  # IPython shows the user's statement's frames, not this one
            raise _user_traceback(error)
        if "o" in opts:
            return result

    @line_magic
    def mprun(self, parameter_s=""):
        """Line-by-line memory report of functions while a statement runs, as memory_profiler's.

        %mprun -f func [-f func2 ...] [-T FILE] [-r] [-q] statement

        -f func: report this function (an expression evaluating to it; repeatable;
        functions defined in cells work); -T FILE: also write the report to FILE;
        -r: return the report text; -q: do not print it. If the statement raises,
        the report is shown, then the exception.
        """
        _ensure()
        opts, stmt = self.parse_options(parameter_s, "rqf:T:c", list_all=True, posix=False, strict=False)
        names = getattr(opts, "f", [])
        if not names:
            raise UsageError("%mprun needs -f FUNCTION: the function(s) to report, e.g. %mprun -f f f()")
        if not stmt.strip():
            raise UsageError("%mprun needs a statement to run, e.g. %mprun -f f f()")
        ns = self.shell.user_ns
        codes = []
        for n in names:
            try:
                obj = eval(n, ns, ns)
            except Exception as e:
                raise UsageError("%%mprun: could not find function %r (%s: %s)" % (n, type(e).__name__, e))
            codes.append(_code_of(obj))
        files = sorted({c.co_filename for c in codes})
        before = _stacks(files)
        error = None
        try:
            self._exec(stmt, ns)
        except BaseException as e:
            error = e
        allocated = _agent.heap()[2]
        after = _stacks_after(files, allocated)
        text = "\n".join(_line_report(c, before, after, after.get("mode", "exact")) for c in codes)
        before = after = None  # the traceback of an error keeps this frame: not the session's data with it
        tfile = getattr(opts, "T", [None])[0]
        if tfile:
            with open(tfile, "w") as f:
                f.write(text)
            print("\n*** Profile printout saved to text file %s. " % tfile)
        if "q" not in opts:
            if self.shell.__class__.__name__ == "TerminalInteractiveShell":
                from IPython.core import page
                page.page(text)
            else:
                print(text, end="")
        if error is not None:
            __tracebackhide__ = True  # IPython shows the user's statement's frames, not this one
            raise _user_traceback(error)
        if "r" in opts:
            return text

    @line_magic
    def memprof_top(self, parameter_s=""):
        """A one-shot `memprof top` of this process: %memprof_top [--by function|line] [--limit N]"""
        _ensure()
        args = parameter_s.split()
        if "--by" not in args:
            args = ["--by", "line"] + args
        rc, out, err = _agent.run_cli("top", "--pid", os.getpid(), "--once", *args)
        if rc != 0:
            raise UsageError(err.strip() or "memprof top failed")
        print(out, end="")
