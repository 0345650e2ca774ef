// NCCL communicator for --device cuda: device buffers, fp32 and bf16, one GPU per rank.
//
// Streams. Every NCCL call goes on one stream of our own (comm_stream), so every rank's GPU runs
// the collectives in the order the host issued them (two streams of one communicator could
// interleave differently on different ranks and deadlock). Events order it against the trainer's
// compute stream: a blocking-style collective waits for the compute stream's work so far, and the
// compute stream waits for the collective; an async all-reduce waits only for its ready event,
// and sn_comm_wait makes the compute stream wait for all of them.
//
// Failures. The communicator is created non-blocking (config.blocking = 0) so that its
// initialization can time out; every collective records an event that the watchdog thread
// polls, together with ncclCommGetAsyncError. An NCCL error or a collective still unfinished
// timeout_s after it was enqueued ends the job: message, ncclCommAbort, exit.
//
// The unique id travels by MPI_Bcast when mpirun (or another PMI launcher) started us and MPI is
// built in, else by the TCP rendezvous of bootstrap.h (srun, plain environment).
#define _GNU_SOURCE
#include <cuda_runtime.h>
#include <nccl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
#ifdef SN_WITH_MPI
#include <mpi.h>
#endif

#include "comm_backend.h"
#include "common.h"

#define cudaCheck(call)                                                            \
  do {                                                                             \
    cudaError_t cuda_status_ = (call);                                             \
    if (cuda_status_ != cudaSuccess)                                               \
      sn_fatal("%s failed: %s", #call, cudaGetErrorString(cuda_status_));          \
  } while (0)

// NCCL calls on a non-blocking communicator may return ncclInProgress: nccl_settle waits (bounded
// by the timeout) until the call has finished, and ends the job with file:line on an error.
#define ncclCheck(c, call) nccl_settle((c), (call), #call, __FILE__, __LINE__)

#define SN_NCCL_MAX_INFLIGHT 1024      // collectives enqueued but not yet seen complete
#define SN_NCCL_POLL_SLEEP_US 100      // host polling interval while NCCL is in progress

typedef struct {
  cudaEvent_t done;
  double enqueued_s;
  const char *what;
  size_t count;
} inflight_op;

typedef struct {
  ncclComm_t comm;  // NULL until initialized
  int device;
  const char *id_source;  // how the unique id travelled, for messages
  int we_initialized_mpi;
  cudaStream_t compute, comm_stream;
  cudaEvent_t compute_ready, comm_done;
  void *scratch;  // device memory for barriers and host all-reduces
  size_t scratch_bytes;
  double *host_gather;
  size_t host_gather_cap;
  // Ring of in-flight collectives: the host pushes, the watchdog thread retires.
  pthread_mutex_t ring_mutex;
  inflight_op ring[SN_NCCL_MAX_INFLIGHT];
  int ring_head, ring_size;
} nccl_state;

static nccl_state *state_of(sn_comm *c) { return c->impl->state; }

static void nccl_abort_hook(sn_comm *c) {
  nccl_state *s = state_of(c);
  if (s && s->comm) ncclCommAbort(s->comm);
}

static void nccl_settle(sn_comm *c, ncclResult_t result, const char *call, const char *file, int line) {
  nccl_state *s = state_of(c);
  double deadline = sn_now_s() + c->timeout_s;
  while (result == ncclInProgress && s->comm) {
    if (sn_now_s() > deadline)
      sn_comm_abort_job(c, nccl_abort_hook,
                        "%s did not complete within %.0f s (GPU %d, unique id via %s): another rank "
                        "probably failed to start or cannot reach this one [%s:%d]",
                        call, c->timeout_s, s->device, s->id_source, file, line);
    usleep(SN_NCCL_POLL_SLEEP_US);
    ncclCommGetAsyncError(s->comm, &result);
  }
  if (result != ncclSuccess)
    sn_comm_abort_job(c, nccl_abort_hook, "%s failed: %s (%s) [%s:%d]", call, ncclGetErrorString(result),
                      s->comm ? ncclGetLastError(s->comm) : ncclGetLastError(NULL), file, line);
}

static ncclDataType_t nccl_dtype(sn_dtype dtype) {
  return dtype == SN_DTYPE_BF16 ? ncclBfloat16 : ncclFloat32;  // comm.c admits only these two
}

// ---- ordering and the in-flight ring ------------------------------------------------------------------

// The comm stream waits for `after` (a cudaEvent_t), or for all compute work so far when NULL.
static void begin_collective(nccl_state *s, void *after) {
  cudaEvent_t ready = (cudaEvent_t)after;
  if (!ready) {
    cudaCheck(cudaEventRecord(s->compute_ready, s->compute));
    ready = s->compute_ready;
  }
  cudaCheck(cudaStreamWaitEvent(s->comm_stream, ready, 0));
}

// Retires completed collectives from the head of the ring. Caller holds ring_mutex. Returns 0, or
// -1 with a message when a collective failed or has run past the timeout.
static int retire_completed(sn_comm *c, char *msg, size_t msg_len) {
  nccl_state *s = state_of(c);
  while (s->ring_size > 0) {
    inflight_op *op = &s->ring[s->ring_head];
    cudaError_t status = cudaEventQuery(op->done);
    if (status == cudaErrorNotReady) {
      if (sn_now_s() - op->enqueued_s <= c->timeout_s) return 0;
      snprintf(msg, msg_len,
               "%s on %zu elements (NCCL, GPU %d) did not complete within %.0f s of being enqueued: "
               "another rank probably failed or hangs; aborting the job",
               op->what, op->count, s->device, c->timeout_s);
      return -1;
    }
    if (status != cudaSuccess) {
      snprintf(msg, msg_len, "CUDA error while waiting for %s: %s", op->what, cudaGetErrorString(status));
      return -1;
    }
    s->ring_head = (s->ring_head + 1) % SN_NCCL_MAX_INFLIGHT;
    s->ring_size--;
  }
  return 0;
}

// After a collective was enqueued on the comm stream: track it; the compute stream waits for it
// unless it is an async all-reduce (sn_comm_wait does that).
static void end_collective(sn_comm *c, const char *what, size_t count, int compute_waits) {
  nccl_state *s = state_of(c);
  char msg[512];
  pthread_mutex_lock(&s->ring_mutex);
  while (s->ring_size == SN_NCCL_MAX_INFLIGHT) {  // full: wait for the oldest (the watchdog guards)
    if (retire_completed(c, msg, sizeof(msg)) != 0) sn_comm_abort_job(c, nccl_abort_hook, "%s", msg);
    if (s->ring_size < SN_NCCL_MAX_INFLIGHT) break;
    pthread_mutex_unlock(&s->ring_mutex);
    usleep(SN_NCCL_POLL_SLEEP_US);
    pthread_mutex_lock(&s->ring_mutex);
  }
  inflight_op *op = &s->ring[(s->ring_head + s->ring_size) % SN_NCCL_MAX_INFLIGHT];
  op->enqueued_s = sn_now_s();
  op->what = what;
  op->count = count;
  cudaCheck(cudaEventRecord(op->done, s->comm_stream));
  if (compute_waits) cudaCheck(cudaStreamWaitEvent(s->compute, op->done, 0));
  s->ring_size++;
  pthread_mutex_unlock(&s->ring_mutex);
}

// The watchdog's hook: asynchronous NCCL errors and overdue collectives.
static int nccl_poll(sn_comm *c, char *msg, size_t msg_len) {
  nccl_state *s = state_of(c);
  if (!s->comm) return 0;
  cudaSetDevice(s->device);  // the runtime's current device is per thread
  ncclResult_t async = ncclSuccess;
  ncclCommGetAsyncError(s->comm, &async);
  if (async != ncclSuccess && async != ncclInProgress) {
    snprintf(msg, msg_len, "NCCL reported an asynchronous error on GPU %d: %s (%s); another rank probably failed",
             s->device, ncclGetErrorString(async), ncclGetLastError(s->comm));
    return -1;
  }
  pthread_mutex_lock(&s->ring_mutex);
  int status = retire_completed(c, msg, msg_len);
  pthread_mutex_unlock(&s->ring_mutex);
  return status;
}

static void *scratch_of(nccl_state *s, size_t bytes) {
  if (bytes > s->scratch_bytes) {
    if (s->scratch) cudaCheck(cudaFree(s->scratch));
    cudaCheck(cudaMalloc(&s->scratch, bytes));
    s->scratch_bytes = bytes;
  }
  return s->scratch;
}

// ---- collectives ---------------------------------------------------------------------------------------

static void nccl_all_reduce_sum(sn_comm *c, void *buf, size_t count, sn_dtype dtype) {
  nccl_state *s = state_of(c);
  begin_collective(s, NULL);
  ncclCheck(c, ncclAllReduce(buf, buf, count, nccl_dtype(dtype), ncclSum, s->comm, s->comm_stream));
  end_collective(c, "all-reduce (ncclAllReduce)", count, 1);
}

static void nccl_all_gather(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  nccl_state *s = state_of(c);
  begin_collective(s, NULL);
  ncclCheck(c, ncclAllGather(send, recv, count_per_rank, nccl_dtype(dtype), s->comm, s->comm_stream));
  end_collective(c, "all-gather (ncclAllGather)", count_per_rank * c->world_size, 1);
}

static void nccl_reduce_scatter_sum(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  nccl_state *s = state_of(c);
  begin_collective(s, NULL);
  ncclCheck(c, ncclReduceScatter(send, recv, count_per_rank, nccl_dtype(dtype), ncclSum, s->comm, s->comm_stream));
  end_collective(c, "reduce-scatter (ncclReduceScatter)", count_per_rank * c->world_size, 1);
}

static void nccl_broadcast(sn_comm *c, void *buf, size_t bytes, int root) {
  nccl_state *s = state_of(c);
  begin_collective(s, NULL);
  ncclCheck(c, ncclBroadcast(buf, buf, bytes, ncclUint8, root, s->comm, s->comm_stream));
  end_collective(c, "broadcast (ncclBroadcast)", bytes, 1);
}

// NCCL has no all-gather-v: one broadcast per rank of its slice, fused in a group.
static void nccl_all_gather_v(sn_comm *c, const float *send, float *recv, const size_t *counts) {
  nccl_state *s = state_of(c);
  begin_collective(s, NULL);
  size_t offset = 0;
  ncclCheck(c, ncclGroupStart());
  for (int r = 0; r < c->world_size; r++) {
    if (counts[r]) {
      const float *from = r == c->rank ? send : recv + offset;
      ncclCheck(c, ncclBroadcast(from, recv + offset, counts[r], ncclFloat32, r, s->comm, s->comm_stream));
    }
    offset += counts[r];
  }
  ncclCheck(c, ncclGroupEnd());
  end_collective(c, "all-gather-v (ncclBroadcast group)", offset, 1);
}

static void nccl_synchronize(sn_comm *c) {
  nccl_state *s = state_of(c);
  // Blocks the host; a collective that never finishes is the watchdog's to end.
  cudaCheck(cudaStreamSynchronize(s->comm_stream));
  cudaCheck(cudaStreamSynchronize(s->compute));
}

static void nccl_barrier(sn_comm *c) {
  nccl_state *s = state_of(c);
  float *token = scratch_of(s, sizeof(float));
  begin_collective(s, NULL);
  ncclCheck(c, ncclAllReduce(token, token, 1, ncclFloat32, ncclSum, s->comm, s->comm_stream));
  end_collective(c, "barrier (ncclAllReduce)", 1, 1);
  nccl_synchronize(c);
}

// Host to host all-gather through the scratch buffer: out (world_size * n elements, rank order)
// = every rank's n elements of `type` (elem bytes each) from mine. Blocks until out is filled.
static void host_all_gather(sn_comm *c, const char *what, const void *mine, void *out, size_t n,
                            ncclDataType_t type, size_t elem) {
  nccl_state *s = state_of(c);
  size_t bytes = n * elem, all = bytes * (size_t)c->world_size;
  char *dev = scratch_of(s, all);
  cudaCheck(cudaMemcpyAsync(dev + bytes * c->rank, mine, bytes, cudaMemcpyHostToDevice, s->comm_stream));
  ncclCheck(c, ncclAllGather(dev + bytes * c->rank, dev, n, type, s->comm, s->comm_stream));
  end_collective(c, what, n * c->world_size, 0);
  cudaCheck(cudaMemcpyAsync(out, dev, all, cudaMemcpyDeviceToHost, s->comm_stream));
  cudaCheck(cudaStreamSynchronize(s->comm_stream));
}

// Gathers every rank's values and adds them in rank order on the host, as the MPI backend does:
// the same bits on every rank.
static void nccl_all_reduce_f64_host(sn_comm *c, double *vals, int n) {
  nccl_state *s = state_of(c);
  size_t all = (size_t)n * (size_t)c->world_size;
  if (all > s->host_gather_cap) {
    s->host_gather_cap = all;
    s->host_gather = reallocCheck(s->host_gather, all * sizeof(double));
  }
  host_all_gather(c, "host all-reduce (ncclAllGather)", vals, s->host_gather, (size_t)n, ncclFloat64, sizeof(double));
  for (int i = 0; i < n; i++) {
    double sum = s->host_gather[i];
    for (int r = 1; r < c->world_size; r++) sum += s->host_gather[(size_t)r * n + i];
    vals[i] = sum;
  }
}

static void nccl_all_gather_u64_host(sn_comm *c, uint64_t mine, uint64_t *all) {
  host_all_gather(c, "host u64 all-gather (ncclAllGather)", &mine, all, 1, ncclUint64, sizeof(uint64_t));
}

static void nccl_all_reduce_async(sn_comm *c, void *buf, size_t count, sn_dtype dtype, void *ready_event) {
  nccl_state *s = state_of(c);
  begin_collective(s, ready_event);
  ncclCheck(c, ncclAllReduce(buf, buf, count, nccl_dtype(dtype), ncclSum, s->comm, s->comm_stream));
  end_collective(c, "async all-reduce (ncclAllReduce)", count, 0);
}

// NCCL's reduce-scatter takes equal parts: one ncclReduce per non-empty part, to its owner, fused
// in a group (in place: the owner's part of buf is its receive buffer too).
static void nccl_reduce_scatter_v_async(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype,
                                        void *ready_event) {
  nccl_state *s = state_of(c);
  begin_collective(s, ready_event);
  size_t offset = 0, elem = sn_dtype_size(dtype);
  ncclCheck(c, ncclGroupStart());
  for (int r = 0; r < c->world_size; r++) {
    char *part = (char *)buf + offset * elem;
    if (counts[r]) ncclCheck(c, ncclReduce(part, part, counts[r], nccl_dtype(dtype), ncclSum, r, s->comm, s->comm_stream));
    offset += counts[r];
  }
  ncclCheck(c, ncclGroupEnd());
  end_collective(c, "async reduce-scatter-v (ncclReduce group)", offset, 0);
}

static void nccl_wait(sn_comm *c) {
  nccl_state *s = state_of(c);
  cudaCheck(cudaEventRecord(s->comm_done, s->comm_stream));
  cudaCheck(cudaStreamWaitEvent(s->compute, s->comm_done, 0));
}

static void nccl_set_compute_stream(sn_comm *c, void *stream) { state_of(c)->compute = (cudaStream_t)stream; }

static void nccl_destroy(sn_comm *c) {
  nccl_state *s = state_of(c);
  nccl_synchronize(c);
  ncclCheck(c, ncclCommFinalize(s->comm));  // flushes outstanding work; non-blocking, so settled
  // The watchdog must not poll a destroyed communicator: detach it first.
  ncclComm_t comm = s->comm;
  pthread_mutex_lock(&s->ring_mutex);
  s->comm = NULL;
  pthread_mutex_unlock(&s->ring_mutex);
  sn_watchdog_stop(c->impl->watchdog);
  c->impl->watchdog = NULL;
  ncclCommDestroy(comm);
  for (int i = 0; i < SN_NCCL_MAX_INFLIGHT; i++) cudaEventDestroy(s->ring[i].done);
  cudaEventDestroy(s->compute_ready);
  cudaEventDestroy(s->comm_done);
  cudaStreamDestroy(s->comm_stream);
  if (s->scratch) cudaFree(s->scratch);
  free(s->host_gather);
#ifdef SN_WITH_MPI
  if (s->we_initialized_mpi) MPI_Finalize();
#endif
  pthread_mutex_destroy(&s->ring_mutex);
  free(s);
}

static const sn_comm_vtable NCCL_VTABLE = {
    .all_reduce_sum = nccl_all_reduce_sum,
    .all_gather = nccl_all_gather,
    .reduce_scatter_sum = nccl_reduce_scatter_sum,
    .broadcast = nccl_broadcast,
    .all_gather_v = nccl_all_gather_v,
    .barrier = nccl_barrier,
    .synchronize = nccl_synchronize,
    .all_reduce_f64_host = nccl_all_reduce_f64_host,
    .all_gather_u64_host = nccl_all_gather_u64_host,
    .all_reduce_async = nccl_all_reduce_async,
    .reduce_scatter_v_async = nccl_reduce_scatter_v_async,
    .wait = nccl_wait,
    .set_compute_stream = nccl_set_compute_stream,
    .destroy = nccl_destroy,
};

// ---- creation ------------------------------------------------------------------------------------------

// Rank 0's unique id to every rank: MPI_Bcast under an MPI launcher, else the TCP rendezvous.
static void share_unique_id(sn_comm *c, const sn_dist_env *env, ncclUniqueId *id) {
  nccl_state *s = state_of(c);
  if (c->world_size == 1) {
    s->id_source = "none (world size 1)";
    return;
  }
#ifdef SN_WITH_MPI
  if (strcmp(env->launcher, "mpirun") == 0 || strcmp(env->launcher, "pmi") == 0) {
    int initialized = 0, provided = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
        sn_fatal("MPI_Init_thread failed (rank %d of %d, launcher %s)", c->rank, c->world_size, env->launcher);
      s->we_initialized_mpi = 1;
    }
    s->id_source = "MPI_Bcast";
    sn_watchdog_enter(c->impl->watchdog, "NCCL unique id broadcast (MPI_Bcast)", sizeof(*id));
    if (MPI_Bcast(id, (int)sizeof(*id), MPI_BYTE, 0, MPI_COMM_WORLD) != MPI_SUCCESS)
      sn_fatal("MPI_Bcast of the NCCL unique id failed (rank %d of %d)", c->rank, c->world_size);
    sn_watchdog_leave(c->impl->watchdog);
    return;
  }
#endif
  s->id_source = "the TCP rendezvous at MASTER_ADDR:MASTER_PORT";
  char err[512];
  if (sn_rendezvous(env->master_addr, env->master_port, c->rank, c->world_size, id, sizeof(*id),
                    c->timeout_s, err, sizeof(err)) != 0)
    sn_comm_abort_job(c, NULL, "%s (launcher %s)", err, env->launcher);
}

void sn_comm_nccl_init(sn_comm *c, const sn_dist_env *env) {
  nccl_state *s = callocCheck(1, sizeof(*s));
  c->impl = callocCheck(1, sizeof(*c->impl));
  c->impl->vt = &NCCL_VTABLE;
  c->impl->state = s;
  c->backend = SN_COMM_NCCL;
  pthread_mutex_init(&s->ring_mutex, NULL);

  int device_count = 0;
  cudaError_t e = cudaGetDeviceCount(&device_count);
  if (e != cudaSuccess || device_count == 0)
    sn_fatal("--device cuda: no CUDA device on rank %d (%s)", c->rank,
             e != cudaSuccess ? cudaGetErrorString(e) : "device count 0");
  s->device = c->local_rank % device_count;  // one GPU per rank, by local rank
  cudaCheck(cudaSetDevice(s->device));
  s->compute = 0;  // the legacy default stream until the trainer names its own
  // The highest priority: the block scheduler then places a collective's CTAs as soon as compute
  // CTAs retire, instead of after the back-to-back backward kernels queued before it (which would
  // leave nothing for the overlapped all-reduce to hide behind).
  int least_priority = 0, greatest_priority = 0;
  cudaCheck(cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority));
  cudaCheck(cudaStreamCreateWithPriority(&s->comm_stream, cudaStreamNonBlocking, greatest_priority));
  cudaCheck(cudaEventCreateWithFlags(&s->compute_ready, cudaEventDisableTiming));
  cudaCheck(cudaEventCreateWithFlags(&s->comm_done, cudaEventDisableTiming));
  for (int i = 0; i < SN_NCCL_MAX_INFLIGHT; i++)
    cudaCheck(cudaEventCreateWithFlags(&s->ring[i].done, cudaEventDisableTiming));
  c->impl->watchdog = sn_watchdog_start(c, nccl_poll, nccl_abort_hook);

  ncclUniqueId id;
  memset(&id, 0, sizeof(id));
  if (c->rank == 0) ncclCheck(c, ncclGetUniqueId(&id));
  share_unique_id(c, env, &id);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a rank that never arrives makes this time out, not hang
  ncclComm_t comm = NULL;
  ncclResult_t result = ncclCommInitRankConfig(&comm, c->world_size, id, c->rank, &config);
  pthread_mutex_lock(&s->ring_mutex);
  s->comm = comm;  // visible to the watchdog (and to nccl_settle's polling) from here on
  pthread_mutex_unlock(&s->ring_mutex);
  nccl_settle(c, result, "ncclCommInitRankConfig", __FILE__, __LINE__);
}
