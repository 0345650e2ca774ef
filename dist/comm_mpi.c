// MPI communicator for --device cpu: host buffers, fp32.
//
// Sums are computed by this file, not by MPI_Allreduce, so that their order is fixed: the MPI
// standard lets MPI_Allreduce pick its algorithm (and so the order of fp32 additions) per message
// size and process count, and does not promise the same bits on every rank. Here an all-reduce is
//   1. MPI_Ialltoallv: rank j receives slice j of every rank's buffer,
//   2. rank j adds the slices in rank order 0, 1, …, n-1 (fp32),
//   3. MPI_Iallgatherv: every rank gets every summed slice.
// It moves the same bytes as a ring all-reduce (2(n-1)/n of the buffer per rank), is deterministic
// run to run, gives bitwise identical results on every rank, and at n = 1 is the identity. A
// reduce-scatter is steps 1-2 (the unequal one, reduce_scatter_v_async, with the caller's parts
// as the slices).
//
// Timeouts: MPI has none, so every blocking MPI call runs between sn_watchdog_enter/leave; the
// watchdog thread calls MPI_Abort when one takes longer than timeout_s. That needs
// MPI_THREAD_MULTIPLE; without it the watchdog _exit()s, which Open MPI's mpirun also turns into
// a job abort (a rank that ends without MPI_Finalize kills the job).
#include <limits.h>
#include <mpi.h>
#include <string.h>

#include "comm_backend.h"
#include "common.h"

// Prints file:line, the failing call and MPI's message, then aborts the job.
#define mpiCheck(c, call)                                                           \
  do {                                                                              \
    int mpi_status_ = (call);                                                       \
    if (mpi_status_ != MPI_SUCCESS) mpi_fail((c), mpi_status_, #call, __FILE__, __LINE__); \
  } while (0)

// A blocking MPI call under the watchdog: `what` names the operation and the MPI call.
#define mpiWatched(c, what, count, call)                   \
  do {                                                     \
    sn_watchdog_enter((c)->impl->watchdog, (what), (count)); \
    mpiCheck((c), call);                                   \
    sn_watchdog_leave((c)->impl->watchdog);                \
  } while (0)

// Largest element count per MPI call: counts and displacements are C ints.
#define SN_MPI_MAX_SEGMENT ((size_t)1 << 28)

typedef struct {
  float *buf;
  size_t count;
  int gather;                    // 1: all-reduce (the summed slices gathered); 0: reduce-scatter
  int *slice_len, *slice_begin;  // per rank: the slice of buf that rank sums (allgatherv layout)
  int *recv_len, *recv_begin;    // per rank: where its copy of my slice lands in `partials`
  float *partials;               // (world_size, my slice length)
  size_t partials_cap;           // elements: slots keep their buffers for the next steps' buckets
  MPI_Request request;
} pending_all_reduce;

typedef struct {
  MPI_Comm comm;
  int we_initialized;  // MPI_Init_thread was ours, so MPI_Finalize is too
  int thread_multiple;
  pending_all_reduce *pending;  // slots [0, n_pending) are in flight; all cap_pending own buffers
  int n_pending, cap_pending;
  float *scratch;  // the reduce-scatter's partials, kept between calls
  size_t scratch_cap;
} mpi_state;

static mpi_state *state_of(sn_comm *c) { return c->impl->state; }

static float *scratch_of(mpi_state *s, size_t count) {
  if (count > s->scratch_cap) {
    free(s->scratch);
    s->scratch = mallocCheck(count * sizeof(float));
    s->scratch_cap = count;
  }
  return s->scratch;
}

static void mpi_abort_hook(sn_comm *c) {
  if (state_of(c)->thread_multiple) MPI_Abort(MPI_COMM_WORLD, SN_EXIT_FAILURE);
}

static _Noreturn void mpi_fail(sn_comm *c, int status, const char *call, const char *file, int line) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(status, text, &len);
  sn_comm_abort_job(c, mpi_abort_hook, "%s failed: %s [%s:%d]", call, text, file, line);
}

static int checked_int(size_t n, const char *what) {
  if (n > (size_t)INT_MAX) sn_fatal("MPI %s: %zu elements exceed one MPI call's int count; split the buffer", what, n);
  return (int)n;
}

// ---- all-reduce and unequal reduce-scatter: started, then completed by wait ----------------------

// A free pending slot for `count` elements of buf, its per-rank arrays allocated (slices unset).
static pending_all_reduce *new_pending(sn_comm *c, float *buf, size_t count, int gather) {
  mpi_state *s = state_of(c);
  int n = c->world_size;
  if (s->n_pending == s->cap_pending) {
    int old_cap = s->cap_pending;
    s->cap_pending = old_cap ? 2 * old_cap : 8;
    s->pending = reallocCheck(s->pending, (size_t)s->cap_pending * sizeof(*s->pending));
    memset(s->pending + old_cap, 0, (size_t)(s->cap_pending - old_cap) * sizeof(*s->pending));
  }
  pending_all_reduce *p = &s->pending[s->n_pending++];
  p->buf = buf;
  p->count = count;
  p->gather = gather;
  if (!p->slice_len) {  // one allocation behind the four per-rank int arrays, kept with the slot
    p->slice_len = mallocCheck(4 * (size_t)n * sizeof(int));
    p->slice_begin = p->slice_len + n;
    p->recv_len = p->slice_len + 2 * n;
    p->recv_begin = p->slice_len + 3 * n;
  }
  return p;
}

// Step 1 for p's slices: every rank sends slice j of buf to rank j.
static void start_exchange(sn_comm *c, pending_all_reduce *p) {
  mpi_state *s = state_of(c);
  int n = c->world_size;
  int mine = p->slice_len[c->rank];
  for (int r = 0; r < n; r++) {
    p->recv_len[r] = mine;
    p->recv_begin[r] = r * mine;
  }
  size_t partials_count = (size_t)n * (size_t)mine;
  if (partials_count > p->partials_cap) {  // reused across steps: no page faults per bucket
    free(p->partials);
    p->partials = mallocCheck(partials_count * sizeof(float));
    p->partials_cap = partials_count;
  }
  mpiCheck(c, MPI_Ialltoallv(p->buf, p->slice_len, p->slice_begin, MPI_FLOAT, p->partials, p->recv_len,
                             p->recv_begin, MPI_FLOAT, s->comm, &p->request));
}

static void start_all_reduce_segment(sn_comm *c, float *buf, int count) {
  pending_all_reduce *p = new_pending(c, buf, (size_t)count, 1);
  int n = c->world_size;
  // Slices as even as possible: the first count % n ranks get one element more.
  int base = count / n, extra = count % n;
  for (int r = 0, begin = 0; r < n; r++) {
    p->slice_len[r] = base + (r < extra);
    p->slice_begin[r] = begin;
    begin += p->slice_len[r];
  }
  start_exchange(c, p);
}

static void mpi_all_reduce_async(sn_comm *c, void *buf, size_t count, sn_dtype dtype, void *ready_event) {
  float *f = buf;
  for (size_t done = 0; done < count; done += SN_MPI_MAX_SEGMENT)
    start_all_reduce_segment(c, f + done, (int)SN_MIN(SN_MPI_MAX_SEGMENT, count - done));
}

// The caller's parts as the slices; parts past one MPI call's int counts are refused.
static void mpi_reduce_scatter_v_async(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype,
                                       void *ready_event) {
  size_t total = 0;
  for (int r = 0; r < c->world_size; r++) total += counts[r];
  pending_all_reduce *p = new_pending(c, buf, total, 0);
  for (int r = 0, begin = 0; r < c->world_size; r++) {
    p->slice_len[r] = checked_int(counts[r], "reduce_scatter_v_async");
    p->slice_begin[r] = begin;
    begin = checked_int((size_t)begin + counts[r], "reduce_scatter_v_async");
  }
  start_exchange(c, p);
}

static void mpi_wait(sn_comm *c) {
  mpi_state *s = state_of(c);
  // Sum every slice as its exchange lands, then start all the gathers before waiting on any.
  for (int i = 0; i < s->n_pending; i++) {
    pending_all_reduce *p = &s->pending[i];
    int mine = p->slice_len[c->rank];
    mpiWatched(c, p->gather ? "all-reduce (MPI_Ialltoallv + MPI_Wait)" : "reduce-scatter-v (MPI_Ialltoallv + MPI_Wait)",
               p->count, MPI_Wait(&p->request, MPI_STATUS_IGNORE));
    sn_comm_sum_in_rank_order(p->buf + p->slice_begin[c->rank], p->partials, c->world_size, (size_t)mine);
    if (p->gather)
      mpiCheck(c, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p->buf, p->slice_len,
                                  p->slice_begin, MPI_FLOAT, s->comm, &p->request));
  }
  for (int i = 0; i < s->n_pending; i++) {
    pending_all_reduce *p = &s->pending[i];
    if (p->gather)
      mpiWatched(c, "all-reduce (MPI_Iallgatherv + MPI_Wait)", p->count,
                 MPI_Wait(&p->request, MPI_STATUS_IGNORE));
  }
  s->n_pending = 0;
}

static void mpi_all_reduce_sum(sn_comm *c, void *buf, size_t count, sn_dtype dtype) {
  mpi_all_reduce_async(c, buf, count, dtype, NULL);
  mpi_wait(c);
}

// ---- the other collectives -------------------------------------------------------------------------

static void mpi_reduce_scatter_sum(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  int count = checked_int(count_per_rank, "reduce_scatter_sum");
  float *partials = scratch_of(state_of(c), (size_t)c->world_size * count_per_rank);
  mpiWatched(c, "reduce-scatter (MPI_Alltoall)", count_per_rank * c->world_size,
             MPI_Alltoall(send, count, MPI_FLOAT, partials, count, MPI_FLOAT, state_of(c)->comm));
  sn_comm_sum_in_rank_order(recv, partials, c->world_size, count_per_rank);
}

static void mpi_all_gather(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  int count = checked_int(count_per_rank, "all_gather");
  checked_int(count_per_rank * c->world_size, "all_gather");
  const float *in_place_slot = (const float *)recv + (size_t)c->rank * count_per_rank;
  const void *from = send == in_place_slot ? MPI_IN_PLACE : send;
  mpiWatched(c, "all-gather (MPI_Allgather)", count_per_rank * c->world_size,
             MPI_Allgather(from, count, MPI_FLOAT, recv, count, MPI_FLOAT, state_of(c)->comm));
}

static void mpi_all_gather_v(sn_comm *c, const float *send, float *recv, const size_t *counts) {
  int n = c->world_size;
  int *len = mallocCheck(2 * (size_t)n * sizeof(int)), *begin = len + n;
  size_t total = 0;
  for (int r = 0; r < n; r++) {
    len[r] = checked_int(counts[r], "all_gather_v");
    begin[r] = checked_int(total, "all_gather_v");
    total += counts[r];
  }
  const void *from = send == recv + begin[c->rank] ? MPI_IN_PLACE : (const void *)send;
  mpiWatched(c, "all-gather-v (MPI_Allgatherv)", total,
             MPI_Allgatherv(from, len[c->rank], MPI_FLOAT, recv, len, begin, MPI_FLOAT, state_of(c)->comm));
  free(len);
}

static void mpi_broadcast(sn_comm *c, void *buf, size_t bytes, int root) {
  char *p = buf;
  for (size_t done = 0; done < bytes; done += SN_MPI_MAX_SEGMENT) {
    int chunk = (int)SN_MIN(SN_MPI_MAX_SEGMENT, bytes - done);
    mpiWatched(c, "broadcast (MPI_Bcast)", (size_t)chunk, MPI_Bcast(p + done, chunk, MPI_BYTE, root, state_of(c)->comm));
  }
}

static void mpi_barrier(sn_comm *c) { mpiWatched(c, "barrier (MPI_Barrier)", 0, MPI_Barrier(state_of(c)->comm)); }

static void mpi_synchronize(sn_comm *c) {}

// Gathers every rank's values and adds them in rank order: the same bits on every rank.
static void mpi_all_reduce_f64_host(sn_comm *c, double *vals, int n) {
  double *all = mallocCheck((size_t)c->world_size * (size_t)n * sizeof(double));
  mpiWatched(c, "host all-reduce (MPI_Allgather)", (size_t)n * c->world_size,
             MPI_Allgather(vals, n, MPI_DOUBLE, all, n, MPI_DOUBLE, state_of(c)->comm));
  for (int i = 0; i < n; i++) {
    double sum = all[i];
    for (int r = 1; r < c->world_size; r++) sum += all[(size_t)r * n + i];
    vals[i] = sum;
  }
  free(all);
}

static void mpi_all_gather_u64_host(sn_comm *c, uint64_t mine, uint64_t *all) {
  mpiWatched(c, "host u64 all-gather (MPI_Allgather)", (size_t)c->world_size,
             MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, state_of(c)->comm));
}

static void mpi_set_compute_stream(sn_comm *c, void *stream) {}

static void mpi_destroy(sn_comm *c) {
  mpi_state *s = state_of(c);
  mpi_wait(c);
  mpiWatched(c, "shutdown (MPI_Barrier)", 0, MPI_Barrier(s->comm));
  MPI_Comm_free(&s->comm);
  if (s->we_initialized) mpiWatched(c, "shutdown (MPI_Finalize)", 0, MPI_Finalize());
  for (int i = 0; i < s->cap_pending; i++) {
    free(s->pending[i].slice_len);
    free(s->pending[i].partials);
  }
  free(s->pending);
  free(s->scratch);
  free(s);
}

static const sn_comm_vtable MPI_VTABLE = {
    .all_reduce_sum = mpi_all_reduce_sum,
    .all_gather = mpi_all_gather,
    .reduce_scatter_sum = mpi_reduce_scatter_sum,
    .broadcast = mpi_broadcast,
    .all_gather_v = mpi_all_gather_v,
    .barrier = mpi_barrier,
    .synchronize = mpi_synchronize,
    .all_reduce_f64_host = mpi_all_reduce_f64_host,
    .all_gather_u64_host = mpi_all_gather_u64_host,
    .all_reduce_async = mpi_all_reduce_async,
    .reduce_scatter_v_async = mpi_reduce_scatter_v_async,
    .wait = mpi_wait,
    .set_compute_stream = mpi_set_compute_stream,
    .destroy = mpi_destroy,
};

void sn_comm_mpi_init(sn_comm *c) {
  mpi_state *s = callocCheck(1, sizeof(*s));
  c->impl = callocCheck(1, sizeof(*c->impl));
  c->impl->vt = &MPI_VTABLE;
  c->impl->state = s;
  c->backend = SN_COMM_MPI;

  int initialized = 0, provided = MPI_THREAD_SINGLE;
  MPI_Initialized(&initialized);
  if (!initialized) {
    // MPI_THREAD_MULTIPLE: the watchdog thread may call MPI_Abort while the host is inside MPI.
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
      sn_fatal("MPI_Init_thread failed (rank %d of %d from %s)", c->rank, c->world_size, c->launcher);
    s->we_initialized = 1;
  } else {
    MPI_Query_thread(&provided);
  }
  s->thread_multiple = provided >= MPI_THREAD_MULTIPLE;
  c->impl->watchdog = sn_watchdog_start(c, NULL, mpi_abort_hook);

  // Our own communicator: errors come back to mpiCheck (file:line, the call) instead of MPI's
  // default abort, and other MPI users of the process cannot mix their messages with ours.
  mpiCheck(c, MPI_Comm_dup(MPI_COMM_WORLD, &s->comm));
  mpiCheck(c, MPI_Comm_set_errhandler(s->comm, MPI_ERRORS_RETURN));
  int mpi_rank = 0, mpi_size = 0;
  mpiCheck(c, MPI_Comm_rank(s->comm, &mpi_rank));
  mpiCheck(c, MPI_Comm_size(s->comm, &mpi_size));
  if (mpi_size != c->world_size || mpi_rank != c->rank)
    sn_bad_input("the environment (launcher %s) says rank %d of %d but MPI says rank %d of %d: "
                 "--device cpu with several ranks needs mpirun (or srun --mpi=pmix)",
                 c->launcher, c->rank, c->world_size, mpi_rank, mpi_size);
  // Ranks on this node, from MPI itself (the environment may not say).
  MPI_Comm node;
  mpiCheck(c, MPI_Comm_split_type(s->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  mpiCheck(c, MPI_Comm_rank(node, &c->local_rank));
  mpiCheck(c, MPI_Comm_size(node, &c->local_size));
  MPI_Comm_free(&node);
}
