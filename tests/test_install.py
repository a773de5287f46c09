"""make install / uninstall / deb: the installed tree and its modes, man pages that
render without warnings and name every command and option, bash completion,
--version, and an installed memprofd attaching with the installed agent."""
import json
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from conftest import BUILD, MEMPROF, MEMPROFD, ROOT, Daemon, default_python, target_script

# What make install puts under PREFIX, with modes (the Makefile's INSTALL_FILES).
EXPECTED = {
    "bin/memprof": 0o755,
    "bin/memprofd": 0o755,
    "lib/memprof/libmemprof_agent.so": 0o644,
    "share/man/man1/memprof.1": 0o644,
    "share/man/man8/memprofd.8": 0o644,
    "share/bash-completion/completions/memprof": 0o644,
    "share/bash-completion/completions/memprofd": 0o644,
    "lib/systemd/system/memprofd.service": 0o644,
    "lib/python3/dist-packages/memprof/__init__.py": 0o644,
    "lib/python3/dist-packages/memprof/_agent.py": 0o644,
    "lib/python3/dist-packages/memprof/magics.py": 0o644,
}


def make(*args, timeout=600):
    return subprocess.run(["make", "--no-print-directory"] + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def need(tool):
    if not shutil.which(tool):
        pytest.skip("%s is not installed: scripts/install-deps.sh installs it" % tool)


def files_under(top):
    """{relative path: mode} of the regular files under top."""
    out = {}
    for d, _, names in os.walk(top):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, top)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


@pytest.fixture(scope="module")
def version():
    r = make("-s", "version")
    assert r.returncode == 0, r.stderr
    v = r.stdout.strip()
    assert v.startswith(open(os.path.join(ROOT, "VERSION")).read().strip()), v
    return v


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A private build tree laid out as make deb's (BUILD/pkg/build), so test_deb reuses it."""
    return str(tmp_path_factory.mktemp("install"))


@pytest.fixture(scope="module")
def installed(work):
    """make install DESTDIR=work/root PREFIX=/usr from a build of its own; the /usr tree."""
    need("make")
    dest = os.path.join(work, "root")
    r = make("install", "BUILD=%s/pkg/build" % work, "DESTDIR=%s" % dest, "PREFIX=/usr")
    assert r.returncode == 0, r.stdout + r.stderr
    return os.path.join(dest, "usr")


# ---------------------------------------------------------------- the tree

def test_install_tree_and_modes(installed, version):
    assert files_under(installed) == EXPECTED
    unit = open(os.path.join(installed, "lib/systemd/system/memprofd.service")).read()
    assert re.search(r"^ExecStart=/usr/bin/memprofd serve --socket /run/memprof/memprofd.sock \$MEMPROFD_OPTS$", unit, re.M), unit
    assert re.search(r"^RuntimeDirectoryMode=0700$", unit, re.M), unit
    for page in ("share/man/man1/memprof.1", "share/man/man8/memprofd.8"):
        text = open(os.path.join(installed, page)).read()
        assert not re.search(r"@[A-Z]+@", text), "unsubstituted @VAR@ in %s" % page
        assert ('"memprof %s"' % version) in text.splitlines()[1], text.splitlines()[1]
        assert "/usr/lib/memprof/libmemprof_agent.so" in text


def test_systemd_unit_verifies(installed):
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--root=%s" % os.path.dirname(installed),
                        "/usr/lib/systemd/system/memprofd.service"], capture_output=True, text=True, timeout=60)
    # Without a booted system it cannot find sysinit.target; what matters is that no line is bad.
    bad = [l for l in r.stderr.splitlines() if re.search(r"Unknown|Invalid|Failed to parse|not executable|Missing", l)]
    assert not bad, r.stderr


def test_install_into_unwritable_destdir_fails(installed, work):
    blocker = os.path.join(work, "not-a-directory")
    open(blocker, "w").close()
    r = make("install", "BUILD=%s/pkg/build" % work, "DESTDIR=%s" % blocker, "PREFIX=/usr")
    assert r.returncode != 0
    assert re.search(r"^install: .*not-a-directory.*Not a directory", r.stderr, re.M), r.stderr
    assert re.search(r"^make(\[\d+\])?: \*\*\* .*install\] Error", r.stderr, re.M), r.stderr  # make[1] under make test


def test_uninstall_removes_exactly_what_install_put(installed, work):
    dest = os.path.join(work, "root2")
    bystander = os.path.join(dest, "usr/bin/someone-else")
    os.makedirs(os.path.dirname(bystander))
    open(bystander, "w").close()
    r = make("install", "BUILD=%s/pkg/build" % work, "DESTDIR=%s" % dest, "PREFIX=/usr")
    assert r.returncode == 0, r.stderr
    assert len(files_under(os.path.join(dest, "usr"))) == len(EXPECTED) + 1
    r = make("uninstall", "DESTDIR=%s" % dest, "PREFIX=/usr")
    assert r.returncode == 0, r.stderr
    assert files_under(os.path.join(dest, "usr")) == {"bin/someone-else": 0o644}
    assert not os.path.exists(os.path.join(dest, "usr/lib/memprof")), "memprof's own directory left behind"
    os.unlink(bystander)
    r = make("uninstall", "DESTDIR=%s" % dest, "PREFIX=/usr")
    assert r.returncode == 0, "uninstall of nothing failed: " + r.stderr
    assert files_under(dest) == {}


# ---------------------------------------------------------------- man pages

def help_text(exe, *args):
    r = subprocess.run([exe] + list(args) + ["--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def commands_and_options(exe):
    """{command: set of --options} as the program's --help shows them."""
    top = help_text(exe)
    cmds = re.findall(r"^  ([a-z]+)\s{2,}", top, re.M)
    assert len(cmds) >= 4, top
    out = {}
    for c in cmds:
        text = help_text(exe, c)
        # The usage lines, and the option table (lines starting with an option); not options named in prose.
        usage = text.split("\n\n")[0] + "\n" + "\n".join(re.findall(r"^ +(-[^ ].*)$", text, re.M))
        out[c] = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", usage)) - {"--help"}
    return out


@pytest.mark.parametrize("page,exe", [("share/man/man1/memprof.1", MEMPROF), ("share/man/man8/memprofd.8", MEMPROFD)])
def test_man_page_renders_without_warnings_and_covers_help(installed, page, exe):
    path = os.path.join(installed, page)
    need("groff")
    r = subprocess.run(["groff", "-man", "-ww", "-z", path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    need("man")
    r = subprocess.run(["man", "--warnings", "-l", path], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="100"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = r.stdout.replace("\u2010", "-").replace("\u2212", "-")
    text = re.sub(r".\x08", "", text)  # overstrike bold/underline
    text = re.sub(r"[ \t]+", " ", text)  # justified lines
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert re.search(r"^%s$" % section, text, re.M), "%s: no %s section" % (page, section)
    for var in ("MEMPROF_SOCKET", "MEMPROF_AGENT"):
        assert var in text
    missing = []
    for cmd, opts in commands_and_options(exe).items():
        if not re.search(r"\b%s\b" % os.path.basename(exe) + r" " + cmd + r"\b", text):
            missing.append(cmd)
        missing += ["%s %s" % (cmd, o) for o in sorted(opts) if o not in text]
    for opt in ("--version", "--help"):
        if opt not in text:
            missing.append(opt)
    assert not missing, "%s does not document: %s" % (page, ", ".join(missing))



def test_man_pages_name_no_option_help_lacks():
    """The other way round: an option the man pages' source names is one some command's --help has (man pages are
    written by hand; --help is made from the option tables, common/opts.h)."""
    known = {"--help", "--version", "--now"}  # --now: systemctl enable --now memprofd
    for exe in (MEMPROF, MEMPROFD):
        for opts in commands_and_options(exe).values():
            known |= opts
    for page in ("docs/man/memprof.1", "docs/man/memprofd.8"):
        text = open(os.path.join(ROOT, page)).read().replace("\\-", "-")
        stale = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", text)) - known
        assert not stale, "%s names options no --help has: %s" % (page, ", ".join(sorted(stale)))


# ---------------------------------------------------------------- completion

def complete(installed, prog, *words):
    """COMPREPLY of the installed completion for `prog words...` (the last word is the one completed)."""
    need("bash")
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _%s; '
              'printf "%%s\\n" "${COMPREPLY[@]}"' % prog)
    f = os.path.join(installed, "share/bash-completion/completions", prog)
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script, "bash", f, prog] + list(words),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return sorted(filter(None, r.stdout.split("\n")))


def test_completion_subcommands_and_options(installed):
    assert complete(installed, "memprof", "t") == ["top", "types"]
    assert complete(installed, "memprof", "") == sorted(
        ["run", "status", "ps", "types", "growth", "backrefs", "chain", "top", "lines", "snapshot", "diff", "plot",
         "export", "flamegraph", "rss", "ipython-path", "help", "--help", "--version"])
    assert complete(installed, "memprofd", "") == sorted(["serve", "attach", "detach", "stop", "help", "--help",
                                                          "--version"])
    assert complete(installed, "memprofd", "a") == ["attach"]
    assert complete(installed, "memprof", "top", "--no") == ["--no-fold"]
    assert complete(installed, "memprof", "top", "--by", "") == ["function", "line"]
    assert complete(installed, "memprof", "export", "--format", "") == ["collapsed", "json", "pprof", "speedscope"]
    assert complete(installed, "memprofd", "attach", "--method", "") == ["auto", "ptrace", "remote-exec"]
    assert complete(installed, "memprofd", "attach", "--e") == ["--exact"]
    # Every option a command's --help names is offered.
    for prog, exe in (("memprof", MEMPROF), ("memprofd", MEMPROFD)):
        for cmd, opts in commands_and_options(exe).items():
            offered = set(complete(installed, prog, cmd, "--"))
            assert opts <= offered, "%s %s: not completed: %s" % (prog, cmd, sorted(opts - offered))


def option_values(exe, cmd):
    """{--option: [choices] or None} for every option of cmd's --help that takes a value; the choices are the code's
    own list (common/opts.c says them when refusing a value), so completion cannot drift from it."""
    text = help_text(exe, cmd)
    out = {}
    for opt in re.findall(r"^ +(?:-\w, )?(--[a-z][a-z-]*) [A-Za-z]", text, re.M):
        # an unknown option after it: whatever the value, the command stops at parsing (serve does not serve)
        r = subprocess.run([exe, cmd, opt, "@@no-such-value@@", "--no-such-option"], capture_output=True, text=True,
                           timeout=30,
                           env=dict(os.environ, MEMPROF_SOCKET="/nonexistent/memprof-test-completion.sock"))
        assert r.returncode == 2, (exe, cmd, opt, r)
        m = re.search(r"%s needs one of (.*), got '@@no-such-value@@'" % re.escape(opt), r.stderr)
        out[opt] = m.group(1).split(", ") if m else None
    return out


def test_completion_values_match_the_codes_choices(installed):
    """After an option that takes a value, completion offers that option's choices exactly as the code lists them
    (export's four formats, attach's --method), and never option names."""
    checked = 0
    for prog, exe in (("memprof", MEMPROF), ("memprofd", MEMPROFD)):
        for cmd in commands_and_options(exe):
            for opt, choices in option_values(exe, cmd).items():
                offered = complete(installed, prog, cmd, opt, "")
                if choices is not None:
                    assert offered == sorted(choices), "%s %s %s: %s, the code has %s" % (prog, cmd, opt, offered,
                                                                                        choices)
                    checked += 1
                elif opt != "--pid":  # pids and files are offered; option names never
                    assert not [w for w in offered if w.startswith("-")], "%s %s %s: %s" % (prog, cmd, opt, offered)
    assert checked >= 6, checked  # top/rss --by, types --sort, export/plot --format, attach --method


def test_python_range_same_in_help_and_man_pages():
    """The CPython range the man pages state is the one common/pyversions.h defines and --help prints."""
    h = open(os.path.join(ROOT, "common/pyversions.h")).read()
    lo, hi = (int(re.search(r"#define MP_PY_%s_MINOR (\d+)" % k, h).group(1)) for k in ("MIN", "MAX"))
    want = "3.%d-3.%d" % (lo, hi)
    for exe, cmd in ((MEMPROF, "run"), (MEMPROFD, "attach")):
        assert "Python %s " % want in help_text(exe, cmd), (exe, cmd)
    for page in ("docs/man/memprof.1", "docs/man/memprofd.8"):
        ranges = re.findall(r"(3\.\d+)\\\(en(3\.\d+)", open(os.path.join(ROOT, page)).read())
        assert ranges and all("%s-%s" % r == want for r in ranges), (page, ranges, want)


def test_completion_offers_python_pids(installed, targets):
    t = targets.start([default_python(), "-u", target_script("idle.py")])
    t.wait_for(r"^ready \d+")
    assert str(t.pid) in complete(installed, "memprofd", "attach", "--pid", "")
    assert str(t.pid) in complete(installed, "memprof", "top", "--pid", "")
    assert "1" not in complete(installed, "memprof", "top", "--pid", "")  # init is not Python


# ---------------------------------------------------------------- --version

def test_version_of_built_programs():
    base = open(os.path.join(ROOT, "VERSION")).read().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", base), base
    for exe, name in ((MEMPROF, "memprof"), (MEMPROFD, "memprofd")):
        for flag in ("--version", "-V"):
            r = subprocess.run([exe, flag], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and r.stderr == "", r.stderr
            assert re.fullmatch(r"%s %s(\+g[0-9a-f]+(\.dirty)?)?\n" % (name, re.escape(base)), r.stdout), r.stdout


class InstalledDaemon(Daemon):
    """conftest's Daemon, but the installed memprofd and memprof, and no MEMPROF_AGENT."""

    def __init__(self, tmpdir, bindir, *serve_args):
        super().__init__(tmpdir)
        self.bindir = bindir
        self.serve_args = list(serve_args)
        self.env.pop("MEMPROF_AGENT", None)

    def start(self):
        self.logf = open(self.log, "a")
        self.proc = subprocess.Popen([os.path.join(self.bindir, "memprofd"), "serve", "--socket", self.socket] +
                                     self.serve_args, stdout=self.logf, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 10
        while not os.path.exists(self.socket):
            assert self.proc.poll() is None, "memprofd exited: %s" % open(self.log).read()
            assert time.time() < deadline, "memprofd did not create its socket"
            time.sleep(0.02)

    def run(self, *args, timeout=60, tool=None, input=None):
        return super().run(*args, timeout=timeout, tool=tool or os.path.join(self.bindir, "memprof"), input=input)

    def memprofd(self, *args, timeout=60):
        return self.run(*args, timeout=timeout, tool=os.path.join(self.bindir, "memprofd"))


@pytest.fixture
def installed_daemon(installed, tmp_path):
    d = InstalledDaemon(str(tmp_path), os.path.join(installed, "bin"))
    d.start()
    yield d
    d.stop()


def test_installed_memprofd_attaches_with_installed_agent(installed, installed_daemon, targets, version):
    d = installed_daemon
    agent = os.path.join(installed, "lib/memprof/libmemprof_agent.so")
    for name in ("memprof", "memprofd"):
        r = subprocess.run([os.path.join(installed, "bin", name), "--version"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "%s %s\n" % (name, version), r.stdout + r.stderr
    assert "memprofd %s listening on" % version in open(d.log).read()
    assert "agent library %s" % agent in open(d.log).read(), d.log_tail()

    t = targets.start([default_python(), "-u", target_script("idle.py")])
    t.wait_for(r"^ready \d+")
    d.attach(t.pid)
    with open("/proc/%d/maps" % t.pid) as f:
        maps = f.read()
    # The daemon named the installed library (above); the target maps its bytes from a memfd (or, where
    # memfd_create is refused, from a copy in its /tmp).
    assert "libmemprof_agent" in maps, "the target did not map the agent"
    assert "injected agent into pid %d" % t.pid in open(d.log).read(), d.log_tail()
    assert os.path.join(BUILD, "libmemprof_agent.so") not in maps

    r = d.run("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.match(r"^ID\s+PID\s+PYTHON", lines[0]) and lines[-1] == "memprofd %s" % version, r.stdout
    assert "differs" not in r.stdout, r.stdout
    r = d.run("status", "--json")
    s = [s for s in json.loads(r.stdout) if s["pid"] == t.pid][0]
    assert s["agent_version"] == version and s["daemon_version"] == version, s
    r = d.run("top", "--pid", t.pid, "--once")
    assert r.returncode == 0 and ("pid %d" % t.pid) in r.stdout, r.stdout + r.stderr
    d.detach(t.pid)


def test_status_names_an_agent_of_another_version(installed, work, tmp_path, targets, version):
    """An agent built as another version (say, left from an older install) is visible in status."""
    other = os.path.join(work, "other-agent")
    r = make("BUILD=%s" % other, "MEMPROF_VERSION=0.0.1-test", "%s/libmemprof_agent.so" % other)
    assert r.returncode == 0, r.stderr
    d = InstalledDaemon(str(tmp_path), os.path.join(installed, "bin"), "--agent",
                        os.path.join(other, "libmemprof_agent.so"))
    d.start()
    try:
        t = targets.start([default_python(), "-u", target_script("idle.py")])
        t.wait_for(r"^ready \d+")
        d.attach(t.pid)
        r = d.run("status")
        assert re.search(r"^session \d+ \(pid %d\): agent 0\.0\.1-test differs from memprofd %s" %
                         (t.pid, re.escape(version)), r.stdout, re.M), r.stdout
        s = [s for s in json.loads(d.run("status", "--json").stdout) if s["pid"] == t.pid][0]
        assert s["agent_version"] == "0.0.1-test" and s["daemon_version"] == version, s
        assert "agent version 0.0.1-test differs from memprofd %s" % version in open(d.log).read()
        d.detach(t.pid)
    finally:
        d.stop()


# ---------------------------------------------------------------- make deb

def test_deb_depends_and_contents(installed, work, version):
    for tool in ("dpkg-deb", "dpkg-shlibdeps"):
        need(tool)
    # BUILD=work: mkdeb.sh builds in work/pkg/build, the tree `installed` already built.
    r = make("deb", "BUILD=%s" % work)
    assert r.returncode == 0, r.stdout + r.stderr
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    deb = os.path.join(work, "memprof_%s_%s.deb" % (version, arch))
    assert os.path.exists(deb), os.listdir(work)

    field = lambda f: subprocess.run(["dpkg-deb", "-f", deb, f], capture_output=True, text=True).stdout.strip()
    assert field("Package") == "memprof" and field("Version") == version and field("Architecture") == arch
    depends = [d.split()[0] for d in field("Depends").split(", ")]
    assert "libelf1" in depends and "libprotobuf-c1" in depends, field("Depends")
    assert not any(d.endswith("-dev") for d in depends), depends

    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True).stdout
    packaged = {}
    for line in listing.splitlines():
        perms, owner, _, _, _, path = line.split(None, 5)
        if perms.startswith("-"):
            assert owner == "root/root", line
            mode = sum(0o400 >> i for i, ch in enumerate(perms[1:10]) if ch != "-")
            packaged[re.sub(r"^\./usr/", "", path)] = mode
    expected = {re.sub(r"(/man\d/.*)$", r"\1.gz", p): m for p, m in EXPECTED.items()}
    expected["share/doc/memprof/copyright"] = 0o644  # Debian's place for the license
    assert packaged == expected
    h = open(os.path.join(ROOT, "common/pyversions.h")).read()
    lo, hi = (re.search(r"#define MP_PY_%s_MINOR (\d+)" % k, h).group(1) for k in ("MIN", "MAX"))
    assert "CPython 3.%s-3.%s process" % (lo, hi) in field("Description"), field("Description")
