// The communicator: the collectives data-parallel training needs, behind one C interface.
//
// Backends (chosen by sn_comm_create from the device and the launcher, see bootstrap.h):
//   SN_COMM_SINGLE  world size 1: collectives are copies (or nothing). --device cpu, and cuda in
//                   builds without NCCL.
//   SN_COMM_MPI     --device cpu with world size > 1 under an MPI launcher (mpirun, PMI, PMIx).
//                   Buffers are host memory, fp32 only.
//   SN_COMM_TCP     --device cpu with world size > 1 without MPI (srun --mpi=none, RANK/WORLD_SIZE):
//                   the TCP rendezvous's connections, every collective through rank 0. Host
//                   memory, fp32 only, the same bits as MPI (comm_tcp.c).
//   SN_COMM_NCCL    --device cuda (also at world size 1: it exercises the real path). Buffers are
//                   device memory; bf16 and fp32. One GPU per rank: local_rank % device_count.
//
// Buffers are backend memory, as in host/backend/ops.h: `void *` + a dtype (SN_DTYPE_F32 or
// SN_DTYPE_BF16), `float *` always fp32. Counts are elements, not bytes, except in broadcast.
//
// Threads. One host thread drives a communicator (the watchdog thread is the communicator's own).
//
// Ordering. MPI and single-process calls are complete when they return. NCCL calls are enqueued
// on the compute stream (sn_comm_set_compute_stream; default: the legacy default stream) and are
// asynchronous with respect to the host, like the ops: later ops on that stream see the result;
// sn_comm_synchronize waits on the host. The *_host functions are complete when they return on
// every backend.
//
// Determinism. Sums are exact-order: every all-reduce and reduce-scatter adds the ranks'
// contributions in rank order (0, 1, …, n-1) in fp32 on MPI and TCP, so results are the same run to run
// and bitwise identical on every rank. NCCL's order is fixed for a given world size, topology and
// NCCL version (NCCL_ALGO/NCCL_PROTO pinned by the environment if needed).
//
// Failures never hang. Every blocking point is watched by a thread: a collective that does not
// complete within timeout_s ends the job with "error: rank R/N: <operation> did not complete
// within S s ..." (MPI_Abort on MPI; ncclCommAbort then exit on NCCL). A rank that exits while
// the others wait makes mpirun kill the job at once (Open MPI aborts a job when a rank exits
// non-zero or without MPI_Finalize); under srun/NCCL the survivors see an NCCL error or the
// timeout; on TCP its connection closes, and rank 0 ends the job naming it. timeout_s must exceed the longest legitimate wait at a collective (a rank doing an
// evaluation or a checkpoint while the others wait): the default is SN_COMM_DEFAULT_TIMEOUT_S.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "bootstrap.h"
#include "dtype.h"

#define SN_COMM_DEFAULT_TIMEOUT_S 600.0

typedef enum { SN_COMM_SINGLE = 0, SN_COMM_MPI = 1, SN_COMM_NCCL = 2, SN_COMM_TCP = 3 } sn_comm_backend;

typedef struct sn_comm_impl sn_comm_impl;  // backend state, private to dist/

typedef struct sn_comm {
  int rank, world_size;
  int local_rank, local_size;
  sn_comm_backend backend;
  const char *launcher;  // from sn_dist_detect: "mpirun", "pmi", "slurm", "env", "single"
  double timeout_s;
  sn_comm_impl *impl;
} sn_comm;

// device "cpu" or "cuda"; timeout_s <= 0 means SN_COMM_DEFAULT_TIMEOUT_S. Never returns NULL:
// a bad environment, a build without the needed backend, or an initialization that times out
// ends the process with a message saying which. With "cuda" it selects this rank's GPU
// (cudaSetDevice(local_rank % device_count)): create it before any CUDA allocation.
sn_comm *sn_comm_create(const char *device, double timeout_s);
void sn_comm_destroy(sn_comm *c);  // waits for outstanding work; collective (every rank calls it)
const char *sn_comm_backend_name(sn_comm_backend backend);  // "single", "mpi", "nccl", "tcp"

// NCCL: the cudaStream_t (as void *) the trainer's ops run on; collectives are ordered on it.
// Ignored by the other backends.
void sn_comm_set_compute_stream(sn_comm *c, void *stream);

// ---- collectives on backend buffers ------------------------------------------------------------
// buf (count) = sum over ranks of buf, in place.
void sn_comm_all_reduce_sum(sn_comm *c, void *buf, size_t count, sn_dtype dtype);
// recv (world_size * count_per_rank) = rank 0's send, then rank 1's, … . send may be
// recv + rank * count_per_rank (in place).
void sn_comm_all_gather(sn_comm *c, const void *send, void *recv, size_t count_per_rank,
                        sn_dtype dtype);
// recv (count_per_rank) = sum over ranks of send[rank * count_per_rank ...], send being
// (world_size * count_per_rank): each rank gets the summed slice it owns.
void sn_comm_reduce_scatter_sum(sn_comm *c, const void *send, void *recv, size_t count_per_rank,
                                sn_dtype dtype);
// buf (bytes) = root's buf.
void sn_comm_broadcast(sn_comm *c, void *buf, size_t bytes, int root);
// fp32, variable counts: recv (sum of counts) = rank 0's counts[0] floats, then rank 1's, … .
// counts has world_size entries, the same on every rank; send has counts[rank] floats.
void sn_comm_all_gather_v(sn_comm *c, const float *send, float *recv, const size_t *counts);
// Returns when every rank has called it (NCCL: and all earlier collectives have completed).
void sn_comm_barrier(sn_comm *c);
// Host only: waits for every collective enqueued so far (NCCL); no-op on MPI and single.
void sn_comm_synchronize(sn_comm *c);

// ---- host scalars, any backend ----------------------------------------------------------------
// vals (n) = sum over ranks, in place, in rank order (losses, norms, token counters).
void sn_comm_all_reduce_f64_host(sn_comm *c, double *vals, int n);
// counts (world_size) = every rank's my_count: the sizes an sn_comm_all_gather_v needs.
void sn_comm_all_gather_counts_host(sn_comm *c, size_t my_count, size_t *counts);
// all (world_size) = every rank's mine, bit-exact (moved as integers: weight hashes use all 64 bits).
void sn_comm_all_gather_u64_host(sn_comm *c, uint64_t mine, uint64_t *all);

// ---- overlapped all-reduce (bucketed gradients) -------------------------------------------------
// Starts an in-place sum all-reduce of buf and returns at once. NCCL: runs on the communicator's
// own stream after `ready_event` (a cudaEvent_t as void *, recorded by the caller after the
// bucket's gradients were written; NULL = after all work enqueued so far on the compute stream).
// MPI: starts the exchange with non-blocking MPI. buf must not be touched until sn_comm_wait.
void sn_comm_all_reduce_async(sn_comm *c, void *buf, size_t count, sn_dtype dtype,
                              void *ready_event);
// Starts a sum over ranks of which each rank keeps only its own part, and returns at once: buf is
// rank 0's part (counts[0] elements), then rank 1's, … (counts: world_size entries, the same on
// every rank, any of them 0). After sn_comm_wait rank r's part of buf holds the sum of every
// rank's buf over that part; the other parts are undefined. A reduce-scatter of unequal parts, in
// place: ZeRO-2's layer buckets, whose parts are the layer's intersections with the ranks' slices.
// MPI: as an all-reduce without its gather (rank order, bit for bit). NCCL: one ncclReduce to each
// part's owner, grouped, on the communicator's stream after ready_event (as all_reduce_async).
// buf must not be touched until sn_comm_wait.
void sn_comm_reduce_scatter_v_async(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype,
                                    void *ready_event);
// Completes every started async all-reduce and reduce-scatter. NCCL: makes the compute stream wait
// for them (the host does not block); MPI: returns with the sums in place.
void sn_comm_wait(sn_comm *c);
