/* fuzz_snapshot.c -- libFuzzer target: arbitrary bytes as a snapshot file (`memprof snapshot`'s
 * format) through the reader `memprof diff` uses, then the tables and the diff built from it. The
 * reader and its helpers are static in cli/cmd_diff.c: the file is compiled into this one. */
#include "cli/cmd_diff.c"

#include <sys/mman.h>

const char flame_page[] = ""; /* cli/flame_page.S's page: not needed here */

static int sink_ready;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    struct view v;
    struct alloc_row *rows;
    size_t n;
    int fd;
    if (!sink_ready) { /* what diff prints goes nowhere */
        /* libFuzzer keeps the FILE it was given for its reports, ASan writes to fd 2: only the
         * CLI's own stderr (each refused file's message) goes to /dev/null */
        if (!freopen("/dev/null", "w", stdout) || !(stderr = fopen("/dev/null", "w"))) abort();
        sink_ready = 1;
    }
    fd = memfd_create("snapshot", MFD_CLOEXEC);
    if (fd < 0) abort();
    if (size && write(fd, data, size) != (ssize_t)size) abort();
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (load_snapshot(path, &v) == 0) {
        for (int by = 0; by < 2; by++) {
            n = rows_build(&v, by ? BY_FUNCTION : BY_LINE, SORT_OWN, &rows);
            rows_free(rows, n);
            diff_by(&v, &v, by ? BY_FUNCTION : BY_LINE, 20);
        }
        view_free(&v);
    }
    close(fd);
    return 0;
}
