/*
 * rzbench: guest workloads for comparing ringzero's backends with each other and with the
 * host (see README.md in this directory).
 *
 *   rzbench <workload>|all [--quick]
 *
 * Each workload prints exactly one line on stdout:
 *
 *   RZBENCH name=<name> ns=<elapsed nanoseconds, CLOCK_MONOTONIC> check=<decimal u64>
 *
 * The checksum depends only on the workload and its size (never on addresses, PIDs or time),
 * so it is the same natively, under --accel bt and under --accel kvm. Errors go to stderr, and
 * the failed workload prints no RZBENCH line; `all` goes on with the others and exits 1.
 *
 * Built as a static baseline x86-64 binary (-march=x86-64 -mtune=generic): ringzero's BT
 * advertises an x86-64-v1 CPU, so nothing beyond SSE2 may appear.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define MiB (1024u * 1024u)

/* One size of every workload; --quick picks the small one. */
struct sizes {
    uint64_t cpu_iters;       /* cpu-int loop iterations */
    uint64_t walk_bytes;      /* mem-walk region */
    uint64_t walk_steps;      /* mem-walk pointer-chase steps */
    uint64_t syscalls;        /* getppid calls */
    uint64_t mmap_iters;      /* mmap-munmap rounds */
    uint64_t mmap_pages;      /* pages mapped, touched and unmapped per round */
    uint64_t forks;           /* fork-wait children */
    uint64_t file_bytes;      /* file-io file size */
    uint64_t file_rounds;     /* file-io write+read rounds */
    uint64_t pipe_bytes;      /* pipe-io bytes streamed */
};

static const struct sizes FULL = {
    .cpu_iters = 200000000,
    .walk_bytes = 256 * (uint64_t)MiB,
    .walk_steps = 4 * 1024 * 1024,
    .syscalls = 1000000,
    .mmap_iters = 10000,
    .mmap_pages = 64,
    .forks = 10000,
    .file_bytes = 16 * (uint64_t)MiB,
    .file_rounds = 16,
    .pipe_bytes = 128 * (uint64_t)MiB,
};

static const struct sizes QUICK = {
    .cpu_iters = 2000000,
    .walk_bytes = 16 * (uint64_t)MiB,
    .walk_steps = 256 * 1024,
    .syscalls = 20000,
    .mmap_iters = 200,
    .mmap_pages = 64,
    .forks = 100,
    .file_bytes = 1 * (uint64_t)MiB,
    .file_rounds = 4,
    .pipe_bytes = 2 * (uint64_t)MiB,
};

/* Block size of file-io and pipe-io reads and writes. */
#define IO_BLOCK 4096u

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64: the deterministic generator behind every pseudo-random choice here. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

/* Folds one 64-bit word into a running hash (FNV-1a style over words). */
static uint64_t mix(uint64_t h, uint64_t w)
{
    return (h ^ w) * 0x100000001B3u;
}

#define HASH_INIT 0xCBF29CE484222325u

static void fail(const char *name, const char *what)
{
    fprintf(stderr, "rzbench: %s: %s: %s\n", name, what, strerror(errno));
}

/* ---------------------------------------------------------------------------------------- */

/* Integer ALU work: xorshift, multiply, shifts, a data-dependent branch and a 32-bit divide
 * per iteration, all in one dependency chain so the compiler can neither fold nor vectorise. */
static int cpu_int(const struct sizes *sz, uint64_t *check)
{
    uint64_t x = 0x0123456789ABCDEFu, acc = 0;
    for (uint64_t i = 0; i < sz->cpu_iters; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc += (x * 0x2545F4914F6CDD1Du) >> (i & 31);
        if (x & 1)
            acc ^= i;
        else
            acc = (acc << 5) | (acc >> 59);
        acc += (uint32_t)(x >> 32) / ((uint32_t)i | 1u);
    }
    *check = acc ^ x;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

/* One node of mem-walk: the first two words of a cache line somewhere in a page. */
struct node {
    struct node *next;
    uint64_t index;
};

/* Where page i's node sits: a line offset that varies with i so that the nodes spread over
 * the cache sets instead of all landing on line 0. */
static struct node *node_at(char *base, uint64_t i)
{
    return (struct node *)(base + i * PAGE + ((i * 37) & 63) * 64);
}

/* Enough memory for `bytes` more, by MemAvailable (true if it cannot be read): better a clear
 * error than the OOM killer. */
static int memory_available(uint64_t bytes)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long long kb;
    int ok = 1;
    if (!f)
        return 1;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            ok = kb * 1024 >= bytes;
            break;
        }
    }
    fclose(f);
    return ok;
}

/* A pointer chase through a random cyclic permutation of the pages of the region, one node
 * per 4 KiB page: every step is a dependent load from a different page, so it misses the TLB
 * once the region outgrows it. Setup (faulting in the region, Sattolo's shuffle) is not timed;
 * `*t0` is set when the chase starts. */
static int mem_walk(const struct sizes *sz, uint64_t *check, uint64_t *t0)
{
    uint64_t pages = sz->walk_bytes / PAGE, seed = 42, sum = 0;
    char *base;
    struct node *p;
    if (!memory_available(sz->walk_bytes + 16 * (uint64_t)MiB)) {
        fprintf(stderr,
                "rzbench: mem-walk: needs %" PRIu64 " MiB free (MemAvailable); give the guest "
                "more memory (--mem 512M) or use --quick\n",
                sz->walk_bytes / MiB + 16);
        return -1;
    }
    base = mmap(NULL, sz->walk_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                0);
    if (base == MAP_FAILED) {
        fail("mem-walk", "mmap");
        return -1;
    }
    /* 4 KiB pages, not transparent huge pages: the point is one TLB entry per step. */
    madvise(base, sz->walk_bytes, MADV_NOHUGEPAGE);
    /* Sattolo's algorithm over node indices (kept in the nodes themselves) yields a single
     * cycle through every page, so no step stays on its page. */
    for (uint64_t i = 0; i < pages; i++)
        node_at(base, i)->index = i;
    for (uint64_t i = pages - 1; i > 0; i--) {
        uint64_t j = splitmix(&seed) % i;
        struct node *a = node_at(base, i), *b = node_at(base, j);
        uint64_t t = a->index;
        a->index = b->index;
        b->index = t;
    }
    /* Now page i's successor is page index[i]; turn the indices into pointers and record in
     * each node its own page number (the checksum adds those, never addresses). */
    for (uint64_t i = 0; i < pages; i++) {
        struct node *n = node_at(base, i);
        n->next = node_at(base, n->index);
    }
    for (uint64_t i = 0; i < pages; i++)
        node_at(base, i)->index = i;

    *t0 = now_ns();
    p = node_at(base, 0);
    for (uint64_t s = 0; s < sz->walk_steps; s++) {
        p = p->next;
        sum += p->index;
    }
    *check = sum * 31 + p->index;
    munmap(base, sz->walk_bytes);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

/* The cheapest system call there is, through the raw syscall instruction (no libc caching).
 * The parent's PID differs between hosts, so the checksum counts the calls that agree with
 * the first: always the number of calls. */
static int getppid_loop(const struct sizes *sz, uint64_t *check)
{
    long first = syscall(SYS_getppid);
    uint64_t same = 0;
    for (uint64_t i = 0; i < sz->syscalls; i++)
        same += syscall(SYS_getppid) == first;
    *check = same;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

/* Page-table churn: map a fresh anonymous region, fault in every page with a write, read the
 * words back, unmap; again and again. */
static int mmap_munmap(const struct sizes *sz, uint64_t *check)
{
    uint64_t len = sz->mmap_pages * PAGE, sum = 0;
    for (uint64_t r = 0; r < sz->mmap_iters; r++) {
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            fail("mmap-munmap", "mmap");
            return -1;
        }
        for (uint64_t i = 0; i < sz->mmap_pages; i++)
            *(volatile uint64_t *)(m + i * PAGE + (i & 7) * 8) = r * sz->mmap_pages + i;
        for (uint64_t i = 0; i < sz->mmap_pages; i++)
            sum += *(volatile uint64_t *)(m + i * PAGE + (i & 7) * 8);
        if (munmap(m, len) != 0) {
            fail("mmap-munmap", "munmap");
            return -1;
        }
    }
    *check = sum;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

/* Process creation and teardown: fork a child that exits at once with a status derived from
 * its number, wait for it, add up the statuses. */
static int fork_wait(const struct sizes *sz, uint64_t *check)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < sz->forks; i++) {
        int status;
        pid_t pid = fork();
        if (pid < 0) {
            fail("fork-wait", "fork");
            return -1;
        }
        if (pid == 0)
            _exit((int)(i * 7 & 0xff));
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
            fail("fork-wait", "waitpid");
            return -1;
        }
        sum = sum * 3 + (uint64_t)WEXITSTATUS(status);
    }
    *check = sum;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

/* Fills `buf` with the deterministic contents of block `b` of round `r`: pseudo-random words
 * seeded once, with the first word stamped so every block differs. */
static void fill_block(uint64_t *buf, const uint64_t *pattern, uint64_t r, uint64_t b)
{
    memcpy(buf, pattern, IO_BLOCK);
    buf[0] = r << 32 | b;
}

static uint64_t hash_block(uint64_t h, const uint64_t *buf)
{
    for (unsigned k = 0; k < IO_BLOCK / 8; k += 4)
        h = mix(h, buf[k] + buf[k + 1] + buf[k + 2] + buf[k + 3]);
    return h;
}

static void make_pattern(uint64_t *pattern)
{
    uint64_t seed = 7;
    for (unsigned k = 0; k < IO_BLOCK / 8; k++)
        pattern[k] = splitmix(&seed);
}

/* read() until `len` bytes or end of file; returns the bytes read or -1. */
static ssize_t read_full(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, (char *)buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

static int write_full(int fd, const void *buf, size_t len)
{
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(fd, (const char *)buf + put, len - put);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        put += (size_t)n;
    }
    return 0;
}

/* File I/O through the page cache: write a file in 4 KiB blocks, read it back and hash it,
 * delete it; several rounds. The file lives in $TMPDIR or /tmp (a tmpfs in the yardstick). */
static int file_io(const struct sizes *sz, uint64_t *check)
{
    static uint64_t pattern[IO_BLOCK / 8], buf[IO_BLOCK / 8];
    const char *dir = getenv("TMPDIR");
    char path[512];
    uint64_t h = HASH_INIT, blocks = sz->file_bytes / IO_BLOCK;
    if (!dir || !*dir)
        dir = "/tmp";
    snprintf(path, sizeof path, "%s/rzbench-file-io.%ld", dir, (long)getpid());
    make_pattern(pattern);
    for (uint64_t r = 0; r < sz->file_rounds; r++) {
        int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
        if (fd < 0) {
            fail("file-io", path);
            return -1;
        }
        for (uint64_t b = 0; b < blocks; b++) {
            fill_block(buf, pattern, r, b);
            if (write_full(fd, buf, IO_BLOCK) != 0) {
                fail("file-io", "write");
                close(fd);
                unlink(path);
                return -1;
            }
        }
        close(fd);
        fd = open(path, O_RDONLY);
        if (fd < 0) {
            fail("file-io", path);
            unlink(path);
            return -1;
        }
        for (uint64_t b = 0; b < blocks; b++) {
            if (read_full(fd, buf, IO_BLOCK) != IO_BLOCK) {
                fail("file-io", "short read");
                close(fd);
                unlink(path);
                return -1;
            }
            h = hash_block(h, buf);
        }
        close(fd);
        unlink(path);
    }
    *check = h;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

/* Pipe throughput with a context switch per block or so: the parent streams 4 KiB blocks into
 * a pipe, a child reads and hashes them and sends the hash back through a second pipe. */
static int pipe_io(const struct sizes *sz, uint64_t *check)
{
    static uint64_t pattern[IO_BLOCK / 8], buf[IO_BLOCK / 8];
    int data[2], result[2], status;
    uint64_t blocks = sz->pipe_bytes / IO_BLOCK, h = 0;
    pid_t pid;
    make_pattern(pattern);
    if (pipe(data) != 0 || pipe(result) != 0) {
        fail("pipe-io", "pipe");
        return -1;
    }
    pid = fork();
    if (pid < 0) {
        fail("pipe-io", "fork");
        return -1;
    }
    if (pid == 0) {
        uint64_t ch = HASH_INIT;
        ssize_t n;
        close(data[1]);
        close(result[0]);
        while ((n = read_full(data[0], buf, IO_BLOCK)) == IO_BLOCK)
            ch = hash_block(ch, buf);
        _exit(n == 0 && write_full(result[1], &ch, sizeof ch) == 0 ? 0 : 1);
    }
    close(data[0]);
    close(result[1]);
    for (uint64_t b = 0; b < blocks; b++) {
        fill_block(buf, pattern, 0, b);
        if (write_full(data[1], buf, IO_BLOCK) != 0) {
            fail("pipe-io", "write");
            break;
        }
    }
    close(data[1]);
    if (read_full(result[0], &h, sizeof h) != sizeof h) {
        fail("pipe-io", "child's hash");
        h = 0;
    }
    close(result[0]);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "rzbench: pipe-io: the reader failed\n");
        return -1;
    }
    if (h == 0)
        return -1;
    *check = h;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */

struct workload {
    const char *name;
    int (*run)(const struct sizes *, uint64_t *);
};

static int mem_walk_entry(const struct sizes *sz, uint64_t *check);

/* In the order `all` runs them. */
static const struct workload WORKLOADS[] = {
    {"cpu-int", cpu_int},
    {"mem-walk", mem_walk_entry},
    {"getppid", getppid_loop},
    {"mmap-munmap", mmap_munmap},
    {"fork-wait", fork_wait},
    {"file-io", file_io},
    {"pipe-io", pipe_io},
};
#define NWORKLOADS (sizeof WORKLOADS / sizeof WORKLOADS[0])

/* mem-walk times only its chase; it hands its start time over through this. */
static uint64_t walk_start;

static int mem_walk_entry(const struct sizes *sz, uint64_t *check)
{
    return mem_walk(sz, check, &walk_start);
}

/* Runs one workload and prints its line; 0 on success. */
static int run_one(const struct workload *w, const struct sizes *sz)
{
    char line[160];
    uint64_t check = 0, t0, t1;
    int len;
    walk_start = 0;
    t0 = now_ns();
    if (w->run(sz, &check) != 0)
        return -1;
    t1 = now_ns();
    if (walk_start)
        t0 = walk_start;
    len = snprintf(line, sizeof line, "RZBENCH name=%s ns=%" PRIu64 " check=%" PRIu64 "\n",
                   w->name, t1 - t0, check);
    /* One write(2) per line: never interleaved, never duplicated by a forked child. */
    return write_full(1, line, (size_t)len);
}

static void usage(FILE *to)
{
    fprintf(to, "usage: rzbench <workload>|all [--quick]\nworkloads:");
    for (size_t i = 0; i < NWORKLOADS; i++)
        fprintf(to, " %s", WORKLOADS[i].name);
    fprintf(to, "\n");
}

int main(int argc, char **argv)
{
    const struct sizes *sz = &FULL;
    const char *which = NULL;
    int failed = 0, found = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0 || strcmp(argv[i], "-q") == 0) {
            sz = &QUICK;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || which) {
            usage(stderr);
            return 2;
        } else {
            which = argv[i];
        }
    }
    if (!which) {
        usage(stderr);
        return 2;
    }
    for (size_t i = 0; i < NWORKLOADS; i++) {
        if (strcmp(which, "all") != 0 && strcmp(which, WORKLOADS[i].name) != 0)
            continue;
        found = 1;
        if (run_one(&WORKLOADS[i], sz) != 0)
            failed = 1;
    }
    if (!found) {
        fprintf(stderr, "rzbench: unknown workload '%s'\n", which);
        usage(stderr);
        return 2;
    }
    return failed;
}
