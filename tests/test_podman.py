"""Real podman containers (podman 4.3 with runc): a Python in a container, PID 1 of its namespace, overlayfs-rooted,
under the runtime's default seccomp profile and capabilities, attached by the host's memprofd; the debug-container
path (the memprof image of `make image` sharing the app container's pid and network namespaces, as `kubectl debug
--target` and `podman run --pid=container:app --network=container:app` give); and the DaemonSet's pod spec
(deploy/kubernetes/memprofd.yaml) run with podman. Images are imported with `podman import` (the suite's sid root,
and `make image`): no registry. podman's storage, run state, volumes and secrets live in a temporary directory,
removed at the end with every container and image (its containers.conf/storage.conf through CONTAINERS_CONF and
CONTAINERS_STORAGE_CONF); containers use --network none (no CNI state or firewall rules on the host)."""
import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import BUILD, MEMPROF, ROOT, debian_root, default_python, interpreter, lacking, workload
from proctools import agent_gone
from test_alloc import leak_line
from test_watch import PROMISED_S, SLACK_S, attached, marker, session_of, start_daemon, wait_until

# The skip check-fresh excuses (scripts/check-fresh.sh's $require): its fresh root is a mount and pid namespace
# with no cgroup hierarchy mounted, where runc cannot make a container.
CANNOT_RUN = "podman cannot run containers here"
SERVICE = "/srv/service.py"


def mapped_memprof(pid):
    with open("/proc/%d/maps" % pid) as f:
        return [l.strip() for l in f if "libmemprof_agent" in l or ".memprof-" in l]


def children(pid):
    """pid's children (all threads): a memprofd left adopted by the target would be one, zombie or not."""
    kids = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids += f.read().split()
        except OSError:
            pass
    return kids


class Podman:
    """podman with storage, run state and configuration of its own in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="memprof-podman-")
        d = self.dir
        with open(os.path.join(d, "storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "overlay"\ngraphroot = "%s/root"\nrunroot = "%s/run"\n' % (d, d))
        # runc (Debian's crun refuses this machine's hybrid cgroup setup), cgroupfs, no event log; podman 4.3 needs
        # explicit nofile/nproc limits here. Everything podman writes outside its storage goes below d too.
        with open(os.path.join(d, "containers.conf"), "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=8192:8192"]\n'
                    '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n'
                    'tmp_dir = "%s/tmp"\nvolume_path = "%s/volumes"\nstatic_dir = "%s/libpod"\n'
                    '[network]\nnetwork_config_dir = "%s/networks"\n' % (d, d, d, d))
        self.env = dict(os.environ, CONTAINERS_CONF=os.path.join(d, "containers.conf"),
                        CONTAINERS_STORAGE_CONF=os.path.join(d, "storage.conf"))

    def run(self, *args, timeout=120, check=True):
        r = subprocess.run(["podman"] + [str(a) for a in args], capture_output=True, text=True, env=self.env,
                           timeout=timeout)
        if check:
            assert r.returncode == 0, "podman %s: exit %d: %s" % (" ".join(map(str, args)), r.returncode,
                                                                  r.stderr[-2000:])
        return r

    def pid(self, name):
        return int(self.run("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())

    def wait_log(self, name, pattern, timeout=30):
        deadline = time.time() + timeout
        while True:
            out = self.run("logs", name, check=False)
            if re.search(pattern, out.stdout + out.stderr, re.M):
                return out.stdout + out.stderr
            assert time.time() < deadline, "%s printed no %r: %s" % (name, pattern, (out.stdout + out.stderr)[-1000:])
            time.sleep(0.2)

    def rm(self, name, wait=0):
        """Removes a container: SIGTERM, then SIGKILL after wait seconds (a Python that is PID 1 ignores SIGTERM)."""
        r = self.run("rm", "--force", "--time", wait, name, check=False)
        assert r.returncode == 0 or "no such container" in r.stderr, "podman rm %s: %s" % (name, r.stderr[-1000:])

    def cleanup(self):
        for step in (("rm", "--all", "--force", "--time", "0"), ("system", "reset", "--force")):
            try:
                self.run(*step, check=False, timeout=300)
            except subprocess.TimeoutExpired:
                pass
        # what the overlay driver mounted in its storage (system reset unmounts it; this is the safety net)
        with open("/proc/self/mountinfo") as f:
            left = [l.split()[4] for l in f if l.split()[4].startswith(self.dir + "/")]
        for m in sorted(left, reverse=True):
            subprocess.call(["umount", "-l", m])
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def podman():
    if os.geteuid() != 0:
        pytest.skip("podman tests need root (rootful podman, runc): run make test as root")
    for tool, pkg in (("podman", "podman"), ("runc", "runc"), ("nsenter", "util-linux")):
        if not shutil.which(tool):
            lacking(tool, "apt-get install %s (scripts/install-deps.sh installs it)" % pkg)
    # podman keeps a blob cache of its own outside its storage (/var/lib/containers/cache, not configurable):
    # removed afterwards if this run made it
    cache = "/var/lib/containers/cache"
    made = [d for d in ("/var/lib/containers", cache) if not os.path.exists(d)]
    pm = Podman()
    try:
        yield pm
    finally:
        pm.cleanup()
        if made:
            shutil.rmtree(made[0], ignore_errors=True)


def import_root(podman, name, tag):
    """scripts/mkroot.sh NAME's root (built into the cache if missing), imported as the image TAG."""
    tarball, why = debian_root(name)
    if not tarball:
        pytest.skip(why)
    # can this machine run a container at all (overlayfs storage, cgroups, runc)? Under MEMPROF_REQUIRE (CI) this
    # skip fails the run; check-fresh excuses it (its root has no cgroup hierarchy mounted)
    for step in (("import", tarball, tag), ("run", "--rm", "--network", "none", tag, "true")):
        try:
            r = podman.run(*step, check=False, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip("%s: podman %s took more than 10 min" % (CANNOT_RUN, step[0]))
        if r.returncode != 0:
            pytest.skip("%s: podman %s failed: %s" % (CANNOT_RUN, step[0], (r.stderr.strip().splitlines() or ["?"])[-1]))
    return tag


@pytest.fixture(scope="module")
def sid_image(podman):
    """The suite's Debian sid root (python3.13-3.15), imported as an image."""
    return import_root(podman, "sid", "localhost/memprof-test-sid:latest")


@pytest.fixture(scope="module")
def bookworm_image(podman, sid_image):
    """Debian 12 minbase with its python3 (3.11): an image as a stranger's Python service would use. After
    sid_image, which tells whether containers can run here at all, before a root is built for nothing."""
    return import_root(podman, "bookworm-python", "localhost/memprof-test-bookworm:latest")


@pytest.fixture(scope="module")
def memprof_image(podman, sid_image):
    """`make image` (the .deb, built in the build tree's pkg/, then scripts/mkimage.sh) into the test's storage."""
    r = subprocess.run(["make", "--no-print-directory", "image", "BUILD=%s" % BUILD], cwd=ROOT, capture_output=True,
                       text=True, timeout=1200, env=podman.env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = re.search(r"^mkimage: (\S+) ", r.stdout, re.M)
    assert m, r.stdout[-2000:]
    out = podman.run("run", "--rm", "--network", "none", m.group(1), "memprofd", "--version").stdout
    assert out.startswith("memprofd "), out
    return m.group(1)


@pytest.fixture
def workdir(tmp_path):
    """/srv of the app containers: the service, readable by any uid."""
    d = tmp_path / "srv"
    d.mkdir()
    shutil.copy(workload("service.py"), str(d))
    os.chmod(str(tmp_path), 0o755)
    os.chmod(str(d), 0o755)
    return str(d)


@pytest.fixture
def containers(podman):
    """Names of the containers a test starts; each is removed afterwards."""
    names = []
    yield names
    for n in reversed(names):  # a container that joined another's namespaces first
        podman.rm(n)


_serial = iter(range(1, 1000))


def start_app(podman, containers, image, workdir, py, user=None):
    name = "memprof-test-app-%d-%d" % (os.getpid(), next(_serial))
    containers.append(name)
    podman.run("run", "--detach", "--name", name, "--network", "none", "--volume", "%s:/srv:ro" % workdir,
               *(["--user", user] if user else []), image, py, "-u", SERVICE, "4")
    podman.wait_log(name, r"^beat 1 ")
    return name, podman.pid(name)


def wait_leak_line(run_top):
    """top --json rows, once the service's leak line leads (or 15 s)."""
    want = leak_line()
    deadline = time.time() + 15
    while True:
        r = run_top()
        assert r.returncode == 0, r.stderr
        rows = json.loads(r.stdout)["rows"]
        if rows and rows[0]["file"] == SERVICE and rows[0]["line"] == want or time.time() > deadline:
            break
        time.sleep(1)
    assert rows and rows[0]["file"] == SERVICE and rows[0]["line"] == want, rows
    return rows


# ---------------------------------------------------------------- (a) the host's memprofd, a target in a container

@pytest.mark.parametrize("py", ["python3.13", "python3.14", "python3.15", "bookworm-python3.11"])
def test_host_daemon_attaches_podman_target(podman, request, daemon, containers, workdir, tmp_path, py):
    if py.startswith("bookworm-"):
        image, py = request.getfixturevalue("bookworm_image"), py[len("bookworm-"):]
    else:
        interpreter("sid-" + py[len("python"):])  # the sid root has it (else the suite's usual skip)
        image = request.getfixturevalue("sid_image")
    name, pid = start_app(podman, containers, image, workdir, py)
    with open("/proc/%d/status" % pid) as f:
        assert re.search(r"^NSpid:\s+%d\s+1$" % pid, f.read(), re.M)  # PID 1 of its namespace
    r = daemon.attach(pid)
    assert "attached to pid %d: Python %s." % (pid, py[len("python"):]) in r.stdout, r.stdout
    st = [s for s in json.loads(daemon.run("status", "--json").stdout) if s["pid"] == pid][-1]
    cid = podman.run("inspect", "--format", "{{.Id}}", name).stdout.strip()
    assert st["ns_pid"] == 1 and st["container"].startswith("libpod-") and st["container_id"] == cid[:12], st

    wait_leak_line(lambda: daemon.run("top", "--pid", pid, "--once", "--json", "--by", "line", "--limit", "3"))
    types = daemon.run("types", "--pid", pid, "--limit", "20")
    assert types.returncode == 0 and re.search(r"^Session\s+\d+\s+", types.stdout, re.M), types.stdout + types.stderr
    out = str(tmp_path / "heap.pb.gz")
    ex = daemon.run("export", "--pid", pid, "--format", "pprof", "-o", out)
    assert ex.returncode == 0, ex.stderr
    with gzip.open(out) as f:
        assert b"service.py" in f.read()

    daemon.detach(pid)
    assert agent_gone(pid) and mapped_memprof(pid) == [], mapped_memprof(pid)
    assert "ERROR" not in podman.run("logs", name).stdout


# ---------------------------------------------------------------- (b) the debug container

@pytest.mark.parametrize("py", ["python3.13", "python3.14"])
def test_debug_container(podman, sid_image, memprof_image, containers, workdir, py):
    """The app runs as uid 1000 (as most Kubernetes apps do); the debug container is root, from the memprof image,
    in the app's pid and network namespaces. memprofd is the debug container's own process (the image's default
    command): attach, top and detach by `podman exec`, remote-exec on 3.14 (same network namespace)."""
    app, host_pid = start_app(podman, containers, sid_image, workdir, py, user="1000:1000")
    share = ["--pid", "container:%s" % app, "--network", "container:%s" % app]

    assert children(host_pid) == [] and mapped_memprof(host_pid) == []

    dbg = app + "-debug"
    containers.append(dbg)
    podman.run("run", "--detach", "--name", dbg, *share, "--cap-add", "SYS_PTRACE", memprof_image)
    podman.wait_log(dbg, r"listening on /run/memprof/memprofd\.sock")
    if py == "python3.14":  # (once: the same for any Python)
        # memprof starting a daemon in the background here would hand it to the app's Python (pid 1), which never
        # reaps it: refused, saying so (a socket where no daemon listens)
        r = podman.run("exec", dbg, "memprofd", "attach", "--pid", "1", "--socket", "/tmp/none/memprofd.sock",
                       check=False)
        assert r.returncode != 0 and re.search(r"memprofd is not running, and one started from here would be adopted "
                                               r"by pid 1 \(%s -u %s 4\), which does not reap children" % (py, SERVICE),
                                               r.stderr), r.stderr
        assert children(host_pid) == []
    r = podman.run("exec", dbg, "memprofd", "attach", "--pid", "1")
    assert "attached to pid 1: Python %s." % py[len("python"):] in r.stdout, r.stdout
    if py == "python3.14":
        assert "(remote-exec:" in r.stdout, r.stdout  # same network namespace: the abstract socket is reachable
    wait_leak_line(lambda: podman.run("exec", dbg, "memprof", "top", "--pid", "1", "--once", "--json", "--by", "line",
                                      "--limit", "3", check=False))
    top = podman.run("exec", dbg, "memprof", "top", "--pid", "1", "--once").stdout
    assert re.search(r"^pid 1  \[in libpod-[0-9a-f]{12}\] %s -u %s 4 " % (py, SERVICE), top, re.M), top
    podman.run("exec", dbg, "memprofd", "detach", "--pid", "1")
    assert agent_gone(host_pid) and mapped_memprof(host_pid) == []
    podman.rm(dbg, wait=10)  # memprofd, its main process, ends on SIGTERM: nothing is left adopted by the app
    assert children(host_pid) == []

    # without CAP_SYS_PTRACE (podman's default set): the error names it and how to grant it (once)
    if py != "python3.14":
        return
    nocap = app + "-nocap"
    containers.append(nocap)
    podman.run("run", "--detach", "--name", nocap, *share, memprof_image)
    podman.wait_log(nocap, r"listening on /run/memprof/memprofd\.sock")
    r = podman.run("exec", nocap, "memprofd", "attach", "--pid", "1", check=False)
    assert r.returncode != 0, r.stdout
    assert ("memprofd: pid 1: permission denied: this memprofd lacks CAP_SYS_PTRACE, which a process of another "
            "uid or one not dumpable needs (a container's default capabilities omit it): run its container with --cap-add SYS_PTRACE (podman, docker), kubectl debug "
            "--profile=general, or securityContext.capabilities.add: [SYS_PTRACE]") in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert mapped_memprof(host_pid) == [] and "ERROR" not in podman.run("logs", app).stdout


# ---------------------------------------------------------------- (c) the DaemonSet's pod spec

def daemonset_spec():
    import yaml
    with open(os.path.join(ROOT, "deploy", "kubernetes", "memprofd.yaml")) as f:
        docs = {d["kind"]: d for d in yaml.safe_load_all(f)}
    return docs["DaemonSet"]["spec"]["template"], docs["ConfigMap"], docs["Secret"]


def test_daemonset_pod_spec(podman, memprof_image, containers, targets, tmp_path):
    """The DaemonSet's container as podman runs it: hostPID, its securityContext (user, capabilities,
    no-new-privileges), command and args, the hostPath socket directory (made 0755, as kubelet does), the ConfigMap's
    rules and the Secret's token as files at their mountPaths. podman 4.3's `kube play` takes no DaemonSet and
    ignores hostPID, so this is `podman run` with those fields; the port is not published (that would leave CNI
    state on the host): /metrics is read from inside the container's network namespace. A Python of the host that
    the rules match is attached, /metrics answers with the token (401 without), root on the host reaches the pod's
    memprofd through the socket directory, and stopping the container detaches."""
    template, configmap, secret = daemonset_spec()
    spec = template["spec"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert spec["hostPID"] is True and sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE", "SETUID", "SETGID"]}
    ann = template["metadata"]["annotations"]
    port = c["ports"][0]["containerPort"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(port)

    # the target: a host Python whose command line a rule added to the ConfigMap's matches
    script = str(tmp_path / ("podman-watch-%d.py" % os.getpid()))
    shutil.copy(workload("service.py"), script)
    t = targets.start([default_python(), "-u", script, "2"])
    t.wait_for(r"^ready ")

    mounts = []
    for v in spec["volumes"]:
        mount = [m for m in c["volumeMounts"] if m["name"] == v["name"]][0]
        src = str(tmp_path / v["name"])
        os.mkdir(src, 0o755)
        if "configMap" in v:
            for key, text in configmap["data"].items():
                with open(os.path.join(src, key), "w") as f:
                    f.write(text + "command=podman-watch-%d\\.py sample-rate=65536\n" % os.getpid())
        elif "secret" in v:
            token = base64.b64decode(secret["data"]["token"]).decode()
            for key, data in secret["data"].items():
                path = os.path.join(src, key)
                with open(path, "wb") as f:
                    f.write(base64.b64decode(data))
                os.chmod(path, v["secret"]["defaultMode"])
        else:
            assert v["hostPath"]["path"] == "/run/memprof" and mount["mountPath"] == "/run/memprof"
            sockdir = src
        mounts += ["--volume", "%s:%s%s" % (src, mount["mountPath"], ":ro" if mount.get("readOnly") else "")]
    name = "memprof-test-ds-%d" % os.getpid()
    containers.append(name)
    argv = ["run", "--detach", "--name", name, "--pid", "host", "--network", "none", "--user", str(sc["runAsUser"]),
            "--cap-drop", "ALL"] + sum((["--cap-add", cap] for cap in sc["capabilities"]["add"]), [])
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    argv += mounts + ["--entrypoint", json.dumps(c["command"]), memprof_image] + c["args"]
    podman.run(*argv)
    podman.wait_log(name, r"watch: rule 'command=podman-watch-")
    podman.wait_log(name, r"pid %d attached: Python" % t.pid, timeout=20)
    assert (os.stat(sockdir).st_mode & 0o777) == 0o700  # the command's chmod, before memprofd checks it

    cpid = podman.pid(name)

    def get(path, token=None):
        return subprocess.run(["nsenter", "--target", str(cpid), "--net", "curl", "-s", "-w", "\n%{http_code}"]
                              + (["-H", "Authorization: Bearer %s" % token] if token else [])
                              + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True, text=True, timeout=30)

    assert get(template["metadata"]["annotations"]["prometheus.io/path"]).stdout.endswith("\n401")
    deadline = time.time() + 15
    while True:
        r = get("/metrics", token)
        if re.search(r'^memprof_tracked_live_bytes\{pid="%d"[^}]*\} [1-9]' % t.pid, r.stdout, re.M) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert r.stdout.endswith("\n200") and re.search(r'^memprof_tracked_live_bytes\{pid="%d"[^}]*\} [1-9]' % t.pid,
                                                   r.stdout, re.M), r.stdout[-2000:]
    # root on the node: memprof through the hostPath socket directory
    st = subprocess.run([MEMPROF, "status", "--socket", os.path.join(sockdir, "memprofd.sock")], capture_output=True,
                        text=True, timeout=30)
    assert st.returncode == 0 and re.search(r"^\d+\s+%d\s+3\.\d+\.\d+\s+attached " % t.pid, st.stdout, re.M), \
        st.stdout + st.stderr

    podman.rm(name, wait=10)  # SIGTERM: memprofd detaches what it attached
    assert agent_gone(t.pid) and mapped_memprof(t.pid) == []
    assert t.proc.poll() is None and "ERROR" not in t.output()


def test_daemon_started_in_own_container(podman, memprof_image, containers):
    """memprof starts a daemon in the background in a container whose pid 1 is its own and does not reap
    (`sleep`): the daemon ends with the container, so that is allowed, unlike a debug container's case above."""
    name = "memprof-test-own-%d" % os.getpid()
    containers.append(name)
    podman.run("run", "--detach", "--name", name, "--network", "none", memprof_image, "sleep", "600")
    r = podman.run("exec", name, "memprof", "ps")
    assert r.stdout == "no Python processes you may attach to\n", r.stdout
    st = podman.run("exec", name, "memprof", "status").stdout
    assert "memprofd " in st, st


# ---------------------------------------------------------------- the watch policy over containers


def test_watch_policy_over_podman_containers(podman, sid_image, containers, workdir, tmp_path):
    """memprofd serve --watch on the host, seven containers started: the five whose command matches are attached
    within the promised time, with their container ids, the two others never; one restarted is attached again (a
    new process, a new session); one whose service ends by itself keeps its final profile, still served."""
    tag = marker()
    rule = "command='service\\.py 1 [0-9]+ %s'" % tag
    d = start_daemon(tmp_path, "--watch", rule)
    started = {}
    try:
        for i, (seconds, word) in enumerate([(0, tag)] * 4 + [(20, tag)] + [(0, "other-" + tag)] * 2):
            name = "memprof-test-watch-%d-%d" % (os.getpid(), i)
            containers.append(name)
            t0 = time.time()
            podman.run("run", "--detach", "--name", name, "--network", "none", "--volume", "%s:/srv:ro" % workdir,
                       sid_image, "python3.13", "-u", SERVICE, "1", seconds, word)
            started[name] = (t0, word == tag)
        names = list(started)
        pids = {n: podman.pid(n) for n in names}
        for n in names[:5]:
            s = wait_until(lambda: attached(d, pids[n]), PROMISED_S + SLACK_S + 10)
            assert s, "%s (pid %d) not attached: %s" % (n, pids[n], d.log_tail(30))
            late = s["attached_since"] - started[n][0]
            cid = podman.run("inspect", "--format", "{{.Id}}", n).stdout.strip()
            assert s["watch_rule"] == rule and s["container_id"] == cid[:12] and s["ns_pid"] == 1, s
            assert late <= PROMISED_S + SLACK_S, "%s attached %.1f s after its start" % (n, late)
        time.sleep(2.5)  # two more scans
        for n in names[5:]:
            assert session_of(d, pids[n]) is None, (n, d.log_tail(30))

        # restarted: a new process (another host pid), attached again as a new session
        old = session_of(d, pids[names[0]])
        t0 = time.time()
        podman.run("restart", "--time", "0", names[0])
        new_pid = podman.pid(names[0])
        assert new_pid != pids[names[0]]
        s = wait_until(lambda: attached(d, new_pid), PROMISED_S + SLACK_S + 10)
        assert s and s["id"] != old["id"] and s["attached_since"] - t0 <= PROMISED_S + SLACK_S + 2, d.log_tail(30)

        # the one that ends by itself (20 s): its session ended, its final profile served
        ending = pids[names[4]]
        assert wait_until(lambda: (session_of(d, ending) or {}).get("state") == "exited", 40), d.log_tail(30)
        top = d.run("top", "--pid", ending, "--once", "--json", "--by", "line", "--limit", "3")
        assert top.returncode == 0, top.stderr
        rows = json.loads(top.stdout)["rows"]
        assert rows and rows[0]["file"] == SERVICE and rows[0]["line"] == leak_line(), rows
    finally:
        d.stop()
