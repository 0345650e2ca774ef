// Bootstrap: who am I in the job, and a small TCP rendezvous for jobs that have no MPI.
//
// sn_dist_detect reads the launcher's environment, first match wins:
//   1. mpirun (Open MPI):  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
//   2. PMI (MPICH, Intel): PMI_RANK / PMI_SIZE, MPI_LOCALRANKID / MPI_LOCALNRANKS
//   3. srun (Slurm):       SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, local size from
//                          SLURM_TASKS_PER_NODE ("8(x2),4") and SLURM_NODEID
//   4. plain environment:  RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (torchrun's names)
//   5. none of these:      a single process
// MASTER_ADDR / MASTER_PORT are read under every launcher: the TCP rendezvous uses them whenever
// the NCCL unique id cannot travel through MPI (srun, plain environment).
#pragma once
#include <stddef.h>

#define SN_DIST_ADDR_MAX 256

typedef struct {
  int rank, world_size;
  int local_rank, local_size;  // within this node; the GPU is local_rank % device_count
  const char *launcher;        // "mpirun", "pmi", "slurm", "env" or "single" (static string)
  char master_addr[SN_DIST_ADDR_MAX];  // "" when MASTER_ADDR is unset
  int master_port;                     // 0 when MASTER_PORT is unset
} sn_dist_env;

// Reads the environment; on invalid values (not an integer, rank >= world size, a port outside
// 1..65535) writes an error naming the variable to err and returns -1, else returns 0.
int sn_dist_detect_checked(sn_dist_env *out, char *err, size_t err_len);
// The same, exiting with SN_EXIT_BAD_INPUT and that message on invalid values.
sn_dist_env sn_dist_detect(void);

// TCP rendezvous, one round: rank 0 listens on port `port` (all interfaces) and accepts one
// connection from every other rank; once all world_size - 1 have arrived it sends `bytes` bytes of
// `blob` to each. Other ranks connect to addr:port (retrying while rank 0 is not yet listening)
// and receive the blob into `blob`. Every rank returns only after all ranks have arrived, so a
// round with bytes == 0 is a barrier. A round that does not finish within timeout_s fails: returns
// -1 with a message in err naming the address and, on rank 0, the missing ranks. Returns 0.
int sn_rendezvous(const char *addr, int port, int rank, int world_size, void *blob, size_t bytes,
                  double timeout_s, char *err, size_t err_len);

// The same round with bytes == 0, the connections kept open: the links of a communicator whose
// collectives go through rank 0 (comm_tcp.c). fds has world_size entries: on rank 0, fds[r] is the
// connection to rank r (fds[0] = -1); on the other ranks fds[0] is the connection to rank 0 and
// the rest are -1. The sockets are blocking, with TCP_NODELAY. Returns 0, or -1 with err (as
// sn_rendezvous), no connection left open.
int sn_rendezvous_connect(const char *addr, int port, int rank, int world_size, double timeout_s,
                          int *fds, char *err, size_t err_len);
