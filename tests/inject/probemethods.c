/* probemethods.c -- runs each of pyprobe's three version readers on its own against a
 * live process, to check every fallback works (includes pyprobe.c for its statics). */
#include "probe/pyprobe.c"

int main(int argc, char **argv)
{
    pid_t pid = argc > 1 ? mp_parse_pid(argv[1]) : -1;
    struct procmap *maps;
    struct pyinfo a, b, c, d, e;
    struct elfimg img;
    char err[MP_ERRLEN], exe[PATH_MAX], path[64];
    int n, io = 0;
    ssize_t len;

    if (pid < 0 || pyprobe(pid, &a, err) < 0) {
        printf("probe: %s\n", pid < 0 ? "usage: probemethods PID" : err);
        return 1;
    }
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    len = readlink(path, exe, sizeof exe - 1);
    exe[len > 0 ? len : 0] = 0;
    n = procmaps_read(pid, &maps);
    for (int i = 0; i < n; i++) {
        if (strcmp(maps[i].path, a.pylib) != 0) continue;
        if (elfimg_open(pid, &maps[i], &img, err) < 0) {
            printf("open: %s\n", err);
            return 1;
        }
        memset(&b, 0, sizeof b);
        memset(&c, 0, sizeof c);
        memset(&d, 0, sizeof d);
        memset(&e, 0, sizeof e);
        printf("bias=0x%llx probe=%s hex=%s buffer=%s code=%s rodata=%s\n", (unsigned long long)img.bias,
               a.version, version_from_hex(pid, &img, &b, &io) == 0 ? b.version : "-",
               version_from_buffer(pid, &img, &c, &io) == 0 ? c.version : "-",
               version_from_code(pid, &img, &d) == 0 ? d.version : "-",
               version_from_rodata(&img, &e) == 0 ? e.version : "-");
        elfimg_close(&img);
    }
    free(maps);
    return 0;
}
