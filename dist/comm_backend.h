// Private to dist/: the table each communicator backend fills, and the watchdog they share.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "comm.h"

typedef struct {
  void (*all_reduce_sum)(sn_comm *c, void *buf, size_t count, sn_dtype dtype);
  void (*all_gather)(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype);
  void (*reduce_scatter_sum)(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype);
  void (*broadcast)(sn_comm *c, void *buf, size_t bytes, int root);
  void (*all_gather_v)(sn_comm *c, const float *send, float *recv, const size_t *counts);
  void (*barrier)(sn_comm *c);
  void (*synchronize)(sn_comm *c);
  void (*all_reduce_f64_host)(sn_comm *c, double *vals, int n);
  void (*all_gather_u64_host)(sn_comm *c, uint64_t mine, uint64_t *all);
  void (*all_reduce_async)(sn_comm *c, void *buf, size_t count, sn_dtype dtype, void *ready_event);
  void (*reduce_scatter_v_async)(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype, void *ready_event);
  void (*wait)(sn_comm *c);
  void (*set_compute_stream)(sn_comm *c, void *stream);
  void (*destroy)(sn_comm *c);  // frees the backend state (not c, not the watchdog)
} sn_comm_vtable;

typedef struct sn_watchdog sn_watchdog;

struct sn_comm_impl {
  const sn_comm_vtable *vt;
  sn_watchdog *watchdog;  // NULL for the single-process backend
  void *state;            // the backend's own
};

// out (len) = partials[0] + partials[1] + … + partials[n-1] (partials: (n, len)), added in rank
// order in fp32: the one sum of the host backends (MPI, TCP), so both give the same bits.
void sn_comm_sum_in_rank_order(float *out, const float *partials, int n, size_t len);

// Backend constructors: fill c->impl (c's rank fields are already set from the environment).
#ifdef SN_WITH_MPI
void sn_comm_mpi_init(sn_comm *c);
#endif
void sn_comm_tcp_init(sn_comm *c, const sn_dist_env *env);
#ifdef SN_WITH_NCCL
void sn_comm_nccl_init(sn_comm *c, const sn_dist_env *env);
#endif

// ---- watchdog ------------------------------------------------------------------------------------
// One thread per communicator that wakes every SN_WATCHDOG_TICK_S and ends the job when
//  - the host has been inside one blocking call (between enter and leave) for more than
//    c->timeout_s (MPI: the host blocks in the collective itself), or
//  - the backend's poll hook reports a failure (NCCL: an asynchronous NCCL error, or GPU work of
//    a collective still unfinished timeout_s after it was enqueued).
// Called on the watchdog thread; returns 0 while all is well, or -1 with a message in msg.
typedef int (*sn_watchdog_poll_fn)(sn_comm *c, char *msg, size_t msg_len);
// The backend's last words before the process exits (MPI_Abort, ncclCommAbort); may be NULL.
typedef void (*sn_watchdog_abort_fn)(sn_comm *c);

sn_watchdog *sn_watchdog_start(sn_comm *c, sn_watchdog_poll_fn poll, sn_watchdog_abort_fn abort_fn);
void sn_watchdog_stop(sn_watchdog *w);
// The host is about to block in `what` (a static string naming the operation and the call) on
// `count` elements; leave when it returns.
void sn_watchdog_enter(sn_watchdog *w, const char *what, size_t count);
void sn_watchdog_leave(sn_watchdog *w);

// Ends the job from any thread: prints "error: rank R/N: <message>" to stderr, calls abort_fn
// (bounded by an alarm, in case it hangs too) and exits with SN_EXIT_FAILURE.
_Noreturn void sn_comm_abort_job(sn_comm *c, sn_watchdog_abort_fn abort_fn, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
