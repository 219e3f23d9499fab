/*
 * LD_PRELOAD shim for the fault tests (tests/integration/faults.rs): makes fsync, fdatasync
 * and sync_file_range fail with EIO, as a dying disk or a NAS that lost its connection does.
 *
 *   FAIL_FSYNC_UNDER=/path   only files under this folder are affected
 *   FAIL_FSYNC_AFTER=N       the first N syncs of such files succeed, every later one fails
 *
 * The data still reaches the page cache (nothing here drops writes); what is tested is that
 * quarry stops at the first failed sync, acknowledges nothing after it, and that the store
 * opens and a later run completes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long synced = 0;

static int affected(int fd) {
    const char *under = getenv("FAIL_FSYNC_UNDER");
    if (under == NULL || *under == '\0') return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = '\0';
    if (strncmp(path, under, strlen(under)) != 0) return 0;
    const char *after = getenv("FAIL_FSYNC_AFTER");
    long limit = after ? atol(after) : 0;
    return __atomic_add_fetch(&synced, 1, __ATOMIC_SEQ_CST) > limit;
}

int fsync(int fd) {
    static int (*real)(int) = NULL;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (affected(fd)) { errno = EIO; return -1; }
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int) = NULL;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (affected(fd)) { errno = EIO; return -1; }
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int) = NULL;
    if (!real) real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    if (affected(fd)) { errno = EIO; return -1; }
    return real(fd, offset, nbytes, flags);
}
