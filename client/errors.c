/* errors.c -- what the last failed call to memprofd was (ErrorReply.Code) and the exit status it maps to
 * (apart from client.c: tests/objects' harness links it beside its stand-in calls). */
#include "client/client.h"
#include "common/exitcodes.h"
#include "common/util.h"

static Memprof__ErrorReply__Code last_code;

Memprof__ErrorReply__Code client_error_code(void) { return last_code; }

void client_error_set(Memprof__ErrorReply__Code code) { last_code = code; }

int client_reply_error(const char *error, Memprof__ErrorReply__Code code, char *err)
{
    if (!error || !*error) return 0;
    mp_err(err, "%s", error);
    client_error_set(code);
    return -1;
}

int client_exit_status(Memprof__ErrorReply__Code code)
{
    switch (code) {
    case MEMPROF__ERROR_REPLY__CODE__NO_SUCH_PROCESS: return MP_EXIT_NO_PROCESS;
    case MEMPROF__ERROR_REPLY__CODE__PERMISSION_DENIED: return MP_EXIT_PERMISSION;
    case MEMPROF__ERROR_REPLY__CODE__NOT_ATTACHED: return MP_EXIT_NOT_ATTACHED;
    case MEMPROF__ERROR_REPLY__CODE__UNSUPPORTED_TARGET: return MP_EXIT_UNSUPPORTED;
    default: return MP_EXIT_FAIL;
    }
}
