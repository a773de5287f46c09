"""bench_objects.py -- part of `make bench` (exec'd by bench.py): object census and
growth diff GIL hold time in the target vs objgraph in-process on the same heap,
and chain/backrefs vs objgraph's find_backref_chain/show_backrefs."""
import json
import os
import re
import statistics
import subprocess


def _memprof(*args):
    r = subprocess.run([os.path.join(BUILD, "memprof")] + [str(a) for a in args], capture_output=True, text=True,
                       env=ENV, timeout=600)
    if r.returncode != 0:
        raise SystemExit("bench: memprof %s failed: %s" % (args[0], r.stderr))
    return r.stdout


def _objgraph(n):
    if not HAVE_PEERS:
        return None, None
    out = subprocess.run([PY, os.path.join(PEERS, "objgraph_census.py"), str(n)], capture_output=True, text=True,
                         timeout=900).stdout
    m = re.search(r"census ([\d.]+) s, growth diff ([\d.]+) s", out)
    return (float(m.group(1)) * 1000, float(m.group(2)) * 1000) if m else (None, None)


def census_vs_objgraph(n):
    p = start_target([PY, "-u", os.path.join(WORKLOADS, "heap_census.py"), str(n)])
    try:
        subprocess.run([os.path.join(BUILD, "memprofd"), "attach", "--pid", str(p.pid), "--no-track"], env=ENV,
                       check=True, capture_output=True)
        replies = [json.loads(_memprof("types", "--pid", p.pid, "--json")) for _ in range(5)]
        census = [r["gil_ms"] for r in replies]
        slices = [r["gil_max_cpu_ms"] for r in replies]
        growth = []
        for line in _memprof("growth", "--pid", p.pid, "--interval", "1", "--count", "3", "--json").splitlines():
            growth.append(json.loads(line)["gil_ms"])
        subprocess.run([os.path.join(BUILD, "memprofd"), "detach", "--pid", str(p.pid)], env=ENV, capture_output=True)
    finally:
        stop_target(p)
    og_census, og_growth = _objgraph(n)
    c, g = statistics.median(census), statistics.median(growth[1:] or growth)
    row("census of %s objects: GIL held in target (median of 5)" % format(n, ","), "%.0f ms" % c,
        "%.0f ms" % og_census if og_census else "n/a", "objgraph.show_most_common_types in-process")
    row("census of %s objects: longest GIL slice, CPU time (median of 5)" % format(n, ","),
        "%.1f ms" % statistics.median(slices), "%.0f ms" % og_census if og_census else "n/a",
        "objgraph holds it throughout")
    row("growth diff on %s objects (median)" % format(n, ","), "%.0f ms" % g,
        "%.0f ms" % og_growth if og_growth else "n/a", "objgraph.show_growth in-process")
    if og_census:
        row("→ census speed-up over objgraph (%s)" % format(n, ","), "%.0fx" % (og_census / c), "", "")


def chain_vs_objgraph(n):
    harness = os.path.join(os.path.dirname(BUILD), "tests", "objects")
    subprocess.run(["make", "-s", "-C", harness], check=True, capture_output=True)
    out = subprocess.run([PY, os.path.join(harness, "bench_chain.py"), str(n)], capture_output=True, text=True,
                         timeout=900).stdout
    ours = dict(re.findall(r"memprof (\w+): ([\d.]+) ms", out))
    peer = dict(re.findall(r"objgraph (\w+): ([\d.]+) ms", out))
    if "chain" in ours:
        row("chain on %s objects (GIL held)" % format(n, ","), "%.0f ms" % float(ours["chain"]),
            "%.0f ms" % float(peer["find_backref_chain"]) if "find_backref_chain" in peer else "n/a",
            "objgraph.find_backref_chain")
    if "backrefs" in ours:
        row("backrefs graph, depth 3, %s objects" % format(n, ","), "%.0f ms" % float(ours["backrefs"]),
            "%.0f ms" % float(peer["show_backrefs"]) if "show_backrefs" in peer else "n/a", "objgraph.show_backrefs")


census_vs_objgraph(1000000)
census_vs_objgraph(5000000)
chain_vs_objgraph(2000000)
