"""Every command of memprof and memprofd parses its options the same way (common/opts.c): a bad option or value is a
usage error, exit status 2 with one line on stderr; --help exits 0 and lists the command's options; the exit-status
table in --help is the one in the man pages."""
import os
import re
import subprocess

import pytest

from conftest import MEMPROF, MEMPROFD, ROOT

EXIT_TABLE = {0: "success", 1: "failure", 2: "usage error", 3: "already attached", 4: "no such process",
              5: "permission denied", 6: "not attached", 7: "unsupported target"}


def run(*argv):
    # no daemon is needed: every case here ends before a connection; a socket nobody serves makes sure of it
    env = dict(os.environ, MEMPROF_SOCKET="/nonexistent/memprof-test-cli-usage.sock")
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, env=env)


def commands(exe):
    r = run(exe, "--help")
    assert r.returncode == 0, r.stderr
    cmds = re.findall(r"^  ([a-z][a-z-]*)\s{2,}", r.stdout, re.M)
    assert len(cmds) >= 4, r.stdout
    return cmds


def all_commands():
    return [(MEMPROF, c) for c in commands(MEMPROF)] + [(MEMPROFD, c) for c in commands(MEMPROFD)] + \
        [(MEMPROF, "inproc"), (MEMPROF, "mprun-data")]


def option_lines(help_text):
    """The --options of the option list ("options:" up to the next blank line)."""
    block = help_text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^  (?:-\w, )?(--[a-z][a-z-]*)", block, re.M))


@pytest.mark.parametrize("exe,cmd", all_commands(), ids=lambda x: os.path.basename(x) if "/" in x else x)
def test_help_lists_options_and_bad_options_exit_2(exe, cmd):
    prog = "%s %s" % (os.path.basename(exe), cmd)
    h = run(exe, cmd, "--help")
    assert h.returncode == 0 and h.stdout.startswith("usage: %s" % prog) and h.stderr == "", (h.stdout, h.stderr)
    listed = option_lines(h.stdout)
    usage = h.stdout.split("\n\n")[0]
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", usage))
    assert "--help" in listed and named <= listed, (named - listed, h.stdout)
    if cmd != "ipython-path":  # (rss needs no daemon: its --socket is the session it shows beside)
        assert "--socket" in listed, h.stdout
    assert run(exe, cmd, "-h").stdout == h.stdout

    for bad in (["--no-such-option"], ["-Z"], ["--help=1"]):
        r = run(exe, cmd, *bad)
        assert r.returncode == 2 and r.stdout == "", (bad, r)
        assert r.stderr.startswith(prog + ": ") and r.stderr.count("\n") == 1, (bad, r.stderr)
        assert "try %s --help" % prog in r.stderr, r.stderr
    # an option that needs a value, given none; and a value of the wrong kind
    for opt, value, want in (("--pid", "x1", "a process id"), ("--limit", "many", "a whole number"),
                             ("--interval", "soon", "number"), ("--session", "x1", "a session id"),
                             ("--sample-rate", "lots", "number"), ("--format", "xml", "one of")):
        if opt not in listed:
            continue
        r = run(exe, cmd, opt, value)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (opt, r)
        assert re.match(r"%s: %s needs .*%s.*, got '%s'\n$" % (re.escape(prog), opt, want, value), r.stderr), r.stderr
        r = run(exe, cmd, opt)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "%s needs" % opt in r.stderr, (opt, r)


def test_required_and_unexpected_arguments_exit_2():
    for argv, message in (([MEMPROF, "top"], "--pid PID is required"),
                          ([MEMPROF, "lines", "--pid", "1"], "--function NAME is required"),
                          ([MEMPROF, "types", "--pid", "1", "extra"], "unexpected argument 'extra'"),
                          ([MEMPROF, "status", "extra"], "unexpected argument 'extra'"),
                          ([MEMPROF, "diff", "a.mps"], "expected two snapshot files"),
                          ([MEMPROF, "export"], "--pid PID, --session ID or --rss FILE is required"),
                          ([MEMPROF, "run"], "no program to run"),
                          # the flame graph is an HTML page: a .svg name would hold HTML (plot refuses .png likewise)
                          ([MEMPROF, "flamegraph", "--pid", "1", "-o", "flame.svg"], "use an .html name"),
                          ([MEMPROF, "flamegraph", "--pid", "1", "-o", "flame"], "use an .html name"),
                          ([MEMPROF, "run", "--native", "--exact", "--", "true"], "not with --exact"),
                          ([MEMPROFD, "attach"], "--pid PID is required"),
                          ([MEMPROFD, "attach", "--pid", "1", "--native", "--exact"], "not with --exact"),
                          ([MEMPROFD, "serve", "--metrics-top", "1001"], "from 0 to 1000, got '1001'"),
                          ([MEMPROFD, "stop", "extra"], "unexpected argument 'extra'"),
                          # a malformed --http is a usage error (2), like any malformed option, not a failure (1)
                          ([MEMPROFD, "serve", "--http", "nonsense"], "--http nonsense: expected HOST:PORT"),
                          ([MEMPROFD, "serve", "--http-token-file", "/nonexistent/t"], "needs --http HOST:PORT"),
                          ([MEMPROF, "nosuchcommand"], "unknown command"),
                          ([MEMPROFD, "nosuchcommand"], "unknown command")):
        r = run(*argv)
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, (argv, r)
        assert message in r.stderr, (argv, r.stderr)


def test_stop_without_a_daemon_says_nothing_to_stop():
    """memprofd stop with no daemon: its goal is met; it says so, exit 0, and does not advise starting one."""
    r = run(MEMPROFD, "stop")
    assert r.returncode == 0 and r.stderr == "", r
    assert r.stdout == "memprofd is not running (socket /nonexistent/memprof-test-cli-usage.sock): nothing to stop\n", r


def test_run_passes_the_programs_options_through():
    # options stop at the program: its own --help and -h are not memprof's
    r = run(MEMPROF, "run", "--bogus", "--", "true")
    assert r.returncode == 2, r
    h = run(MEMPROF, "run", "--help")
    assert h.returncode == 0 and "-- PROGRAM [ARGS...]" in h.stdout.split("\n\n")[0], h.stdout


def exit_statuses_in_help(exe):
    text = run(exe, "--help").stdout.split("exit status:\n", 1)[1]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^    (\d+)  (.*)$", text, re.M)}


@pytest.mark.parametrize("exe,page", [(MEMPROF, "docs/man/memprof.1"), (MEMPROFD, "docs/man/memprofd.8")])
def test_exit_status_table_in_help_and_man_page(exe, page):
    table = exit_statuses_in_help(exe)
    assert sorted(table) == sorted(EXIT_TABLE), table
    for code, words in EXIT_TABLE.items():
        assert words in table[code], (code, table)
    man = open(os.path.join(ROOT, page)).read()
    section = man.split('.SH "EXIT STATUS"', 1)[1].split("\n.SH ", 1)[0]
    assert sorted(int(c) for c in re.findall(r"^\.B (\d+)$", section, re.M)) == sorted(EXIT_TABLE), section
