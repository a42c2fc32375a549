/* A C worker for heapwarden's native-probe tests: it knows nothing of heapwarden except
 * sd_notify. Compiled by the tests with `cc -O1 -g`; run under `probe = "native"`.
 *
 *   worker steady   churn a steady ~8 MiB working set (malloc/free of random sizes)
 *   worker leak     the same, and in slot $LEAK_SLOT also leak $LEAK_KIB KiB every 10 ms
 *                   from leak_in_named_c_function
 *   worker deep     hold 16 KiB blocks allocated at 128 different stack depths (a large
 *                   heap profile), then idle
 *
 * With NATIVE_DRAIN_HANDLER=1 it registers a drain handler with the preload through
 * <heapwarden.h> (declared weak, so it also runs without it); otherwise a drain arrives as SIGTERM. Either way
 * it logs one JSON line and exits 0. Lines on stdout are JSON, which the agent relays. */
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The preload's C API (probes/preload/include): declared weak, NULL without the preload. */
#include <heapwarden.h>

static volatile sig_atomic_t stopping;
static volatile uint64_t drain_deadline_ms;

static void on_sigterm(int sig) { (void)sig; stopping = 1; }
static void on_drain(uint64_t deadline_ms) { drain_deadline_ms = deadline_ms; stopping = 2; }

static void notify_ready(void) {
    const char *addr = getenv("NOTIFY_SOCKET");
    if (!addr || !*addr) return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(addr);
    if (n >= sizeof sa.sun_path) return;
    memcpy(sa.sun_path, addr, n);
    if (sa.sun_path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    sendto(fd, "READY=1", 7, 0, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + n);
    close(fd);
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_random(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

#define SLOTS 512
static void *working_set[SLOTS];

__attribute__((noinline)) void *steady_working_set_alloc(size_t bytes) {
    char *p = malloc(bytes);
    if (p) memset(p, 1, bytes);
    return p;
}

static void churn(void) {
    for (int i = 0; i < 200; i++) {
        size_t at = next_random() % SLOTS;
        free(working_set[at]);
        working_set[at] = steady_working_set_alloc(16 + next_random() % 32768);
    }
}

struct leaked { struct leaked *next; };
static struct leaked *leaked_list;

__attribute__((noinline)) void leak_in_named_c_function(size_t bytes) {
    struct leaked *block = malloc(bytes);
    if (!block) return;
    memset(block, 0x5a, bytes);
    block->next = leaked_list;
    leaked_list = block;
}

__attribute__((noinline)) void *deep_leaf_allocation(void) {
    char *p = malloc(16 * 1024);
    if (p) memset(p, 3, 16 * 1024);
    return p;
}

__attribute__((noinline)) void *allocate_at_depth(int depth) {
    if (depth == 0) return deep_leaf_allocation();
    void *p = allocate_at_depth(depth - 1);
    __asm__ volatile("" : : "r"(p) : "memory"); /* no tail call: every depth is a frame */
    return p;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "steady";
    signal(SIGTERM, on_sigterm);
    const char *handler = getenv("NATIVE_DRAIN_HANDLER");
    if (handler && strcmp(handler, "1") == 0 && heapwarden_set_drain_handler)
        heapwarden_set_drain_handler(on_drain);
    const char *slot = getenv("HEAPWARDEN_WORKER_SLOT");
    const char *leak_slot = getenv("LEAK_SLOT");
    const char *leak_kib = getenv("LEAK_KIB");
    int leaking = strcmp(mode, "leak") == 0 && slot && leak_slot && strcmp(slot, leak_slot) == 0;
    size_t leak_bytes = (size_t)(leak_kib ? atol(leak_kib) : 40) * 1024;
    void *deep[128 * 16];
    if (strcmp(mode, "deep") == 0)
        for (int i = 0; i < 128 * 16; i++) deep[i] = allocate_at_depth(i % 128);
    (void)deep;
    notify_ready();
    printf("{\"msg\":\"native worker ready\",\"mode\":\"%s\",\"leaking\":%s,\"pid\":%d}\n", mode,
           leaking ? "true" : "false", (int)getpid());
    fflush(stdout);
    while (!stopping) {
        if (strcmp(mode, "deep") != 0) churn();
        if (leaking) leak_in_named_c_function(leak_bytes);
        sleep_ms(10);
    }
    if (stopping == 2)
        printf("{\"msg\":\"native worker drained by its handler\",\"deadline_ms\":%llu}\n",
               (unsigned long long)drain_deadline_ms);
    else
        printf("{\"msg\":\"native worker got SIGTERM\"}\n");
    fflush(stdout);
    return 0;
}
