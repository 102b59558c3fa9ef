/*
 * st_time.h - the monotonic clock as the service measures with it: seconds
 * (as a double) for durations, timeouts and throughput, and whole
 * milliseconds for deadlines and heartbeats on the wire. Monotonic, so a
 * clock step on the host (NTP, a suspended laptop) never shortens a timeout
 * or makes a duration negative.
 */
#ifndef ST_TIME_H
#define ST_TIME_H

#include <stdint.h>
#include <time.h>

/* Seconds on the monotonic clock. */
static inline double st_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Whole milliseconds on the monotonic clock. */
static inline int64_t st_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
