/*
 * st_err.c - filling the caller's error buffer (see st_err.h).
 */
#include "st_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int st_fail(char *err, int code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, ST_ERR_LEN, fmt, ap);
        va_end(ap);
    }
    return code;
}

int st_wrap(char *err, int code, const char *fmt, ...)
{
    if (err) {
        char old[ST_ERR_LEN];
        memcpy(old, err, ST_ERR_LEN);
        old[ST_ERR_LEN - 1] = 0;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err, ST_ERR_LEN, fmt, ap);
        va_end(ap);
        if (n < 0) n = 0;
        if (n < ST_ERR_LEN - 1) {
            size_t room = (size_t)(ST_ERR_LEN - 1 - n);
            size_t len = strlen(old);
            if (len > room) len = room; /* the detail is cut, never overflowed */
            memcpy(err + n, old, len);
            err[n + len] = 0;
        }
    }
    return code;
}

const char *st_strerror(int code)
{
    switch (code) {
    case ST_OK: return "ok";
    case ST_EIO: return "i/o error";
    case ST_EFORMAT: return "format error";
    case ST_ENOMEM: return "out of memory";
    case ST_EINVAL: return "invalid value";
    case ST_EUNSUPPORTED: return "unsupported";
    case ST_ENOTFOUND: return "not found";
    case ST_ECUDA: return "cuda error";
    case ST_EMPI: return "mpi error";
    case ST_ESQL: return "database error";
    case ST_ENET: return "network error";
    case ST_ECANCELLED: return "cancelled";
    case ST_ENUMERIC: return "numeric error";
    case ST_EBUSY: return "busy";
    default: return "unknown error";
    }
}
