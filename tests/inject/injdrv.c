/* injdrv.c -- drives the injector by hand: probe a process, load or unload a library. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "daemon/inject.h"
#include "probe/pyprobe.h"

static int usage(void)
{
    fprintf(stderr, "usage: injdrv probe PID\n"
                    "       injdrv load PID LIB SYM ARG\n"
                    "       injdrv unload PID HANDLE\n");
    return 2;
}

int main(int argc, char **argv)
{
    char err[MP_ERRLEN] = "";
    pid_t pid;
    double t0 = mp_now();

    if (argc < 3 || (pid = mp_parse_pid(argv[2])) < 0) return usage();
    if (!strcmp(argv[1], "probe") && argc == 3) {
        struct pyinfo py;
        if (pyprobe(pid, &py, err) < 0) {
            printf("error: %s\n", err);
            return 1;
        }
        printf("python %s (%d.%d.%d) supported=%d shared=%d lib=%s probe_ms=%.2f\n", py.version, py.major,
               py.minor, py.micro, pyprobe_supported(&py), py.shared, py.pylib, (mp_now() - t0) * 1e3);
        return 0;
    }
    if (!strcmp(argv[1], "load") && argc == 6) {
        struct inject_result r;
        int rc = inject_load(pid, argv[3], argv[4], argv[5], 0, &r, err);
        if (rc < 0) printf("error: %s\n", err);
        printf("%s handle=0x%" PRIx64 " start_rc=%d stop_ms=%.3f retries=%u total_ms=%.2f how=%s\n", rc ? "FAIL" : "ok",
               r.handle, r.start_rc, r.stop_ms, r.retries, (mp_now() - t0) * 1e3, r.how);
        return rc ? 1 : 0;
    }
    if (!strcmp(argv[1], "unload") && argc == 4) {
        double ms = 0;
        uint64_t h = strtoull(argv[3], NULL, 0);
        int rc = inject_unload(pid, h, &ms, err);
        if (rc < 0) printf("error: %s\n", err);
        printf("%s stop_ms=%.3f total_ms=%.2f\n", rc ? "FAIL" : "ok", ms, (mp_now() - t0) * 1e3);
        return rc ? 1 : 0;
    }
    return usage();
}
