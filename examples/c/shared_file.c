/*
 * Four MPI ranks share one pfs file through libpfs, the course API.
 *
 * Every rank writes its own 1000-byte part (rank r writes 'a' + r at [1000 r, 1000 r + 1000)).
 * Rank 0 then reads bytes 40..69 (its own part: they come from its cache), rank 1 writes
 * 'X' over bytes 60..80, and rank 0's next read of 40..69 must return rank 1's bytes for
 * 60..69: rank 1's write token revoked rank 0's cached range, which pfs_execstat and the
 * revoke callback show.
 *
 *   mpicc -I libpfs/include shared_file.c -L target/release -lpfs -o shared_file
 *   mpirun -np 4 ./shared_file CONFIG.toml          (examples/c/run-mpi.sh does both)
 */
#include <errno.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pfs.h"

#define PART 1000

static int rank;

/* Exits every rank with the library's message if `r` is an error. */
static long check(long r, const char *what) {
    if (r < 0) {
        fprintf(stderr, "rank %d: %s: %s (%s)\n", rank, what, pfs_strerror((int)r), pfs_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return r;
}
#define CHECK(call) check((long)(call), #call)

static void expect(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "rank %d: FAILED: %s\n", rank, what);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

static int revokes_seen;

static void on_revoke(const struct pfs_revoke_event *e, void *ctx) {
    (void)ctx;
    __atomic_add_fetch(&revokes_seen, 1, __ATOMIC_SEQ_CST);
    fprintf(stderr, "rank %d: revoke of [%llu, %llu) of file %llu, wanted %s\n", rank,
            (unsigned long long)e->start, (unsigned long long)e->end, (unsigned long long)e->file_id,
            e->wanted_write ? "write" : "read");
}

int main(int argc, char **argv) {
    int size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 2 || size < 2) {
        if (rank == 0) fprintf(stderr, "usage: mpirun -np N (N >= 2) %s CONFIG.toml\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    CHECK(pfs_initialize(argv[1]));
    CHECK(pfs_set_revoke_callback(on_revoke, NULL));
    const char *name = "/mpi-shared.bin";
    if (rank == 0) {
        int r = pfs_delete(name); /* left over from an earlier run */
        expect(r == 0 || r == -ENOENT, "pfs_delete of an old copy");
        CHECK(pfs_create(name, 0));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    int fd = (int)CHECK(pfs_open(name, PFS_RDWR));

    char part[PART];
    memset(part, 'a' + rank, PART);
    expect(CHECK(pfs_write(fd, part, PART, (int64_t)rank * PART)) == PART, "a whole part written");
    MPI_Barrier(MPI_COMM_WORLD);

    char seen[30];
    if (rank == 0) {
        expect(CHECK(pfs_read(fd, seen, 30, 40)) == 30, "30 bytes read at 40");
        for (int i = 0; i < 30; i++) expect(seen[i] == 'a', "rank 0's own bytes at 40..69");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 1) {
        char x[21];
        memset(x, 'X', sizeof x);
        expect(CHECK(pfs_write(fd, x, sizeof x, 60)) == 21, "bytes 60..80 written");
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        expect(CHECK(pfs_read(fd, seen, 30, 40)) == 30, "30 bytes read again at 40");
        for (int i = 0; i < 20; i++) expect(seen[i] == 'a', "bytes 40..59 unchanged");
        for (int i = 20; i < 30; i++) expect(seen[i] == 'X', "bytes 60..69 are rank 1's");
        struct pfs_execstat st;
        CHECK(pfs_execstat(fd, &st));
        printf("rank 0 execstat: read hits %llu, misses %llu, writebacks %llu, invalidations %llu, revokes %llu, "
               "token acquires %llu; revoke callbacks %d\n",
               (unsigned long long)st.num_read_hits, (unsigned long long)st.num_read_misses,
               (unsigned long long)st.num_writebacks, (unsigned long long)st.num_invalidations,
               (unsigned long long)st.num_revokes, (unsigned long long)st.num_token_acquires,
               __atomic_load_n(&revokes_seen, __ATOMIC_SEQ_CST));
        expect(st.num_revokes >= 1 && st.num_invalidations >= 1, "the revoke shows in pfs_execstat");
        expect(__atomic_load_n(&revokes_seen, __ATOMIC_SEQ_CST) >= 1, "the revoke callback ran");
    }
    CHECK(pfs_close(fd));
    MPI_Barrier(MPI_COMM_WORLD);

    if (rank == 0) {
        /* The whole file, as every rank left it. */
        fd = (int)CHECK(pfs_open(name, PFS_READ));
        struct pfs_stat st;
        CHECK(pfs_fstat(fd, &st));
        expect(st.size == (uint64_t)size * PART, "the size is every part");
        char *all = malloc((size_t)size * PART);
        expect(all != NULL, "memory");
        expect(CHECK(pfs_read(fd, all, (size_t)size * PART, 0)) == (long)size * PART, "the whole file read");
        for (int i = 0; i < size * PART; i++) {
            char want = (i >= 60 && i <= 80) ? 'X' : (char)('a' + i / PART);
            expect(all[i] == want, "every byte as the ranks wrote it");
        }
        expect(pfs_write(fd, all, 1, 0) == -EBADF, "no write through a read-only descriptor");
        free(all);
        CHECK(pfs_close(fd));
        printf("ok: %d ranks shared %s (%llu bytes, striped over %u servers)\n", size, name,
               (unsigned long long)st.size, st.stripe_width);
    }
    CHECK(pfs_finish());
    MPI_Finalize();
    return 0;
}
