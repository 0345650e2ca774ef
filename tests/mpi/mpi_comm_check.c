// Run under mpirun (tests/mpi/test_comm_mpi.sh): every collective of dist/comm.h with random fp32
// data, against the result computed locally from every rank's data. On the CPU (MPI) the sums
// are added in rank order by the communicator, so they must match the local sum bit for bit; NCCL
// picks its own order, so there they must match to SN_NCCL_REL_TOL.
//
//   mpi_comm_check [--device cpu|cuda] [--timeout S] [--fail exit|hang]
// --device cuda: the NCCL backend, device buffers (exit 77 when the build or machine has none).
// --fail exit: rank 1 exits(1) after the first collectives; the others keep calling collectives.
// --fail hang: rank 1 sleeps forever; the others must be ended by the watchdog after S seconds.
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "ops.h"
#include "common.h"
#include "test_util.h"

#define SEED_BASE 1234
#define FAILING_RANK 1
#define SURVIVOR_ROUNDS 100000  // collectives the survivors attempt after the failure (never all)
#define SN_NCCL_REL_TOL 1e-6     // fp32 sums in NCCL's order vs in rank order
#define BF16_PERIOD 5            // bf16 all-reduce input: integers 0..4, so sums stay exact

static const sn_ops *g_ops;  // the backend of the buffers (host memory or device memory)
static int g_bitwise;        // sums must be bitwise equal (MPI, single) or close (NCCL)

// Backend buffer holding a copy of host fp32 data, and back.
static float *to_backend(const float *host, size_t n) {
  float *d = g_ops->alloc((n ? n : 1) * sizeof(float));
  g_ops->upload(d, host, n * sizeof(float));
  return d;
}
static float *to_host(const float *dev, size_t n) {
  float *h = mallocCheck((n ? n : 1) * sizeof(float));
  g_ops->synchronize();
  g_ops->download(h, dev, n * sizeof(float));
  return h;
}

// The data rank `r` contributes to test `test_id`: the same on every process.
static void rank_data(float *x, size_t n, int r, int test_id) {
  sn_test_rng rng;
  sn_test_rng_seed(&rng, SEED_BASE + 1000003ull * (uint64_t)test_id + (uint64_t)r);
  sn_test_fill_normal(&rng, x, n, 1.0f);
}

static int bitwise_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

// The sums of the backend `got` (downloaded here and freed) against `want` on the host.
static int sums_match(const float *got_dev, const float *want, size_t n) {
  float *got = to_host(got_dev, n);
  int ok = g_bitwise ? bitwise_equal(got, want, n) : sn_rel_err(got, want, n) <= SN_NCCL_REL_TOL;
  if (!ok) fprintf(stderr, "  rel err %.3g over %zu elements\n", sn_rel_err(got, want, n), n);
  free(got);
  return ok;
}

// Data movement (gathers, broadcasts) is exact on every backend.
static int copies_match(const float *got_dev, const float *want, size_t n) {
  float *got = to_host(got_dev, n);
  int ok = bitwise_equal(got, want, n);
  free(got);
  return ok;
}

// expected (n) = sum over ranks in rank order, as the communicator promises.
static void expected_sum(float *expected, size_t n, int world, int test_id) {
  float *tmp = mallocCheck(n * sizeof(float));
  rank_data(expected, n, 0, test_id);
  for (int r = 1; r < world; r++) {
    rank_data(tmp, n, r, test_id);
    for (size_t i = 0; i < n; i++) expected[i] += tmp[i];
  }
  free(tmp);
}

static void check_all_reduce(sn_comm *c, size_t n, int test_id) {
  float *mine = mallocCheck(n * sizeof(float)), *want = mallocCheck(n * sizeof(float));
  rank_data(mine, n, c->rank, test_id);
  expected_sum(want, n, c->world_size, test_id);
  float *buf = to_backend(mine, n);
  sn_comm_all_reduce_sum(c, buf, n, SN_DTYPE_F32);
  CHECK(sums_match(buf, want, n), "all_reduce_sum n=%zu differs", n);
  g_ops->free(buf);
  free(mine);
  free(want);
}

// The gradients' dtype on the GPU: small integers, so the bf16 sums are exact in any order.
static void check_all_reduce_bf16(sn_comm *c) {
  const size_t n = 4099;
  float *mine = mallocCheck(n * sizeof(float)), *want = mallocCheck(n * sizeof(float));
  for (size_t i = 0; i < n; i++) {
    mine[i] = (float)((i + (size_t)c->rank) % BF16_PERIOD);
    want[i] = 0;
    for (int r = 0; r < c->world_size; r++) want[i] += (float)((i + (size_t)r) % BF16_PERIOD);
  }
  void *buf = g_ops->alloc(n * g_ops->storage_size);
  g_ops->upload_f32(buf, mine, n);
  sn_comm_all_reduce_sum(c, buf, n, SN_DTYPE_BF16);
  g_ops->synchronize();
  g_ops->download_f32(mine, buf, n);
  CHECK(bitwise_equal(mine, want, n), "bf16 all_reduce_sum differs (rel err %.3g)", sn_rel_err(mine, want, n));
  g_ops->free(buf);
  free(mine);
  free(want);
}

static void check_async(sn_comm *c) {
  const size_t sizes[] = {1000, 33, 4096};
  float *bufs[SN_ARRAY_LEN(sizes)];
  for (size_t b = 0; b < SN_ARRAY_LEN(sizes); b++) {
    float *mine = mallocCheck(sizes[b] * sizeof(float));
    rank_data(mine, sizes[b], c->rank, 100 + (int)b);
    bufs[b] = to_backend(mine, sizes[b]);
    free(mine);
    sn_comm_all_reduce_async(c, bufs[b], sizes[b], SN_DTYPE_F32, NULL);
  }
  sn_comm_wait(c);
  for (size_t b = 0; b < SN_ARRAY_LEN(sizes); b++) {
    float *want = mallocCheck(sizes[b] * sizeof(float));
    expected_sum(want, sizes[b], c->world_size, 100 + (int)b);
    CHECK(sums_match(bufs[b], want, sizes[b]), "async all-reduce bucket %zu (n=%zu) differs", b, sizes[b]);
    free(want);
    g_ops->free(bufs[b]);
  }
}

static void check_all_gather(sn_comm *c, size_t per_rank, int in_place) {
  int n = c->world_size;
  float *want = mallocCheck(per_rank * n * sizeof(float));
  for (int r = 0; r < n; r++) rank_data(want + r * per_rank, per_rank, r, 200);
  float *recv = to_backend(want, per_rank * n);  // in place: my slice is already there
  if (!in_place) g_ops->memset_zero(recv, per_rank * n * sizeof(float));
  float *send = in_place ? recv + c->rank * per_rank : to_backend(want + c->rank * per_rank, per_rank);
  sn_comm_all_gather(c, send, recv, per_rank, SN_DTYPE_F32);
  CHECK(copies_match(recv, want, per_rank * n), "all_gather per_rank=%zu in_place=%d differs", per_rank, in_place);
  if (!in_place) g_ops->free(send);
  g_ops->free(recv);
  free(want);
}

static void check_reduce_scatter(sn_comm *c, size_t per_rank) {
  int n = c->world_size;
  size_t total = per_rank * n;
  float *mine = mallocCheck(total * sizeof(float)), *want = mallocCheck(total * sizeof(float));
  rank_data(mine, total, c->rank, 300);
  expected_sum(want, total, n, 300);
  float *send = to_backend(mine, total), *recv = g_ops->alloc(per_rank * sizeof(float));
  sn_comm_reduce_scatter_sum(c, send, recv, per_rank, SN_DTYPE_F32);
  CHECK(sums_match(recv, want + c->rank * per_rank, per_rank), "reduce_scatter_sum per_rank=%zu differs", per_rank);
  g_ops->free(send);
  g_ops->free(recv);
  free(mine);
  free(want);
}

static void check_broadcast(sn_comm *c) {
  const size_t n = 777;
  int root = c->world_size - 1;
  float *mine = mallocCheck(n * sizeof(float)), *want = mallocCheck(n * sizeof(float));
  rank_data(mine, n, c->rank, 400);
  rank_data(want, n, root, 400);
  float *buf = to_backend(mine, n);
  sn_comm_broadcast(c, buf, n * sizeof(float), root);
  CHECK(copies_match(buf, want, n), "broadcast from root %d differs", root);
  g_ops->free(buf);
  free(mine);
  free(want);
}

// Uneven counts, one rank with none: documents per rank differ under a token budget.
static size_t uneven_count(int r) { return r == 1 ? 0 : (size_t)(5 * r + 3); }

static void check_all_gather_v(sn_comm *c) {
  int n = c->world_size;
  size_t *counts = mallocCheck(n * sizeof(size_t));
  sn_comm_all_gather_counts_host(c, uneven_count(c->rank), counts);
  size_t total = 0;
  for (int r = 0; r < n; r++) {
    CHECK(counts[r] == uneven_count(r), "all_gather_counts_host: rank %d count %zu, expected %zu", r, counts[r], uneven_count(r));
    total += uneven_count(r);
  }
  float *want = mallocCheck((total + 1) * sizeof(float));
  size_t my_offset = 0;
  for (int r = 0, offset = 0; r < n; offset += (int)uneven_count(r), r++) {
    if (r == c->rank) my_offset = (size_t)offset;
    rank_data(want + offset, uneven_count(r), r, 500);
  }
  float *send = to_backend(want + my_offset, uneven_count(c->rank));
  float *recv = g_ops->alloc((total + 1) * sizeof(float));
  sn_comm_all_gather_v(c, send, recv, counts);
  CHECK(copies_match(recv, want, total), "all_gather_v (uneven counts) differs");
  free(counts);
  free(want);
  g_ops->free(recv);
  g_ops->free(send);
}

// Unequal parts in place (one rank's empty), in flight together with an async all-reduce: each
// rank's own part is summed, as ZeRO-2's layer buckets need.
static void check_reduce_scatter_v(sn_comm *c) {
  int n = c->world_size;
  size_t *counts = mallocCheck(n * sizeof(size_t)), total = 0, mine_at = 0;
  for (int r = 0; r < n; r++) {
    counts[r] = uneven_count(r);
    if (r == c->rank) mine_at = total;
    total += counts[r];
  }
  const size_t other = 257;
  float *mine = mallocCheck(total * sizeof(float)), *want = mallocCheck(total * sizeof(float));
  float *other_host = mallocCheck(other * sizeof(float)), *other_want = mallocCheck(other * sizeof(float));
  rank_data(mine, total, c->rank, 600);
  expected_sum(want, total, n, 600);
  rank_data(other_host, other, c->rank, 601);
  expected_sum(other_want, other, n, 601);
  float *buf = to_backend(mine, total), *other_buf = to_backend(other_host, other);
  sn_comm_reduce_scatter_v_async(c, buf, counts, SN_DTYPE_F32, NULL);
  sn_comm_all_reduce_async(c, other_buf, other, SN_DTYPE_F32, NULL);
  sn_comm_wait(c);
  CHECK(counts[c->rank] == 0 || sums_match(buf + mine_at, want + mine_at, counts[c->rank]),
        "reduce_scatter_v_async: rank %d's part of %zu differs", c->rank, counts[c->rank]);
  CHECK(sums_match(other_buf, other_want, other), "async all-reduce beside a reduce-scatter-v differs");
  g_ops->free(buf);
  g_ops->free(other_buf);
  free(counts);
  free(mine);
  free(want);
  free(other_host);
  free(other_want);
}

static void check_f64_host(sn_comm *c) {
  double vals[3] = {1.0, (double)c->rank, 0.25 * c->rank};
  sn_comm_all_reduce_f64_host(c, vals, 3);
  double n = c->world_size, rank_sum = n * (n - 1) / 2;
  CHECK(vals[0] == n && vals[1] == rank_sum && vals[2] == 0.25 * rank_sum,
        "all_reduce_f64_host: got %g %g %g", vals[0], vals[1], vals[2]);
}

// Values that differ only in bits below a double's 53-bit mantissa: a gather through doubles
// would round them together (the replica check compares 64-bit weight hashes this way).
static void check_u64_host(sn_comm *c) {
  const uint64_t base = 0xffffffffffffff01ull;
  uint64_t *all = mallocCheck((size_t)c->world_size * sizeof *all);
  sn_comm_all_gather_u64_host(c, base + (uint64_t)c->rank, all);
  for (int r = 0; r < c->world_size; r++)
    CHECK(all[r] == base + (uint64_t)r, "all_gather_u64_host: rank %d gave %016llx, expected %016llx", r,
          (unsigned long long)all[r], (unsigned long long)(base + (uint64_t)r));
  free(all);
}

static void simulate_failure(sn_comm *c, const char *mode) {
  if (c->rank == FAILING_RANK) {
    fprintf(stderr, "rank %d: simulated failure (%s)\n", c->rank, mode);
    fflush(stderr);
    if (strcmp(mode, "exit") == 0) exit(1);
    for (;;) pause();  // hang: never reaches the next collective
  }
  float one = 1.0f, *x = to_backend(&one, 1);
  for (int i = 0; i < SURVIVOR_ROUNDS; i++) sn_comm_all_reduce_sum(c, x, 1, SN_DTYPE_F32);
  sn_comm_synchronize(c);
  fprintf(stderr, "rank %d: the survivors' collectives completed without rank %d\n", c->rank, FAILING_RANK);
  exit(0);  // a test failure: the job should have been ended
}

int main(int argc, char **argv) {
  double timeout_s = 0;
  const char *fail_mode = NULL, *device = "cpu";
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) timeout_s = atof(argv[++i]);
    else if (strcmp(argv[i], "--fail") == 0 && i + 1 < argc) fail_mode = argv[++i];
    else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) device = argv[++i];
    else sn_bad_input("usage: mpi_comm_check [--device cpu|cuda] [--timeout S] [--fail exit|hang] (got '%s')", argv[i]);
  }
  if (strcmp(device, "cuda") == 0) {
#ifndef SN_WITH_NCCL
    sn_test_skip("--device cuda: built without NCCL");
#endif
    const char *why_not = NULL;
    if (!sn_ops_cuda(&why_not)) sn_test_skip(why_not);
  }
  sn_comm *c = sn_comm_create(device, timeout_s);
  g_ops = sn_ops_by_name(device);
  g_bitwise = c->backend != SN_COMM_NCCL;
  if (c->rank == 0)
    fprintf(stderr, "mpi_comm_check: %d ranks, backend %s, launcher %s, device %s, timeout %.0f s\n",
            c->world_size, sn_comm_backend_name(c->backend), c->launcher, device, c->timeout_s);

  const size_t sizes[] = {1, 2, 7, 1000, 100003};
  for (size_t i = 0; i < SN_ARRAY_LEN(sizes); i++) check_all_reduce(c, sizes[i], (int)i);
  if (fail_mode) simulate_failure(c, fail_mode);
  check_async(c);
  check_all_gather(c, 1, 0);
  check_all_gather(c, 1001, 0);
  check_all_gather(c, 1001, 1);
  check_reduce_scatter(c, 1);
  check_reduce_scatter(c, 4099);
  check_broadcast(c);
  check_all_gather_v(c);
  check_reduce_scatter_v(c);
  if (g_ops->storage == SN_DTYPE_BF16) check_all_reduce_bf16(c);
  check_f64_host(c);
  check_u64_host(c);
  sn_comm_barrier(c);

  // Every rank's verdict: one failing rank fails the job.
  double failures = sn_test_failures;
  sn_comm_all_reduce_f64_host(c, &failures, 1);
  int rank = c->rank;
  sn_comm_destroy(c);
  if (rank != 0) return sn_test_failures ? 1 : 0;
  if (failures > 0 && !sn_test_failures) fprintf(stderr, "mpi_comm_check: another rank failed\n");
  sn_test_failures += (int)failures - sn_test_failures;
  return sn_test_finish("mpi_comm_check");
}
