/* heapwarden.h: the C API of the heapwarden native preload (libheapwarden_preload.so).
 *
 * A program run by heapwarden with `probe = "native"` gets the preload in LD_PRELOAD and
 * needs nothing from this header. Include it only to take part in draining: by default a
 * drain reaches the program as SIGTERM; a program that registers a handler is called
 * instead, on the preload's control thread, with the drain deadline.
 *
 * Every function is declared weak: a program built against this header still links and
 * runs without the preload, where the function's address is NULL. Test it first:
 *
 *     #include <heapwarden.h>
 *     static void on_drain(uint64_t deadline_ms) { ... stop accepting, finish, exit ... }
 *     if (heapwarden_set_drain_handler) heapwarden_set_drain_handler(on_drain);
 *
 * Defined in probes/preload/src/drain.rs; tests/tests/c_header.rs checks the two agree. */
#ifndef HEAPWARDEN_H
#define HEAPWARDEN_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Called once per drain with the time the agent grants, in milliseconds, on the
 * preload's control thread: set a flag the program's own loop reads, and return. */
typedef void (*heapwarden_drain_handler)(uint64_t deadline_ms);

/* Registers `handler` for drains; NULL restores the default (SIGTERM). Safe to call from
 * any thread, any number of times; the last registration wins. */
void heapwarden_set_drain_handler(heapwarden_drain_handler handler) __attribute__((weak));

#ifdef __cplusplus
}
#endif

#endif /* HEAPWARDEN_H */
