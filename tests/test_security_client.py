"""Who the client talks to (docs/security.md): another local user -- a real one the test creates -- squats a user's
default socket directory (/tmp/memprof-UID), listens there as a fake memprofd naming a library, plants the log as a
symlink, or names a library from a trusted socket; memprof, memprofd attach/detach/stop/serve and memprof inproc
refuse each with one line, send the squatter no byte, load nothing and write nothing. And the default still works."""
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import BUILD, PB_SRC, ROOT, Target, default_python, target_script

PREFIX = "mpsq"


def _others_can_reach(path):
    """Whether a user other than the owner can read path: it and every directory above it open to others."""
    mode = os.stat(path).st_mode
    if not mode & stat.S_IROTH:
        return False
    d = os.path.dirname(os.path.abspath(path))
    while True:
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


# The users these tests create run memprof, the agent and the test's targets from the checkout: a checkout under a
# directory closed to others (root's /root, mode 700) cannot be theirs to run, and every test here would pass for the
# wrong reason (their command refused with EACCES). check-fresh and CI keep the checkout open to others.
pytestmark = pytest.mark.skipif(
    not all(_others_can_reach(p) for p in (os.path.join(BUILD, "memprof"), os.path.join(ROOT, "tests", "targets", "idle.py"))),
    reason="does not apply here: the checkout (%s) cannot be read by other users, whom these tests play; clone it "
           "where they can (e.g. /opt or /srv)" % ROOT)

# A fake memprofd: answers a hello, and any request with a RunReply naming LIB (what `memprof run` preloads);
# appends the bytes each connection sent to RECORD.
FAKE_DAEMON = PB_SRC + r'''
import socket, struct, sys
path, lib, record = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    got, buf = 0, b""
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            got += len(chunk)
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("<I", buf[:4])[0]:
                n = struct.unpack("<I", buf[:4])[0]
                msg, buf = buf[4:4 + n], buf[4 + n:]
                if msg[:1] == b"\x0a":  # Envelope.hello
                    reply = field(2, 2, field(1, 0, 1))
                else:
                    reply = field(23, 2, field(2, 0, 1) + field(3, 2, b"x") + field(4, 2, lib.encode()))
                c.sendall(struct.pack("<I", len(reply)) + reply)
    except OSError:
        pass
    c.close()
    with open(record, "a") as f:
        f.write("%d\n" % got)
'''

# The planted library: loaded, it leaves a marker file.
PLANTED_C = r'''
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void planted(void)
{
    int fd = open(MARKER, O_WRONLY | O_CREAT, 0666);
    if (fd >= 0) close(fd);
}
'''


def _remove_user(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", name], capture_output=True, timeout=30)


def _kill_processes_of(uid):
    """The processes the test's users run (the fakes, a daemon a client started): every one was started here."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat("/proc/" + pid).st_uid == uid:
                os.kill(int(pid), 9)
        except OSError:
            pass


class World:
    """Two real users (the victim, the attacker), the programs where both reach them, and the attacker's tools."""

    def __init__(self, base):
        self.base = base
        suffix = "%05d" % (os.getpid() % 100000)
        self.victim_name, self.attacker_name = PREFIX + "v" + suffix, PREFIX + "a" + suffix
        for name in (self.victim_name, self.attacker_name):
            _remove_user(name)
            subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True, timeout=30)
        self.victim, self.attacker = pwd.getpwnam(self.victim_name), pwd.getpwnam(self.attacker_name)
        self.default_dir = "/tmp/memprof-%d" % self.victim.pw_uid
        self.clear_default()
        self.bin = os.path.join(base, "bin")  # root's, 0755: the installed programs
        os.mkdir(self.bin, 0o755)
        for name in ("memprofd", "memprof", "libmemprof_agent.so"):
            shutil.copy(os.path.join(BUILD, name), self.bin)
        self.marks = os.path.join(base, "marks")  # sticky and open: where the planted library would leave its mark
        os.mkdir(self.marks)
        os.chmod(self.marks, 0o1777)
        self.attacker_dir = os.path.join(base, "attacker")
        os.mkdir(self.attacker_dir, 0o755)
        os.chown(self.attacker_dir, self.attacker.pw_uid, self.attacker.pw_gid)
        self.victim_dir = os.path.join(base, "victim")
        os.mkdir(self.victim_dir, 0o700)
        os.chown(self.victim_dir, self.victim.pw_uid, self.victim.pw_gid)
        self.marker = os.path.join(self.marks, "planted-library-ran")
        self.lib = os.path.join(self.attacker_dir, "libmemprof_agent.so")
        src = os.path.join(base, "planted.c")
        with open(src, "w") as f:
            f.write(PLANTED_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-DMARKER=\"%s\"" % self.marker, "-o", self.lib, src],
                       check=True, capture_output=True, timeout=60)
        os.chown(self.lib, self.attacker.pw_uid, self.attacker.pw_gid)
        os.chmod(self.lib, 0o755)
        # the victim's own file, which a log symlink would have the victim's daemon append to
        self.precious = os.path.join(self.victim_dir, "notes")
        with open(self.precious, "w") as f:
            f.write("precious\n")
        os.chown(self.precious, self.victim.pw_uid, self.victim.pw_gid)
        self.fakes = []
        self.nfakes = 0

    def clear_default(self):
        if os.path.lexists(self.default_dir):
            if os.path.isdir(self.default_dir) and not os.path.islink(self.default_dir):
                shutil.rmtree(self.default_dir)
            else:
                os.unlink(self.default_dir)

    def env(self, **extra):
        """A login without pam_systemd (su, cron): no HOME, no XDG_RUNTIME_DIR, no MEMPROF_SOCKET."""
        return dict({"PATH": self.bin + ":/usr/bin:/bin", "LANG": "C.UTF-8"}, **extra)

    def as_user(self, user, argv, env=None, timeout=60):
        return subprocess.run(["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid, "--clear-groups",
                               "--"] + [str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                              env=env or self.env(), cwd="/")

    def fake_daemon(self, user, sock, lib):
        """A fake memprofd run as user, listening on sock, naming lib; returns the file of bytes per connection."""
        self.nfakes += 1
        record = os.path.join(self.marks, "record-%d" % self.nfakes)
        argv = ["setpriv", "--reuid=%d" % user.pw_uid, "--regid=%d" % user.pw_gid, "--clear-groups", "--",
                "/usr/bin/python3", "-c", FAKE_DAEMON, sock, lib, record]
        t = Target(argv, env=self.env())
        self.fakes.append(t)
        t.wait_for("^ready", timeout=30)
        return record

    def close(self):
        for t in self.fakes:
            t.kill()
        for user in (self.victim, self.attacker):
            _kill_processes_of(user.pw_uid)
        time.sleep(0.2)
        self.clear_default()
        for name in (self.victim_name, self.attacker_name):
            _remove_user(name)


@pytest.fixture(scope="module")
def world():
    if os.geteuid() != 0:
        pytest.skip("needs root to create the test's users (useradd)")
    for tool in ("useradd", "userdel", "setpriv", "cc"):
        if not shutil.which(tool):
            pytest.skip("%s is not installed" % tool)
    base = tempfile.mkdtemp(prefix="mpsq-")
    os.chmod(base, 0o755)
    w = World(base)
    yield w
    w.close()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh(world):
    """Each test starts with no /tmp/memprof-UID for the victim and no mark; the fakes of the test are stopped after."""
    world.clear_default()
    yield world
    for t in world.fakes:
        t.kill()
    world.fakes = []
    world.clear_default()
    ran = os.path.exists(world.marker)
    if ran:
        os.unlink(world.marker)
    assert not ran, "the planted library ran as the victim"


def received(record):
    """Bytes each connection to the fake sent it."""
    try:
        with open(record) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def victim_daemons(world, wait=5.0):
    """The victim's memprofd processes still running after up to wait seconds (zombies are gone)."""
    deadline = time.time() + wait
    while True:
        pids = []
        for pid in os.listdir("/proc"):
            try:
                if pid.isdigit() and os.stat("/proc/" + pid).st_uid == world.victim.pw_uid:
                    with open("/proc/%s/stat" % pid) as f:
                        st = f.read()
                    if "(memprofd)" in st and st.rsplit(")", 1)[1].split()[0] != "Z":
                        pids.append(int(pid))
            except OSError:
                pass
        if not pids or time.time() > deadline:
            return pids
        time.sleep(0.05)


def victim_commands(world, pid):
    """Every client command, with what it must not get past."""
    return [["memprof", "status"],
            ["memprof", "run", "--", "/usr/bin/python3", "-c", "print('the program ran')"],
            ["memprof", "inproc"],
            ["memprofd", "attach", "--pid", pid],
            ["memprofd", "detach", "--pid", pid],
            ["memprofd", "stop"]]


def assert_refused(world, r, *words):
    assert r.returncode != 0, "not refused: %s%s" % (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "the program ran" not in r.stdout, r.stdout
    assert "\t" not in r.stdout, "memprof inproc named a library: %r" % r.stdout


# ------------------------------------------------------------ the squatted default directory

def squat(world, variant):
    """The attacker takes /tmp/memprof-VICTIM_UID first, as variant says; returns the fake's record or None."""
    a = world.attacker
    d = world.default_dir
    record = None
    if variant == "symlink-dir":
        # the name is a symlink to the attacker's directory, where its fake daemon listens
        real = tempfile.mkdtemp(prefix="squat-", dir=world.attacker_dir)
        os.chown(real, a.pw_uid, a.pw_gid)
        world.as_user(a, ["ln", "-s", real, d])
        record = world.fake_daemon(a, os.path.join(real, "memprofd.sock"), world.lib)
        world.as_user(a, ["ln", "-s", world.precious, os.path.join(real, "memprofd.log")])
        return record
    r = world.as_user(a, ["mkdir", "-m", "777" if variant in ("open-dir", "log-symlink") else "755", d])
    assert r.returncode == 0, r.stderr
    if variant in ("socket", "socket-and-log"):
        record = world.fake_daemon(a, os.path.join(d, "memprofd.sock"), world.lib)
        world.as_user(a, ["chmod", "777", os.path.join(d, "memprofd.sock")])
    if variant in ("log-symlink", "socket-and-log"):
        r = world.as_user(a, ["ln", "-s", world.precious, os.path.join(d, "memprofd.log")])
        assert r.returncode == 0, r.stderr
    return record


@pytest.mark.parametrize("variant", ["dir", "open-dir", "socket", "log-symlink", "socket-and-log", "symlink-dir"])
def test_squatted_default_directory_is_refused(fresh, variant):
    w = fresh
    record = squat(w, variant)
    for argv in victim_commands(w, os.getpid()):
        r = w.as_user(w.victim, argv)
        assert_refused(w, r, w.default_dir, w.attacker_name, "symlink" if variant == "symlink-dir" else "not yours",
                       "refusing")
    # memprofd serve on the default path refuses it too, before listening
    r = w.as_user(w.victim, ["memprofd", "serve"], timeout=20)
    assert_refused(w, r, w.default_dir)
    assert not victim_daemons(w), "a daemon of the victim's was started"
    if record:
        assert received(record) == [], "the squatter's listener was connected to: %s" % received(record)
    with open(w.precious) as f:
        assert f.read() == "precious\n", "the victim's daemon wrote through the planted log symlink"
    assert not os.path.exists(w.marker)


def test_squatted_directory_error_names_owner_and_fix(fresh):
    squat(fresh, "dir")
    r = fresh.as_user(fresh.victim, ["memprofd", "attach", "--pid", os.getpid()])
    assert_refused(fresh, r, "socket directory %s" % fresh.default_dir, "owner %s (uid %d)" % (
        fresh.attacker_name, fresh.attacker.pw_uid), "not yours", "XDG_RUNTIME_DIR")


# ------------------------------------------------------------ someone else's listener in a directory that looks right

@pytest.mark.parametrize("owner", ["root", "victim"])
def test_listener_of_another_user_is_refused_before_a_byte(fresh, owner):
    """The directory passes (root's 755, or the victim's own 700), but the socket in it is the attacker's listener
    (moved there by root, as a race on the directory would): SO_PEERCRED refuses it before the hello."""
    w = fresh
    home = os.path.join(w.base, "attacker-sock")
    os.mkdir(home, 0o755)
    os.chown(home, w.attacker.pw_uid, w.attacker.pw_gid)
    record = w.fake_daemon(w.attacker, os.path.join(home, "memprofd.sock"), w.lib)
    d = os.path.join(w.base, "looks-right-" + owner)
    os.mkdir(d, 0o755 if owner == "root" else 0o700)
    if owner == "victim":
        os.chown(d, w.victim.pw_uid, w.victim.pw_gid)
    sock = os.path.join(d, "memprofd.sock")
    os.rename(os.path.join(home, "memprofd.sock"), sock)
    os.chmod(sock, 0o777)
    env = w.env(MEMPROF_SOCKET=sock)
    try:
        for argv in victim_commands(w, os.getpid()):
            r = w.as_user(w.victim, argv, env=env)
            assert_refused(w, r, sock, "runs as %s (uid %d)" % (w.attacker_name, w.attacker.pw_uid), "refusing")
        deadline = time.time() + 10
        while len(received(record)) < 6 and time.time() < deadline:  # each command connected once
            time.sleep(0.05)
        conns = received(record)
        assert len(conns) == 6 and set(conns) == {0}, "the attacker's listener got bytes: %s" % conns
        assert not os.path.exists(w.marker)
    finally:
        shutil.rmtree(d)
        shutil.rmtree(home)


# ------------------------------------------------------------ a library named by a socket the client trusts

def plant(world, how):
    """Where the library named will be, as how says."""
    if how == "attacker-owned":
        return world.lib
    if how == "root-owned-in-attacker-dir":
        p = os.path.join(world.attacker_dir, "root-copy.so")
        shutil.copy(world.lib, p)
        os.chmod(p, 0o755)
        return p
    if how == "world-writable":
        p = os.path.join(world.marks, "victim-copy.so")
        shutil.copy(world.lib, p)
        os.chown(p, world.victim.pw_uid, world.victim.pw_gid)
        os.chmod(p, 0o777)
        return p
    if how == "symlink-to-attacker":
        p = os.path.join(world.bin, "libmemprof_agent_link.so")  # root's directory, the installed one's name
        os.symlink(world.lib, p)
        return p
    assert how == "relative"
    return "libmemprof_agent.so"


@pytest.mark.parametrize("how", ["attacker-owned", "root-owned-in-attacker-dir", "world-writable",
                                 "symlink-to-attacker", "relative"])
def test_named_library_is_checked_before_loading(fresh, how):
    """Even a daemon the client trusts (here the victim's own uid) cannot have memprof run or %load_ext load a
    library another user could have put there."""
    w = fresh
    lib = plant(w, how)
    d = os.path.join(w.victim_dir, "run")
    os.mkdir(d, 0o700)
    os.chown(d, w.victim.pw_uid, w.victim.pw_gid)
    sock = os.path.join(d, "memprofd.sock")
    record = w.fake_daemon(w.victim, sock, lib)
    env = w.env(MEMPROF_SOCKET=sock)
    try:
        for argv in (["memprof", "run", "--", "/usr/bin/python3", "-c", "print('the program ran')"],
                     ["memprof", "inproc"]):
            r = w.as_user(w.victim, argv, env=env)
            assert_refused(w, r, "agent library", "refusing to load it")
        assert received(record), "the fake daemon was not asked"
        assert not os.path.exists(w.marker)
        # the extension's own check (python/memprof/_agent.py), for a path it is given
        py = ("import sys; sys.path.insert(0, %r)\nfrom memprof import _agent\n"
              "try:\n    _agent.check_agent(%r)\nexcept _agent.MemprofError as e:\n    print('refused:', e)\n"
              % (os.path.join(ROOT, "python"), lib))
        r = w.as_user(w.victim, ["/usr/bin/python3", "-c", py], env=env)
        assert r.stdout.startswith("refused: ") and "refusing to load it" in r.stdout, r.stdout + r.stderr
        assert not os.path.exists(w.marker)
    finally:
        shutil.rmtree(d)
        if how == "symlink-to-attacker":
            os.unlink(lib)


# ------------------------------------------------------------ the default path still works

def test_default_path_works_for_a_user(fresh):
    """A non-root user without HOME or XDG_RUNTIME_DIR: memprofd attach starts the daemon in /tmp/memprof-UID
    (0700, theirs), attaches to their own Python, memprof status lists it, memprof run loads the installed agent."""
    w = fresh
    py = default_python()
    v = w.victim
    t = Target(["setpriv", "--reuid=%d" % v.pw_uid, "--regid=%d" % v.pw_gid, "--clear-groups", "--",
                py, "-u", target_script("idle.py")], env=w.env())
    w.fakes.append(t)  # killed after the test
    try:
        t.wait_for("^ready", timeout=30)
        r = w.as_user(v, ["memprofd", "attach", "--pid", t.pid])
        assert r.returncode == 0 and "attached to pid %d" % t.pid in r.stdout, r.stdout + r.stderr
        st = os.lstat(w.default_dir)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == v.pw_uid and st.st_mode & 0o777 == 0o700
        log = os.lstat(os.path.join(w.default_dir, "memprofd.log"))
        assert stat.S_ISREG(log.st_mode) and log.st_uid == v.pw_uid and log.st_mode & 0o777 == 0o600
        r = w.as_user(v, ["memprof", "status"])
        assert r.returncode == 0 and str(t.pid) in r.stdout, r.stdout + r.stderr
        r = w.as_user(v, ["memprof", "run", "--function", "work", "--", py, "-c",
                          "def work():\n    return [bytearray(1000) for _ in range(3000)]\nwork()\nprint('ran')"])
        assert r.returncode == 0 and "ran" in r.stdout and "Line #" in r.stderr, r.stdout + r.stderr
    finally:
        w.as_user(v, ["memprofd", "stop"], timeout=60)
    assert not victim_daemons(w)


def test_xdg_runtime_dir_is_the_default_when_absolute(fresh):
    w = fresh
    xdg = os.path.join(w.victim_dir, "xdg")
    os.mkdir(xdg, 0o700)
    os.chown(xdg, w.victim.pw_uid, w.victim.pw_gid)
    try:
        r = w.as_user(w.victim, ["memprof", "status"], env=w.env(XDG_RUNTIME_DIR=xdg))
        assert "not running (socket %s/memprof/memprofd.sock)" % xdg in r.stderr, r.stderr
        r = w.as_user(w.victim, ["memprof", "status"], env=w.env(XDG_RUNTIME_DIR="run/user"))  # relative: ignored
        assert "not running (socket %s/memprofd.sock)" % w.default_dir in r.stderr, r.stderr
    finally:
        shutil.rmtree(xdg)


def test_root_client_talks_to_root_daemon(daemon):
    """root's client and root's daemon, in root's private directory: the checks let it through."""
    st = os.lstat(os.path.dirname(daemon.socket))
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o700
    r = daemon.run("status")
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------ 24.13: the reason, not "see the log"

def test_non_private_directory_reason_is_printed(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(str(d), 0o755)
    env = dict(os.environ, MEMPROF_SOCKET=str(d / "memprofd.sock"))
    r = subprocess.run([os.path.join(BUILD, "memprofd"), "attach", "--pid", str(os.getpid())], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "has mode 755" in lines[0] and "must be 700" in lines[0] and "chmod 700 %s" % d in lines[0], lines[0]
    assert "not answering" not in lines[0]
    assert not os.path.exists(str(d / "memprofd.log")), "a daemon was started"


def test_started_daemon_failure_reason_is_printed(tmp_path):
    """Whatever else stops the daemon a client started, the client prints its reason, not "see the log"."""
    env = dict(os.environ, MEMPROF_SOCKET=str(tmp_path / "run" / "memprofd.sock"), MEMPROF_AGENT="/nonexistent/agent.so")
    r = subprocess.run([os.path.join(BUILD, "memprofd"), "attach", "--pid", str(os.getpid())], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert r.stderr == "memprofd: could not start memprofd: agent library /nonexistent/agent.so: " \
                       "No such file or directory\n", r.stderr
