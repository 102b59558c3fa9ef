/*
 * st_log.c - timestamped log lines (see st_log.h).
 */
#include "st_log.h"

#include <time.h>

void st_logv(FILE *out, const char *who, const char *fmt, va_list ap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(out, "%s %s: ", ts, who);
    vfprintf(out, fmt, ap);
    fputc('\n', out);
    fflush(out);
}
