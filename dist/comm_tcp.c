// TCP communicator for --device cpu when no MPI started the ranks (srun --mpi=none, or the plain
// RANK/WORLD_SIZE environment): host buffers, fp32, every collective through rank 0.
//
// Links. The TCP rendezvous of bootstrap.h (MASTER_ADDR:MASTER_PORT, rank 0 on the first node of
// the allocation) leaves one connection open between rank 0 and each other rank: a star, no MPI.
//
// Collectives. Every one is "the ranks send their part to rank 0; rank 0 combines them; rank 0
// sends every rank what it gets": rank 0 adds the parts in rank order 0, 1, …, n-1 in fp32 with
// the MPI backend's own sum (sn_comm_sum_in_rank_order), so a run gives the same bits over TCP as
// over MPI, the same on every rank. Rank 0 moves n times the buffer: fine for the CPU backend's
// few ranks (tests, small machines), not meant to scale. The async calls complete before they
// return (sn_comm_wait has nothing left to do).
//
// Failures. A rank that exits closes its connection: the rank 0 reading from it gets EOF and ends
// the job with a message naming that rank; the other ranks then see rank 0's connection close and
// end too. A rank that hangs is caught by the watchdog (timeout_s), as on MPI.
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "comm_backend.h"
#include "common.h"

typedef struct {
  int *fds;             // world_size entries, as sn_rendezvous_connect fills them
  unsigned char *scratch;  // rank 0: every rank's part of the collective in progress
  size_t scratch_bytes;
} tcp_state;

static tcp_state *state_of(sn_comm *c) { return c->impl->state; }

// ---- moving bytes ------------------------------------------------------------------------------

// Sends or receives exactly `bytes` with `peer`; a closed or broken connection ends the job.
static void transfer(sn_comm *c, int peer, void *buf, size_t bytes, int sending, const char *what) {
  int fd = c->rank == 0 ? state_of(c)->fds[peer] : state_of(c)->fds[0];
  unsigned char *p = buf;
  while (bytes > 0) {
    ssize_t n = sending ? send(fd, p, bytes, MSG_NOSIGNAL) : recv(fd, p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      sn_comm_abort_job(c, NULL,
                        "%s: the connection to rank %d %s (tcp backend, launcher %s): that rank "
                        "exited or was killed; ending the job",
                        what, peer, n == 0 ? "was closed" : strerror(errno), c->launcher);
    p += n;
    bytes -= (size_t)n;
  }
}

static unsigned char *scratch_of(sn_comm *c, size_t bytes) {
  tcp_state *s = state_of(c);
  if (bytes > s->scratch_bytes) {
    free(s->scratch);
    s->scratch = mallocCheck(bytes);
    s->scratch_bytes = bytes;
  }
  return s->scratch;
}

// Rank 0: all = rank 0's part, then rank 1's, … (part_bytes[r] each); mine may lie inside all.
// Other ranks: send mine (part_bytes[rank]) to rank 0; all is not touched.
static void gather_to_root(sn_comm *c, const void *mine, void *all, const size_t *part_bytes, const char *what) {
  if (c->rank != 0) {
    transfer(c, 0, (void *)mine, part_bytes[c->rank], 1, what);
    return;
  }
  unsigned char *at = all;
  memmove(at, mine, part_bytes[0]);
  at += part_bytes[0];
  for (int r = 1; r < c->world_size; r++) {
    transfer(c, r, at, part_bytes[r], 0, what);
    at += part_bytes[r];
  }
}

// buf (bytes) = rank 0's buf, on every rank.
static void broadcast_from_root(sn_comm *c, void *buf, size_t bytes, const char *what) {
  if (c->rank != 0) {
    transfer(c, 0, buf, bytes, 0, what);
    return;
  }
  for (int r = 1; r < c->world_size; r++) transfer(c, r, buf, bytes, 1, what);
}

// Rank r's mine (part_bytes[r]) = rank 0's all from offset part_bytes[0] + … + part_bytes[r-1].
static void scatter_from_root(sn_comm *c, const void *all, void *mine, const size_t *part_bytes, const char *what) {
  if (c->rank != 0) {
    transfer(c, 0, mine, part_bytes[c->rank], 0, what);
    return;
  }
  const unsigned char *at = all;
  memmove(mine, at, part_bytes[0]);
  at += part_bytes[0];
  for (int r = 1; r < c->world_size; r++) {
    transfer(c, r, (void *)at, part_bytes[r], 1, what);
    at += part_bytes[r];
  }
}

// part_bytes (world_size) = bytes for every rank.
static size_t *equal_parts(sn_comm *c, size_t bytes) {
  size_t *parts = mallocCheck((size_t)c->world_size * sizeof *parts);
  for (int r = 0; r < c->world_size; r++) parts[r] = bytes;
  return parts;
}

// Rank 0: (world_size, count) floats, every rank's buf, in its scratch; the others send theirs.
static float *gather_floats(sn_comm *c, const void *buf, size_t count, const char *what) {
  size_t *parts = equal_parts(c, count * sizeof(float));
  float *all = c->rank == 0 ? (float *)scratch_of(c, (size_t)c->world_size * parts[0]) : NULL;
  gather_to_root(c, buf, all, parts, what);
  free(parts);
  return all;
}

// ---- collectives -------------------------------------------------------------------------------

#define watched(c, what, count, body)                          \
  do {                                                         \
    sn_watchdog_enter((c)->impl->watchdog, (what), (count));   \
    body;                                                      \
    sn_watchdog_leave((c)->impl->watchdog);                    \
  } while (0)

static void tcp_all_reduce_sum(sn_comm *c, void *buf, size_t count, sn_dtype dtype) {
  const char *what = "all-reduce (tcp, through rank 0)";
  watched(c, what, count, {
    float *all = gather_floats(c, buf, count, what);
    if (c->rank == 0) sn_comm_sum_in_rank_order(buf, all, c->world_size, count);
    broadcast_from_root(c, buf, count * sizeof(float), what);
  });
}

static void tcp_all_gather(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  const char *what = "all-gather (tcp, through rank 0)";
  size_t bytes = count_per_rank * sizeof(float);
  watched(c, what, count_per_rank * c->world_size, {
    size_t *parts = equal_parts(c, bytes);
    gather_to_root(c, send, recv, parts, what);
    free(parts);
    broadcast_from_root(c, recv, bytes * c->world_size, what);
  });
}

static void tcp_reduce_scatter_sum(sn_comm *c, const void *send, void *recv, size_t count_per_rank, sn_dtype dtype) {
  const char *what = "reduce-scatter (tcp, through rank 0)";
  size_t total = count_per_rank * c->world_size;
  watched(c, what, total, {
    float *all = gather_floats(c, send, total, what);
    float *sum = NULL;
    if (c->rank == 0) {
      sum = mallocCheck(total * sizeof(float));
      sn_comm_sum_in_rank_order(sum, all, c->world_size, total);
    }
    size_t *parts = equal_parts(c, count_per_rank * sizeof(float));
    scatter_from_root(c, sum, recv, parts, what);
    free(parts);
    free(sum);
  });
}

static void tcp_broadcast(sn_comm *c, void *buf, size_t bytes, int root) {
  const char *what = "broadcast (tcp, through rank 0)";
  watched(c, what, bytes, {
    if (root != 0 && c->rank == root) transfer(c, 0, buf, bytes, 1, what);
    if (root != 0 && c->rank == 0) transfer(c, root, buf, bytes, 0, what);
    broadcast_from_root(c, buf, bytes, what);
  });
}

static void tcp_all_gather_v(sn_comm *c, const float *send, float *recv, const size_t *counts) {
  const char *what = "all-gather-v (tcp, through rank 0)";
  size_t *parts = mallocCheck((size_t)c->world_size * sizeof *parts);
  size_t total = 0;
  for (int r = 0; r < c->world_size; r++) {
    parts[r] = counts[r] * sizeof(float);
    total += counts[r];
  }
  watched(c, what, total, {
    gather_to_root(c, send, recv, parts, what);
    broadcast_from_root(c, recv, total * sizeof(float), what);
  });
  free(parts);
}

static void tcp_barrier(sn_comm *c) {
  const char *what = "barrier (tcp, through rank 0)";
  unsigned char token = 1;
  watched(c, what, 0, {
    if (c->rank == 0) {
      for (int r = 1; r < c->world_size; r++) transfer(c, r, &token, 1, 0, what);
    } else {
      transfer(c, 0, &token, 1, 1, what);
    }
    broadcast_from_root(c, &token, 1, what);
  });
}

static void tcp_synchronize(sn_comm *c) {}

static void tcp_all_reduce_f64_host(sn_comm *c, double *vals, int n) {
  const char *what = "host all-reduce (tcp, through rank 0)";
  watched(c, what, (size_t)n, {
    size_t *parts = equal_parts(c, (size_t)n * sizeof(double));
    double *all = c->rank == 0 ? (double *)scratch_of(c, (size_t)c->world_size * parts[0]) : NULL;
    gather_to_root(c, vals, all, parts, what);
    free(parts);
    for (int i = 0; i < n && c->rank == 0; i++) {
      double sum = all[i];
      for (int r = 1; r < c->world_size; r++) sum += all[(size_t)r * n + i];
      vals[i] = sum;
    }
    broadcast_from_root(c, vals, (size_t)n * sizeof(double), what);
  });
}

static void tcp_all_gather_u64_host(sn_comm *c, uint64_t mine, uint64_t *all) {
  const char *what = "host u64 all-gather (tcp, through rank 0)";
  watched(c, what, (size_t)c->world_size, {
    size_t *parts = equal_parts(c, sizeof(uint64_t));
    gather_to_root(c, &mine, all, parts, what);
    free(parts);
    broadcast_from_root(c, all, (size_t)c->world_size * sizeof(uint64_t), what);
  });
}

// Completed at once: the caller may not touch buf before sn_comm_wait, which it then may.
static void tcp_all_reduce_async(sn_comm *c, void *buf, size_t count, sn_dtype dtype, void *ready_event) {
  tcp_all_reduce_sum(c, buf, count, dtype);
}

// Every part summed on rank 0 in rank order (the bits of the MPI backend's reduce-scatter-v),
// then each rank gets its own part back.
static void tcp_reduce_scatter_v_async(sn_comm *c, void *buf, const size_t *counts, sn_dtype dtype,
                                       void *ready_event) {
  const char *what = "reduce-scatter-v (tcp, through rank 0)";
  size_t *parts = mallocCheck((size_t)c->world_size * sizeof *parts);
  size_t total = 0, mine_begin = 0;
  for (int r = 0; r < c->world_size; r++) {
    if (r == c->rank) mine_begin = total;
    parts[r] = counts[r] * sizeof(float);
    total += counts[r];
  }
  watched(c, what, total, {
    float *all = gather_floats(c, buf, total, what);
    if (c->rank == 0) sn_comm_sum_in_rank_order(buf, all, c->world_size, total);
    scatter_from_root(c, buf, (float *)buf + mine_begin, parts, what);
  });
  free(parts);
}

static void tcp_wait(sn_comm *c) {}
static void tcp_set_compute_stream(sn_comm *c, void *stream) {}

static void tcp_destroy(sn_comm *c) {
  tcp_state *s = state_of(c);
  tcp_barrier(c);  // no rank closes its links while another still needs them
  for (int r = 0; r < c->world_size; r++)
    if (s->fds[r] >= 0) close(s->fds[r]);
  free(s->fds);
  free(s->scratch);
  free(s);
}

static const sn_comm_vtable TCP_VTABLE = {
    .all_reduce_sum = tcp_all_reduce_sum,
    .all_gather = tcp_all_gather,
    .reduce_scatter_sum = tcp_reduce_scatter_sum,
    .broadcast = tcp_broadcast,
    .all_gather_v = tcp_all_gather_v,
    .barrier = tcp_barrier,
    .synchronize = tcp_synchronize,
    .all_reduce_f64_host = tcp_all_reduce_f64_host,
    .all_gather_u64_host = tcp_all_gather_u64_host,
    .all_reduce_async = tcp_all_reduce_async,
    .reduce_scatter_v_async = tcp_reduce_scatter_v_async,
    .wait = tcp_wait,
    .set_compute_stream = tcp_set_compute_stream,
    .destroy = tcp_destroy,
};

void sn_comm_tcp_init(sn_comm *c, const sn_dist_env *env) {
  tcp_state *s = callocCheck(1, sizeof(*s));
  s->fds = mallocCheck((size_t)c->world_size * sizeof(int));
  char err[512];
  if (sn_rendezvous_connect(env->master_addr, env->master_port, c->rank, c->world_size, c->timeout_s,
                            s->fds, err, sizeof(err)) != 0)
    sn_fatal("communicator (tcp backend, launcher %s, rank %d of %d): %s", c->launcher, c->rank,
             c->world_size, err);
  c->impl = callocCheck(1, sizeof(*c->impl));
  c->impl->vt = &TCP_VTABLE;
  c->impl->state = s;
  c->backend = SN_COMM_TCP;
  c->impl->watchdog = sn_watchdog_start(c, NULL, NULL);
}
