/* serve.h -- memprofd serve: the transport (conn.c) wired to what the messages mean. */
#ifndef MEMPROF_SERVE_H
#define MEMPROF_SERVE_H

/* Run the daemon in the foreground on socket_path until stopped. 0, or -1 with err. */
int serve_run(const char *socket_path, char *err);

#endif
