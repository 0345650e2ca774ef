// Communicator dispatch, argument checks, the single-process backend and the watchdog.
#define _GNU_SOURCE
#include "comm.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm_backend.h"
#include "common.h"

#ifdef SN_WITH_CUDA
#include <cuda_runtime.h>
#endif

#define SN_WATCHDOG_TICK_S 0.1
// After a timeout the backend's abort (MPI_Abort, ncclCommAbort) gets this long before SIGALRM's
// default action ends the process anyway: the abort itself may hang on a broken peer.
#define SN_ABORT_GRACE_S 10
#define SN_COMM_MSG_MAX 1024

// ---- helpers -----------------------------------------------------------------------------------

const char *sn_comm_backend_name(sn_comm_backend backend) {
  switch (backend) {
    case SN_COMM_SINGLE: return "single";
    case SN_COMM_MPI: return "mpi";
    case SN_COMM_NCCL: return "nccl";
    case SN_COMM_TCP: return "tcp";
  }
  return "?";
}

_Noreturn void sn_comm_abort_job(sn_comm *c, sn_watchdog_abort_fn abort_fn, const char *fmt, ...) {
  char msg[SN_COMM_MSG_MAX];
  int used = snprintf(msg, sizeof(msg), "error: rank %d/%d: ", c->rank, c->world_size);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + used, sizeof(msg) - (size_t)used - 1, fmt, ap);
  va_end(ap);
  strcat(msg, "\n");
  fflush(stdout);
  // One write(2): lines of several ranks do not interleave mid-line.
  ssize_t ignored = write(STDERR_FILENO, msg, strlen(msg));
  (void)ignored;
  alarm(SN_ABORT_GRACE_S);
  if (abort_fn) abort_fn(c);
  _exit(SN_EXIT_FAILURE);  // not exit(): atexit handlers of CUDA/MPI may block on the dead peer
}

void sn_comm_sum_in_rank_order(float *out, const float *partials, int n, size_t len) {
  if (len == 0) return;  // a slice can be empty when the buffer has fewer elements than ranks
  memcpy(out, partials, len * sizeof(float));
  for (int r = 1; r < n; r++) {
    const float *p = partials + (size_t)r * len;
    for (size_t i = 0; i < len; i++) out[i] += p[i];
  }
}

// ---- watchdog ----------------------------------------------------------------------------------

struct sn_watchdog {
  sn_comm *comm;
  sn_watchdog_poll_fn poll;
  sn_watchdog_abort_fn abort_fn;
  pthread_t thread;
  pthread_mutex_t mutex;
  pthread_cond_t wake;
  int stop;
  const char *blocked_in;  // NULL when the host is not inside a watched call
  size_t blocked_count;
  double blocked_since_s;
};

static void *watchdog_main(void *arg) {
  sn_watchdog *w = arg;
  sn_comm *c = w->comm;
  pthread_mutex_lock(&w->mutex);
  while (!w->stop) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long tick_ns = (long)(SN_WATCHDOG_TICK_S * 1e9);
    until.tv_nsec += tick_ns;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec += 1;
      until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&w->wake, &w->mutex, &until);
    if (w->stop) break;
    if (w->blocked_in && sn_now_s() - w->blocked_since_s > c->timeout_s) {
      sn_comm_abort_job(c, w->abort_fn,
                        "%s on %zu elements did not complete within %.0f s (%s backend, launcher %s): "
                        "another rank probably failed or hangs; aborting the job",
                        w->blocked_in, w->blocked_count, c->timeout_s,
                        sn_comm_backend_name(c->backend), c->launcher);
    }
    if (w->poll) {
      pthread_mutex_unlock(&w->mutex);  // the hook may take a while (CUDA queries)
      char msg[SN_COMM_MSG_MAX];
      if (w->poll(c, msg, sizeof(msg)) != 0) sn_comm_abort_job(c, w->abort_fn, "%s", msg);
      pthread_mutex_lock(&w->mutex);
    }
  }
  pthread_mutex_unlock(&w->mutex);
  return NULL;
}

sn_watchdog *sn_watchdog_start(sn_comm *c, sn_watchdog_poll_fn poll, sn_watchdog_abort_fn abort_fn) {
  sn_watchdog *w = callocCheck(1, sizeof(*w));
  w->comm = c;
  w->poll = poll;
  w->abort_fn = abort_fn;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&w->wake, &attr);
  pthread_condattr_destroy(&attr);
  pthread_mutex_init(&w->mutex, NULL);
  int err = pthread_create(&w->thread, NULL, watchdog_main, w);
  if (err) sn_fatal("communicator: cannot start the watchdog thread: %s", strerror(err));
  return w;
}

void sn_watchdog_stop(sn_watchdog *w) {
  if (!w) return;
  pthread_mutex_lock(&w->mutex);
  w->stop = 1;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->mutex);
  pthread_join(w->thread, NULL);
  pthread_cond_destroy(&w->wake);
  pthread_mutex_destroy(&w->mutex);
  free(w);
}

void sn_watchdog_enter(sn_watchdog *w, const char *what, size_t count) {
  pthread_mutex_lock(&w->mutex);
  w->blocked_in = what;
  w->blocked_count = count;
  w->blocked_since_s = sn_now_s();
  pthread_mutex_unlock(&w->mutex);
}

void sn_watchdog_leave(sn_watchdog *w) {
  pthread_mutex_lock(&w->mutex);
  w->blocked_in = NULL;
  pthread_mutex_unlock(&w->mutex);
}

// ---- single process: collectives over one rank are copies ---------------------------------------

typedef void (*copy_fn)(void *dst, const void *src, size_t bytes);

typedef struct {
  copy_fn copy;
  void *stream;  // CUDA builds without NCCL: copies are ordered on the compute stream
} single_state;

static void host_copy(void *dst, const void *src, size_t bytes) {
  if (bytes && dst != src) memmove(dst, src, bytes);
}

static single_state *single_of(sn_comm *c) { return c->impl->state; }

static void single_copy(sn_comm *c, void *dst, const void *src, size_t bytes) {
  single_state *s = single_of(c);
  if (s->copy) {
    s->copy(dst, src, bytes);
    return;
  }
#ifdef SN_WITH_CUDA
  if (bytes && dst != src) {
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, (cudaStream_t)s->stream);
    if (e != cudaSuccess) sn_fatal("communicator: cudaMemcpyAsync of %zu bytes: %s", bytes, cudaGetErrorString(e));
  }
#endif
}

static void single_all_reduce_sum(sn_comm *c, void *buf, size_t count, sn_dtype dtype) {}
static void single_all_gather(sn_comm *c, const void *send, void *recv, size_t count, sn_dtype dtype) {
  single_copy(c, recv, send, count * sn_dtype_size(dtype));
}
static void single_reduce_scatter_sum(sn_comm *c, const void *send, void *recv, size_t count, sn_dtype dtype) {
  single_copy(c, recv, send, count * sn_dtype_size(dtype));
}
static void single_broadcast(sn_comm *c, void *buf, size_t bytes, int root) {}
static void single_all_gather_v(sn_comm *c, const float *send, float *recv, const size_t *counts) {
  single_copy(c, recv, send, counts[0] * sizeof(float));
}
static void single_nothing(sn_comm *c) {}
static void single_all_reduce_f64_host(sn_comm *c, double *vals, int n) {}
static void single_all_gather_u64_host(sn_comm *c, uint64_t mine, uint64_t *all) { all[0] = mine; }
static void single_all_reduce_async(sn_comm *c, void *buf, size_t count, sn_dtype dtype, void *ready) {}
static void single_reduce_scatter_v_async(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype,
                                          void *ready) {}
static void single_set_compute_stream(sn_comm *c, void *stream) { single_of(c)->stream = stream; }
static void single_destroy(sn_comm *c) { free(c->impl->state); }

static const sn_comm_vtable SINGLE_VTABLE = {
    .all_reduce_sum = single_all_reduce_sum,
    .all_gather = single_all_gather,
    .reduce_scatter_sum = single_reduce_scatter_sum,
    .broadcast = single_broadcast,
    .all_gather_v = single_all_gather_v,
    .barrier = single_nothing,
    .synchronize = single_nothing,
    .all_reduce_f64_host = single_all_reduce_f64_host,
    .all_gather_u64_host = single_all_gather_u64_host,
    .all_reduce_async = single_all_reduce_async,
    .reduce_scatter_v_async = single_reduce_scatter_v_async,
    .wait = single_nothing,
    .set_compute_stream = single_set_compute_stream,
    .destroy = single_destroy,
};

// on_device: buffers are CUDA device memory (a CUDA build without NCCL).
static void single_init(sn_comm *c, int on_device) {
  single_state *s = callocCheck(1, sizeof(*s));
  s->copy = on_device ? NULL : host_copy;
  c->impl = callocCheck(1, sizeof(*c->impl));
  c->impl->vt = &SINGLE_VTABLE;
  c->impl->state = s;
  c->backend = SN_COMM_SINGLE;
}

// ---- creation ----------------------------------------------------------------------------------

// mpirun and PMI launchers say so by their variables; srun --mpi=pmix sets PMIX_RANK beside
// Slurm's own. Anything else (srun --mpi=none, RANK/WORLD_SIZE) has no MPI to talk through.
static int started_by_mpi(const sn_dist_env *env) {
  return strcmp(env->launcher, "mpirun") == 0 || strcmp(env->launcher, "pmi") == 0 || getenv("PMIX_RANK");
}

sn_comm *sn_comm_create(const char *device, double timeout_s) {
  sn_dist_env env = sn_dist_detect();
  sn_comm *c = callocCheck(1, sizeof(*c));
  c->rank = env.rank;
  c->world_size = env.world_size;
  c->local_rank = env.local_rank;
  c->local_size = env.local_size;
  c->launcher = env.launcher;
  c->timeout_s = timeout_s > 0 ? timeout_s : SN_COMM_DEFAULT_TIMEOUT_S;

  if (device && strcmp(device, "cpu") == 0) {
    if (env.world_size == 1) {
      single_init(c, 0);
    } else if (started_by_mpi(&env)) {
#ifdef SN_WITH_MPI
      sn_comm_mpi_init(c);
#else
      sn_bad_input("--device cpu with %d ranks (launcher %s) needs MPI, but this build has no MPI "
                   "(rebuild with MPI installed and SN_WITH_MPI=ON)",
                   env.world_size, env.launcher);
#endif
    } else {
      if (!env.master_addr[0] || env.master_port == 0)
        sn_bad_input("--device cpu with %d ranks (launcher %s) and no MPI launcher: set MASTER_ADDR "
                     "and MASTER_PORT (rank 0's node and a free port) for the TCP communicator, or "
                     "start the ranks with mpirun (or srun --mpi=pmix)",
                     env.world_size, env.launcher);
      sn_comm_tcp_init(c, &env);
    }
  } else if (device && strcmp(device, "cuda") == 0) {
#ifdef SN_WITH_NCCL
    sn_comm_nccl_init(c, &env);
#elif defined(SN_WITH_CUDA)
    if (env.world_size > 1)
      sn_bad_input("--device cuda with %d ranks (launcher %s) needs NCCL, but this build has none "
                   "(install NCCL and rebuild with SN_WITH_NCCL=ON)",
                   env.world_size, env.launcher);
    single_init(c, 1);
#else
    sn_bad_input("--device cuda: this build has no CUDA backend");
#endif
  } else {
    sn_bad_input("unknown device '%s' for the communicator (expected cpu or cuda)", device ? device : "(null)");
  }
  return c;
}

void sn_comm_destroy(sn_comm *c) {
  if (!c) return;
  c->impl->vt->destroy(c);
  sn_watchdog_stop(c->impl->watchdog);
  free(c->impl);
  free(c);
}

// ---- dispatch with argument checks --------------------------------------------------------------

static void check_dtype(sn_comm *c, sn_dtype dtype, const char *op) {
  if (dtype != SN_DTYPE_F32 && dtype != SN_DTYPE_BF16)
    sn_fatal("communicator %s: dtype %d is not supported (f32 or bf16)", op, (int)dtype);
  if (dtype == SN_DTYPE_BF16 && (c->backend == SN_COMM_MPI || c->backend == SN_COMM_TCP))
    sn_fatal("communicator %s: bf16 on the %s backend: the CPU backend is fp32 only", op,
             sn_comm_backend_name(c->backend));
}

void sn_comm_set_compute_stream(sn_comm *c, void *stream) { c->impl->vt->set_compute_stream(c, stream); }

void sn_comm_all_reduce_sum(sn_comm *c, void *buf, size_t count, sn_dtype dtype) {
  check_dtype(c, dtype, "all_reduce_sum");
  if (count) c->impl->vt->all_reduce_sum(c, buf, count, dtype);
}

void sn_comm_all_gather(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  check_dtype(c, dtype, "all_gather");
  if (count_per_rank) c->impl->vt->all_gather(c, send, recv, count_per_rank, dtype);
}

void sn_comm_reduce_scatter_sum(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  check_dtype(c, dtype, "reduce_scatter_sum");
  if (count_per_rank) c->impl->vt->reduce_scatter_sum(c, send, recv, count_per_rank, dtype);
}

void sn_comm_broadcast(sn_comm *c, void *buf, size_t bytes, int root) {
  if (root < 0 || root >= c->world_size)
    sn_fatal("communicator broadcast: root %d is not a rank of a world of %d", root, c->world_size);
  if (bytes) c->impl->vt->broadcast(c, buf, bytes, root);
}

void sn_comm_all_gather_v(sn_comm *c, const float *send, float *recv, const size_t *counts) {
  c->impl->vt->all_gather_v(c, send, recv, counts);
}

void sn_comm_barrier(sn_comm *c) { c->impl->vt->barrier(c); }
void sn_comm_synchronize(sn_comm *c) { c->impl->vt->synchronize(c); }

void sn_comm_all_reduce_f64_host(sn_comm *c, double *vals, int n) {
  if (n > 0) c->impl->vt->all_reduce_f64_host(c, vals, n);
}

void sn_comm_all_gather_u64_host(sn_comm *c, uint64_t mine, uint64_t *all) {
  c->impl->vt->all_gather_u64_host(c, mine, all);
}

// Through the u64 gather, so counts are exact at any size (not only below 2^53, as doubles were).
void sn_comm_all_gather_counts_host(sn_comm *c, size_t my_count, size_t *counts) {
  uint64_t *all = mallocCheck((size_t)c->world_size * sizeof *all);
  sn_comm_all_gather_u64_host(c, (uint64_t)my_count, all);
  for (int r = 0; r < c->world_size; r++) counts[r] = (size_t)all[r];
  free(all);
}

void sn_comm_all_reduce_async(sn_comm *c, void *buf, size_t count, sn_dtype dtype, void *ready_event) {
  check_dtype(c, dtype, "all_reduce_async");
  if (count) c->impl->vt->all_reduce_async(c, buf, count, dtype, ready_event);
}

void sn_comm_reduce_scatter_v_async(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype,
                                    void *ready_event) {
  check_dtype(c, dtype, "reduce_scatter_v_async");
  size_t total = 0;
  for (int r = 0; r < c->world_size; r++) total += counts[r];
  if (total) c->impl->vt->reduce_scatter_v_async(c, buf, counts, dtype, ready_event);
}

void sn_comm_wait(sn_comm *c) { c->impl->vt->wait(c); }
