/*
 * fuzz_memfile.h - the fuzz input as a file, for the harnesses whose parser
 * takes a path (model files, state files, the vocabulary): an anonymous
 * in-memory file (memfd), so mmap and libzip see a real file and nothing
 * touches the disk. Header-only because run_all.sh builds each harness from
 * one source file.
 */
#ifndef ST_FUZZ_MEMFILE_H
#define ST_FUZZ_MEMFILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* Writes data into a fresh memfd and its /proc/self/fd path into path;
 * returns the descriptor (the caller closes it), or -1 when it cannot. */
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t path_len)
{
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, path_len, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
