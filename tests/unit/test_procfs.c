/* test_procfs.c -- unit tests of probe/procfs.c: stat lines with odd names, status fields, a live process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "probe/procfs.h"
#include "tests/unit/check.h"

static void test_stat_lines(void)
{
    struct procfs_stat st;
    CHECK(procfs_parse_stat("42 (python3) S 1 42 42 0 -1 4194560 100 0 0 0", &st) == 0 && st.state == 'S' &&
              st.ppid == 1 && st.flags == 4194560 && !strcmp(st.comm, "python3"),
          "plain stat line");
    CHECK(procfs_parse_stat("7 (a) b (c) T 3 7 7 0 -1 2097216 0", &st) == 0 && st.state == 'T' && st.ppid == 3 &&
              (st.flags & PROCFS_PF_KTHREAD) && !strcmp(st.comm, "a) b (c"),
          "comm with spaces and parentheses: fields after the last ')'");
    CHECK(procfs_parse_stat("9 () Z 2 9 9 0 -1 0 0", &st) == 0 && st.state == 'Z' && st.comm[0] == 0,
          "empty comm");
    CHECK(procfs_parse_stat("4242 (my prog) S 1 4242 4242 0 -1 4194560 226 0 0 0 1 0 0 0 20 0 1 0 98765432 9961472 "
                            "1020 18446744073709551615", &st) == 0 && st.starttime == 98765432ULL &&
              st.ppid == 1 && !strcmp(st.comm, "my prog"),
          "start time (field 22), after a comm with a space");
    CHECK(procfs_parse_stat("42 (python3) S 1 42 42 0 -1 4194560 100 0 0 0", &st) == 0 && st.starttime == 0,
          "a line that stops before the start time: 0, the rest parsed");
    CHECK(procfs_parse_stat("9 (x) Z 2", &st) < 0 && st.state == 0, "truncated line");
    CHECK(procfs_parse_stat("9 (x)", &st) < 0, "nothing after comm");
    CHECK(procfs_parse_stat("garbage", &st) < 0, "garbage");
    CHECK(procfs_parse_stat("9 x) S 2 9 9 0 -1 0 0", &st) < 0, "no '('");
}

static void test_status_fields(void)
{
    const char *status = "Name:\tUid: 5 TracerPid: 9\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n"
                         "NSpid:\t42\t7\t1\nUid:\t1000\t1001\t1002\t1003\nTracerPid:\t0\nSigPnd:\t0000000000000100\n";
    const char *p;
    CHECK((p = procfs_field(status, "Uid")) && !strncmp(p, "\t1000\t", 6), "Uid: at a line's start, not in Name:");
    CHECK((p = procfs_field(status, "TracerPid")) && !strncmp(p, "\t0\n", 3), "TracerPid");
    CHECK((p = procfs_field(status, "Name")) && !strncmp(p, "\tUid: 5", 7), "the first line");
    CHECK(!procfs_field(status, "Ui"), "a prefix of a key is no key");
    CHECK(!procfs_field(status, "CapEff"), "a missing key");
    CHECK(procfs_nspid(status) == 1, "NSpid: its last number");
    CHECK(procfs_nspid("Name:\tx\nNSpid:\t42\nUid:\t0\n") == 42, "NSpid: one number");
    CHECK(procfs_nspid("Name:\tx\n") == 0, "no NSpid:");
}

static void test_live(void)
{
    struct procfs_stat st;
    char buf[4096], old[17] = "";
    pid_t me = getpid();
    prctl(PR_GET_NAME, old, 0, 0, 0);
    prctl(PR_SET_NAME, "a) b (c", 0, 0, 0);
    CHECK(procfs_stat(me, 0, &st) == 0 && st.state == 'R' && st.ppid == getppid() && !strcmp(st.comm, "a) b (c"),
          "this process renamed 'a) b (c'");
    CHECK(procfs_stat(me, me, &st) == 0 && !strcmp(st.comm, "a) b (c"), "its main thread's stat");
    CHECK(procfs_state(me, 0) == 'R', "its state");
    prctl(PR_SET_NAME, old, 0, 0, 0);
    CHECK(procfs_status(me, 0, buf, sizeof buf) == 0 && procfs_field(buf, "Uid") &&
              (uid_t)strtoul(procfs_field(buf, "Uid"), NULL, 10) == getuid(),
          "its status: Uid");
    CHECK(procfs_stat(0x7ffffff0, 0, &st) < 0 && st.state == 0 && procfs_state(0x7ffffff0, 0) == 0,
          "a pid that does not exist");
}

int main(void)
{
    test_stat_lines();
    test_status_fields();
    test_live();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
