/*
 * libpfs from C, driven by libpfs/tests/c_api.rs: ./api_check CONFIG.toml
 * Checks errors (negative errno, pfs_strerror, pfs_last_error), a write and read back, fstat,
 * and, once the test's own client read the file (revoking our write token), the revoke in
 * pfs_execstat and the callback. Prints "written" and waits for a line on stdin in between;
 * ends with "ok 0" or "FAILED n".
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "pfs.h"

static int failures;
#define EXPECT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAILED line %d: %s (last error: %s)\n", __LINE__, #cond, pfs_last_error()); \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void on_revoke(const struct pfs_revoke_event *e, void *ctx) {
    (void)e;
    __atomic_add_fetch((int *)ctx, 1, __ATOMIC_SEQ_CST);
}

#define LEN 100000

int main(int argc, char **argv) {
    static int callbacks;
    static char buf[LEN], back[LEN];
    if (argc != 2) return 2;
    EXPECT(pfs_open("/x", PFS_READ) == -EINVAL); /* before pfs_initialize */
    EXPECT(pfs_initialize(argv[1]) == 0);
    EXPECT(pfs_initialize(argv[1]) == -EALREADY);
    EXPECT(pfs_set_revoke_callback(on_revoke, &callbacks) == 0);

    EXPECT(pfs_open("/missing", PFS_READ) == -ENOENT);
    EXPECT(strstr(pfs_last_error(), "/missing") != NULL);
    EXPECT(strcmp(pfs_strerror(-ENOENT), "no such file or directory") == 0);
    EXPECT(pfs_create("c.bin", 2) == 0); /* a name without a slash is taken from the root */
    EXPECT(pfs_create("/c.bin", 2) == -EEXIST);
    EXPECT(pfs_open("/c.bin", 7) == -EINVAL);

    int fd = pfs_open("/c.bin", PFS_RDWR);
    EXPECT(fd >= 0);
    for (int i = 0; i < LEN; i++) buf[i] = (char)(i * 7);
    EXPECT(pfs_write(fd, buf, LEN, 0) == LEN);
    EXPECT(pfs_read(fd, back, LEN, 0) == LEN);
    EXPECT(memcmp(buf, back, LEN) == 0);
    EXPECT(pfs_read(fd, back, 10, LEN) == 0); /* at the end */
    struct pfs_stat st;
    EXPECT(pfs_fstat(fd, &st) == 0);
    EXPECT(st.size == LEN && st.stripe_width == 2 && st.chunk_size > 0);
    EXPECT(pfs_fstat(fd, NULL) == -EINVAL);
    EXPECT(pfs_read(999, back, 1, 0) == -EBADF);
    EXPECT(pfs_write(fd, buf, 1, -1) == -EINVAL);

    /* The bytes are in our cache under our write token; the test reads them from its own
     * client, which revokes the token: we write back, then it reads. */
    printf("written\n");
    fflush(stdout);
    char line[16];
    EXPECT(fgets(line, sizeof line, stdin) != NULL);
    struct pfs_execstat es;
    EXPECT(pfs_execstat(fd, &es) == 0);
    EXPECT(es.num_revokes >= 1);
    EXPECT(es.num_writebacks >= 1);
    EXPECT(__atomic_load_n(&callbacks, __ATOMIC_SEQ_CST) >= 1);

    EXPECT(pfs_close(fd) == 0);
    EXPECT(pfs_close(fd) == -EBADF);
    EXPECT(pfs_delete("/c.bin") == 0);
    EXPECT(pfs_delete("/c.bin") == -ENOENT);
    EXPECT(pfs_finish() == 0);
    EXPECT(pfs_finish() == -EINVAL);
    printf(failures ? "FAILED %d\n" : "ok %d\n", failures);
    return failures != 0;
}
