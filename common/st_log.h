/*
 * st_log.h - the one format of the service's log lines:
 *
 *   2026-11-27T00:40:33Z <who>: <message>
 *
 * UTC with a Z, so lines from the coordinator and from worker groups on other
 * hosts sort and compare without knowing their time zones. Each line is
 * flushed at once: logs are read live (tests, journald) and a process killed
 * with SIGKILL must not take its last lines with it.
 */
#ifndef ST_LOG_H
#define ST_LOG_H

#include <stdarg.h>
#include <stdio.h>

void st_logv(FILE *out, const char *who, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));

#endif
