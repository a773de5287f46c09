/* defaults.h -- the allocation tracking defaults and limits, in one place: the daemon fills them into
 * TrackingConfig, the agent applies them to a 0 field and clamps to the limits, usage texts print them. */
#ifndef MEMPROF_DEFAULTS_H
#define MEMPROF_DEFAULTS_H

#define MP_DEFAULT_SAMPLE_RATE 524288 /* mean bytes between samples (512 KiB) */
#define MP_DEFAULT_MAX_FRAMES 64      /* Python frames kept per sample */
#define MP_MAX_FRAMES 512             /* the agent's limit: more is clamped */
#define MP_DEFAULT_INTERVAL_MS 250    /* how often an attached agent reports */
#define MP_RUN_INTERVAL_MS 100        /* memprof run: finer, runs are often short */
#define MP_RUN_SAMPLE_RATE 65536      /* memprof run: finer too, for its line reports */
#define MP_MIN_INTERVAL_MS 10
#define MP_MAX_INTERVAL_MS 60000

/* A default as text, for usage strings: "default " MP_STR(MP_DEFAULT_MAX_FRAMES). */
#define MP_STR_(x) #x
#define MP_STR(x) MP_STR_(x)

#endif
