"""Identity in every output: real targets placed in cgroups named as Kubernetes names a pod's (both cgroup drivers), with
the kubelet's HOSTNAME and POD_NAMESPACE, or with the service account's namespace file in a root of their own (a mount
namespace with its own /run, the kubelet's ..data symlinks); memprof status/ps, /metrics (read by promtool), the pprof
comments (go tool pprof), /debug/pprof/?format=json and /debug/pprof/targets (read by a real Prometheus's HTTP SD) carry
them; a symlink that leads out of the target's root is not followed."""
import gzip
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import default_python, target_script, workload
from test_http import hd, prometheus, promtool  # noqa: F401 (hd: a fixture)
from test_watch import WATCHED, attached, cgroup_root, marker, remove_cgroups, session_of, start_daemon, wait_until

POD_NAME = "web-7d4b9-xk2lp"


@pytest.fixture
def pod_cgroup():
    """pod_cgroup(pid, driver) moves pid into a fresh cgroup named as the kubelet names a container's in a pod
    (systemd driver: kubepods-burstable-pod<UID_WITH_UNDERSCORES>.slice/cri-containerd-<ID>.scope; cgroupfs:
    kubepods/burstable/pod<UID>/<ID>); returns (pod uid, container id). The cgroups are removed afterwards (this
    fixture is asked for before targets: its teardown runs once they are killed)."""
    root = cgroup_root()
    made = []

    def place(pid, driver="systemd"):
        pod_uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
        parent = os.path.join(root, "memprof-test-%s" % cid[:8])
        if driver == "systemd":
            dirs = [parent, os.path.join(parent, "kubepods-burstable-pod%s.slice" % pod_uid.replace("-", "_"))]
            dirs.append(os.path.join(dirs[-1], "cri-containerd-%s.scope" % cid))
        else:
            dirs = [parent, os.path.join(parent, "kubepods"), os.path.join(parent, "kubepods", "burstable")]
            dirs += [os.path.join(dirs[-1], "pod" + pod_uid)]
            dirs.append(os.path.join(dirs[-1], cid))
        os.makedirs(dirs[-1])
        made.extend(reversed(dirs))
        with open(os.path.join(dirs[-1], "cgroup.procs"), "w") as f:
            f.write(str(pid))
        return pod_uid, cid

    yield place
    remove_cgroups(made)


def row(table, pid):
    """The row of pid in memprof status's or ps's table (its ID or PID column)."""
    rows = [l for l in table.splitlines() if re.match(r"^(\d+\s+)?%d\s" % pid, l)]
    assert len(rows) == 1, table
    return rows[0]


def by_pid(entries):
    return {e["pid"]: e for e in entries}


def test_pod_identity_in_status_metrics_pprof_and_listings(pod_cgroup, targets, hd, tmp_path):
    """A service in a pod (HOSTNAME and POD_NAMESPACE as the kubelet and the downward API set them) and a process
    of the host with a HOSTNAME too (not a pod's name: it is in no pod): every output names the first's container,
    pod and namespace, and none for the second."""
    env = dict(os.environ, HOSTNAME=POD_NAME, POD_NAMESPACE="shop")
    t = targets.start([default_python(), workload("service.py"), "2", "0"], env=env)
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    pod_uid, cid = pod_cgroup(pid)
    h = targets.start([default_python(), target_script("idle.py")], env=dict(os.environ, HOSTNAME="buildhost"))
    hpid = int(h.wait_for(r"ready (\d+)").group(1))
    hd.attach(pid, "--sample-rate", "16384")
    hd.attach(hpid)
    t.wait_for("beat 2")
    cid = cid[:12]
    want = {"container_id": cid, "pod": POD_NAME, "namespace": "shop", "pod_uid": pod_uid}
    none = {"container_id": "", "pod": "", "namespace": "", "pod_uid": ""}

    # memprof status and ps, JSON and text
    for cmd in ("status", "ps"):
        r = hd.run(cmd, "--json")
        assert r.returncode == 0, r.stderr
        got = by_pid(json.loads(r.stdout))
        assert {k: got[pid][k] for k in want} == want, got[pid]
        assert {k: got[hpid][k] for k in want} == none, got[hpid]
        text = hd.run(cmd).stdout
        assert "[container %s, pod shop/%s] " % (cid, POD_NAME) in row(text, pid), text
        assert "[container" not in row(text, hpid) and "pod" not in row(text, hpid), text

    # /metrics: the descriptive labels once, the numeric series keyed by pid and container; promtool accepts it
    status, body, _ = hd.get("/metrics")
    assert status == 200
    text = body.decode()
    r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    info = [l for l in text.splitlines() if l.startswith("memprof_process_info{")]
    assert ('memprof_process_info{pid="%d",container="%s",pod="%s",namespace="shop",python="' % (pid, cid, POD_NAME)
            in "\n".join(info)), info
    assert [l for l in info if l.startswith('memprof_process_info{pid="%d",container="",python="' % hpid)], info
    for name in ("memprof_process_rss_bytes", "memprof_tracked_live_bytes", "memprof_samples_total"):
        assert re.search(r'^%s\{pid="%d",container="%s"\} ' % (name, pid, cid), text, re.M), name
        assert re.search(r'^%s\{pid="%d",container=""\} ' % (name, hpid), text, re.M), name
    assert re.search(r'^memprof_site_live_bytes\{pid="%d",container="%s",site=' % (pid, cid), text, re.M)
    assert text.count("pod=") == 1 and text.count("namespace=") == 1, "pod and namespace only in the info series"

    # the pprof profile's comments
    status, body, _ = hd.get("/debug/pprof/heap?pid=%d" % pid)
    assert status == 200
    comment = "container %s, pod shop/%s, pod uid %s" % (cid, POD_NAME, pod_uid)
    assert comment.encode() in gzip.decompress(body)
    go = shutil.which("go")
    if go:
        path = tmp_path / "heap.pb.gz"
        path.write_bytes(body)
        env = dict(os.environ, HOME=os.environ.get("HOME", "/tmp"), PPROF_TMPDIR=str(tmp_path))
        r = subprocess.run([go, "tool", "pprof", "-comments", str(path)], capture_output=True, text=True,
                           timeout=120, env=env)
        assert r.returncode == 0 and comment in r.stdout.splitlines(), r.stdout + r.stderr

    # the JSON listing, by ?format=json and by Accept; the HTML index still for a browser
    for path, headers in (("/debug/pprof/?format=json", {}), ("/debug/pprof/", {"Accept": "application/json"})):
        status, body, hdrs = hd.get(path, headers)
        assert status == 200 and hdrs["Content-Type"] == "application/json", (path, status, body[:200])
        got = by_pid(json.loads(body))
        assert got[pid]["container"] == cid and got[pid]["pod"] == POD_NAME and got[pid]["namespace"] == "shop"
        assert got[pid]["state"] == "attached" and "service.py" in got[pid]["command"], got[pid]
        assert got[pid]["heap"] == "/debug/pprof/heap?pid=%d" % pid, got[pid]
        assert hd.get(got[pid]["allocs"])[0] == 200
        assert got[hpid]["container"] == "" and got[hpid]["pod"] == "", got[hpid]
    status, body, hdrs = hd.get("/debug/pprof/", {"Accept": "text/html,application/xhtml+xml,application/json;q=0.9"})
    assert status == 200 and hdrs["Content-Type"].startswith("text/html") and cid.encode() in body
    status, body, _ = hd.get("/debug/pprof/?format=yaml")
    assert status == 400 and b"format=json" in body

    # Prometheus HTTP SD
    status, body, hdrs = hd.get("/debug/pprof/targets")
    assert status == 200 and hdrs["Content-Type"] == "application/json"
    sd = {g["labels"]["pid"]: g for g in json.loads(body)}
    assert sd[str(pid)] == {"targets": ["127.0.0.1:%d" % hd.port],
                            "labels": {"__param_pid": str(pid), "pid": str(pid), "container": cid,
                                       "pod": POD_NAME, "namespace": "shop"}}, sd
    assert sd[str(hpid)]["labels"] == {"__param_pid": str(hpid), "pid": str(hpid)}, sd


NS_SCRIPT = """set -e
mount -t tmpfs tmpfs /run
d=/run/secrets/kubernetes.io/serviceaccount
mkdir -p $d
%s
exec "$0" -u "$1"
"""
KUBELET_LAYOUT = """mkdir $d/..2026_12_07_15_00_00.000000001
printf 'shop\\n' > $d/..2026_12_07_15_00_00.000000001/namespace
ln -s ..2026_12_07_15_00_00.000000001 $d/..data
ln -s ..data/namespace $d/namespace"""


def in_own_root(targets, layout, env):
    """A Python in a mount namespace of its own whose /run is a fresh tmpfs holding a service account directory
    made by layout (the host's /var/run is a symlink to /run, as in most images)."""
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed: apt-get install util-linux")
    t = targets.start(["unshare", "--mount", "--propagation", "private", "sh", "-c", NS_SCRIPT % layout,
                       default_python(), target_script("idle.py")], env=env)
    return t, int(t.wait_for(r"ready (\d+)").group(1))


def test_namespace_from_the_service_account_file_in_the_targets_root(pod_cgroup, targets, hd, tmp_path):
    """No POD_NAMESPACE: the namespace is the service account's file, read in the target's root as the kubelet lays
    it out (/var/run -> /run, namespace -> ..data/namespace, ..data -> a dated directory). A second pod's file is a
    symlink to an absolute path that exists on the host but not in its root: not followed out of it."""
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount namespace, cgroups)")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "namespace").write_text("leaked\n")
    env = dict(os.environ, HOSTNAME=POD_NAME)
    env.pop("POD_NAMESPACE", None)
    t, pid = in_own_root(targets, KUBELET_LAYOUT, env)
    pod_uid, cid = pod_cgroup(pid, "systemd")
    # the escape: its own tmpfs over the outside directory hides the file from the target, not from memprofd
    escape = "mount -t tmpfs tmpfs %s\nln -s %s $d/namespace" % (outside, outside / "namespace")
    e, epid = in_own_root(targets, escape, dict(env, HOSTNAME="api-0"))
    e_uid, e_cid = pod_cgroup(epid, "cgroupfs")
    # there, but not where /proc/PID/root/var/run/... leads from here (its /run -> /run is read against our root)
    sa = "/proc/%d/root/%s/secrets/kubernetes.io/serviceaccount/namespace"
    assert open(sa % (pid, "run")).read() == "shop\n" and not os.path.exists(sa % (pid, "var/run"))

    r = hd.run("ps", "--json")
    assert r.returncode == 0, r.stderr
    got = by_pid(json.loads(r.stdout))
    assert (got[pid]["namespace"], got[pid]["pod"], got[pid]["pod_uid"], got[pid]["container_id"]) == (
        "shop", POD_NAME, pod_uid, cid[:12]), got[pid]
    assert (got[epid]["namespace"], got[epid]["pod"], got[epid]["pod_uid"], got[epid]["container_id"]) == (
        "", "api-0", e_uid, e_cid[:12]), got[epid]
    # attached (the agent goes in by memfd: another mount namespace), the same in /metrics
    hd.attach(pid)
    status, body, _ = hd.get("/metrics")
    assert ('memprof_process_info{pid="%d",container="%s",pod="%s",namespace="shop",' % (pid, cid[:12], POD_NAME)
            in body.decode()), body.decode()


def test_prometheus_http_sd_finds_one_pprof_target_per_process(pod_cgroup, targets, hd, tmp_path):
    """A real Prometheus given http_sd_configs on /debug/pprof/targets and metrics_path /debug/pprof/heap (as Parca's
    scrape config takes it) scrapes http://HOST:PORT/debug/pprof/heap?pid=N for each attached process, with its
    labels."""
    t = targets.start([default_python(), target_script("idle.py")], env=dict(os.environ, HOSTNAME=POD_NAME,
                                                                                 POD_NAMESPACE="shop"))
    pid = int(t.wait_for(r"ready (\d+)").group(1))
    _, cid = pod_cgroup(pid)
    hd.attach(pid)
    with prometheus(tmp_path, "scrape_configs:\n  - job_name: memprof-heap\n    scrape_interval: 1s\n"
                   "    metrics_path: /debug/pprof/heap\n"
                   "    http_sd_configs:\n      - url: http://127.0.0.1:%d/debug/pprof/targets\n"
                   "        refresh_interval: 1s\n" % hd.port) as (port, prom):
        deadline = time.time() + 60
        active = []
        while time.time() < deadline and not active:
            time.sleep(0.5)
            assert prom.poll() is None, open(tmp_path / "prometheus.log").read()[-3000:]
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % port, timeout=10) as r:
                    active = json.load(r)["data"]["activeTargets"]
            except (OSError, ValueError, KeyError):
                continue
        assert len(active) == 1, active
        url = urllib.parse.urlsplit(active[0]["scrapeUrl"])
        assert (url.netloc, url.path, urllib.parse.parse_qs(url.query)) == (
            "127.0.0.1:%d" % hd.port, "/debug/pprof/heap", {"pid": [str(pid)]}), active[0]
        labels = active[0]["labels"]
        assert (labels["pid"], labels["container"], labels["pod"], labels["namespace"]) == (
            str(pid), cid[:12], POD_NAME, "shop"), labels


def test_watch_rule_selects_by_pod_and_namespace(pod_cgroup, targets, tmp_path):
    """memprofd serve --watch "pod='web-*' namespace=shop": a web pod's process in namespace shop is attached; a
    db pod's in shop, a web pod's in another namespace and a host process whose environment says web/shop (not
    a pod: its cgroup is no kubepods one) are not."""
    tag = marker()
    rule = "pod='web-*' namespace=shop command=" + tag
    d = start_daemon(tmp_path, "--watch", rule)
    try:
        ts = {}
        for name, pod, ns in (("web", POD_NAME, "shop"), ("db", "db-0", "shop"), ("web-other", POD_NAME, "other"),
                              ("host", POD_NAME, "shop")):
            t = targets.start([default_python(), WATCHED, tag], stdin=subprocess.PIPE,
                              env=dict(os.environ, HOSTNAME=pod, POD_NAMESPACE=ns))
            pid = int(t.wait_for(r"ready (\d+)").group(1))
            if name != "host":
                pod_cgroup(pid, "systemd" if name != "db" else "cgroupfs")
            ts[name] = t
        s = wait_until(lambda: attached(d, ts["web"]), 20)
        assert s and s["watch_rule"] == rule, d.log_tail(30)
        time.sleep(2.5)  # two more scans
        for name in ("db", "web-other", "host"):
            assert session_of(d, ts[name].pid) is None, (name, d.log_tail(30))
    finally:
        d.stop()
