// Launcher detection and the TCP rendezvous (see bootstrap.h).
#define _GNU_SOURCE
#include "bootstrap.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

// ---- environment -----------------------------------------------------------------------------

typedef struct {
  const char *launcher;
  const char *rank, *world, *local_rank, *local_size;  // variable names; local ones optional
} launcher_vars;

// In precedence order: an mpirun inside a Slurm allocation sets both OMPI_* and SLURM_*, and
// the OMPI_* values are the ones that describe this process.
static const launcher_vars LAUNCHERS[] = {
    {"mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE"},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", NULL},
    {"env", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
};

#define SN_MAX_PORT 65535

static void set_err(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t err_len, const char *fmt, ...) {
  if (!err || !err_len) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

// Strict decimal parse of a whole string into [min_value, INT_MAX].
static int parse_int(const char *s, int min_value, int *out) {
  if (!s || !*s) return -1;
  char *end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end != '\0' || v < min_value || v > INT_MAX) return -1;
  *out = (int)v;
  return 0;
}

// 1 when `name` is set and valid, 0 when unset (or empty), -1 (with err) when set but invalid.
static int env_int(const char *name, int min_value, int *out, char *err, size_t err_len) {
  const char *s = getenv(name);
  if (!s || !*s) return 0;
  if (parse_int(s, min_value, out) != 0) {
    set_err(err, err_len, "environment variable %s='%s' is not an integer >= %d", name, s, min_value);
    return -1;
  }
  return 1;
}

// Slurm's task layout "2(x3),1": two tasks on each of the first three nodes, one on the fourth.
// Returns the task count of node `node_id`, or -1 when the string does not parse or is too short.
static int slurm_tasks_on_node(const char *layout, int node_id) {
  const char *p = layout;
  int node = 0;
  while (*p) {
    char *end = NULL;
    long tasks = strtol(p, &end, 10);
    if (end == p || tasks < 1) return -1;
    long repeat = 1;
    p = end;
    if (*p == '(') {
      if (p[1] != 'x') return -1;
      repeat = strtol(p + 2, &end, 10);
      if (end == p + 2 || *end != ')' || repeat < 1) return -1;
      p = end + 1;
    }
    if (node_id < node + repeat) return (int)tasks;
    node += (int)repeat;
    if (*p == ',') p++;
    else if (*p) return -1;
  }
  return -1;
}

// The number of tasks of this step on this node, when Slurm says so.
static int slurm_local_size(char *err, size_t err_len) {
  const char *layout = getenv("SLURM_STEP_TASKS_PER_NODE");
  const char *layout_name = "SLURM_STEP_TASKS_PER_NODE";
  if (!layout || !*layout) {
    layout = getenv("SLURM_TASKS_PER_NODE");
    layout_name = "SLURM_TASKS_PER_NODE";
  }
  int node_id = 0;
  if (env_int("SLURM_NODEID", 0, &node_id, err, err_len) < 0) return -1;
  if (!layout || !*layout) return 0;  // unknown; caller falls back
  int n = slurm_tasks_on_node(layout, node_id);
  if (n < 0) {
    set_err(err, err_len, "environment variable %s='%s' has no task count for SLURM_NODEID=%d",
            layout_name, layout, node_id);
    return -1;
  }
  return n;
}

int sn_dist_detect_checked(sn_dist_env *out, char *err, size_t err_len) {
  memset(out, 0, sizeof(*out));
  out->world_size = 1;
  out->local_size = 1;
  out->launcher = "single";

  for (size_t i = 0; i < SN_ARRAY_LEN(LAUNCHERS); i++) {
    const launcher_vars *lv = &LAUNCHERS[i];
    int rank = 0, world = 0;
    int has_rank = env_int(lv->rank, 0, &rank, err, err_len);
    if (has_rank < 0) return -1;
    if (has_rank == 0) continue;
    const char *world_name = lv->world;
    // Inside an srun step SLURM_STEP_NUM_TASKS is the size of this step (the job may hold more).
    if (strcmp(lv->launcher, "slurm") == 0 && getenv("SLURM_STEP_NUM_TASKS")) world_name = "SLURM_STEP_NUM_TASKS";
    int has_world = env_int(world_name, 1, &world, err, err_len);
    if (has_world < 0) return -1;
    if (has_world == 0) {
      set_err(err, err_len, "environment variable %s=%d is set but %s is not", lv->rank, rank, world_name);
      return -1;
    }
    if (rank >= world) {
      set_err(err, err_len, "environment variable %s=%d is not below %s=%d", lv->rank, rank, world_name, world);
      return -1;
    }
    int local_rank = 0, local_size = 0;
    int has_local_rank = env_int(lv->local_rank, 0, &local_rank, err, err_len);
    if (has_local_rank < 0) return -1;
    if (lv->local_size) {
      if (env_int(lv->local_size, 1, &local_size, err, err_len) < 0) return -1;
    } else {
      local_size = slurm_local_size(err, err_len);
      if (local_size < 0) return -1;
    }
    if (!has_local_rank) local_rank = rank;  // no node information: assume a single node
    if (local_size == 0) local_size = has_local_rank ? local_rank + 1 : world;
    if (local_rank >= local_size) {
      set_err(err, err_len, "environment variable %s=%d is not below the local size %d",
              lv->local_rank, local_rank, local_size);
      return -1;
    }
    out->rank = rank;
    out->world_size = world;
    out->local_rank = local_rank;
    out->local_size = local_size;
    out->launcher = lv->launcher;
    break;
  }

  const char *addr = getenv("MASTER_ADDR");
  if (addr && *addr) {
    if (strlen(addr) >= sizeof(out->master_addr)) {
      set_err(err, err_len, "environment variable MASTER_ADDR is longer than %zu characters",
              sizeof(out->master_addr) - 1);
      return -1;
    }
    strcpy(out->master_addr, addr);
  }
  int port = 0;
  int has_port = env_int("MASTER_PORT", 1, &port, err, err_len);
  if (has_port < 0) return -1;
  if (has_port && port > SN_MAX_PORT) {
    set_err(err, err_len, "environment variable MASTER_PORT=%d is not a TCP port (1..%d)", port, SN_MAX_PORT);
    return -1;
  }
  out->master_port = port;
  return 0;
}

sn_dist_env sn_dist_detect(void) {
  sn_dist_env env;
  char err[512];
  if (sn_dist_detect_checked(&env, err, sizeof(err)) != 0) sn_bad_input("%s", err);
  return env;
}

// ---- TCP rendezvous ----------------------------------------------------------------------------

#define RDV_MAGIC 0x534e5256u    // "SNRV": tells our peers from strangers on the port
#define RDV_VERSION 1u
#define RDV_HELLO_BYTES 24       // magic, version, rank, world, blob bytes (u32 u32 u32 u32 u64)
#define RDV_REPLY_BYTES 16       // magic, status, blob bytes (u32 u32 u64)
#define RDV_STATUS_OK 0u
#define RDV_RETRY_S 0.1          // pause between connection attempts while rank 0 is not up yet
#define RDV_CONNECT_ATTEMPT_S 5.0  // one connect() to an unreachable host gives up after this
#define RDV_LISTEN_BACKLOG 1024
#define RDV_HELLO_WAIT_S 10.0    // our peers send their hello at once; a silent stranger is dropped

static void put_u32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (24 - 8 * i)); }
static void put_u64(unsigned char *p, uint64_t v) { put_u32(p, (uint32_t)(v >> 32)); put_u32(p + 4, (uint32_t)v); }
static uint32_t get_u32(const unsigned char *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }
static uint64_t get_u64(const unsigned char *p) { return ((uint64_t)get_u32(p) << 32) | get_u32(p + 4); }

static int ms_until(double deadline) {
  double left = deadline - sn_now_s();
  if (left <= 0) return 0;
  return left > INT_MAX / 1000.0 ? INT_MAX : (int)(left * 1000.0) + 1;
}

// Waits until fd is ready for `events` or the deadline passes. 1 ready, 0 timeout, -1 error.
static int wait_fd(int fd, short events, double deadline) {
  for (;;) {
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, ms_until(deadline));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0 && sn_now_s() < deadline) continue;  // poll's millisecond rounding
    return r > 0 ? 1 : 0;
  }
}

// Sends or receives exactly `bytes` before the deadline. 0 done, -1 error/EOF (errno set;
// ETIMEDOUT on timeout, ECONNRESET on EOF).
static int transfer_all(int fd, void *buf, size_t bytes, int sending, double deadline) {
  unsigned char *p = buf;
  while (bytes > 0) {
    int ready = wait_fd(fd, sending ? POLLOUT : POLLIN, deadline);
    if (ready == 0) errno = ETIMEDOUT;
    if (ready <= 0) return -1;
    ssize_t n = sending ? send(fd, p, bytes, MSG_NOSIGNAL) : recv(fd, p, bytes, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return -1;
    if (n == 0) {
      errno = ECONNRESET;
      return -1;
    }
    p += n;
    bytes -= (size_t)n;
  }
  return 0;
}

static int listen_on_port(int port, char *err, size_t err_len) {
  char port_str[16];
  snprintf(port_str, sizeof(port_str), "%d", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
  struct addrinfo *list = NULL;
  int gai = getaddrinfo(NULL, port_str, &hints, &list);
  if (gai != 0) {
    set_err(err, err_len, "rendezvous: getaddrinfo for port %d: %s", port, gai_strerror(gai));
    return -1;
  }
  // Prefer the IPv6 wildcard in dual-stack mode (accepts IPv4 too), else take what binds.
  int fd = -1, last_errno = 0;
  for (int want_v6 = 1; want_v6 >= 0 && fd < 0; want_v6--) {
    for (struct addrinfo *a = list; a && fd < 0; a = a->ai_next) {
      if ((a->ai_family == AF_INET6) != want_v6) continue;
      fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) {
        last_errno = errno;
        continue;
      }
      int one = 1, zero = 0;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // rebind after TIME_WAIT
      if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
      if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, RDV_LISTEN_BACKLOG) != 0) {
        last_errno = errno;
        close(fd);
        fd = -1;
      }
    }
  }
  freeaddrinfo(list);
  if (fd < 0)
    set_err(err, err_len, "rendezvous: rank 0 cannot listen on port %d (MASTER_PORT): %s", port,
            strerror(last_errno));
  return fd;
}

// kept (world entries) or NULL: where the connections of a successful round stay open, else closed.
static int rank0_serve(int port, const char *addr, int world, const void *blob, size_t bytes,
                       double timeout_s, int *kept, char *err, size_t err_len) {
  int listen_fd = listen_on_port(port, err, err_len);
  if (listen_fd < 0) return -1;
  double deadline = sn_now_s() + timeout_s;
  int *peer_fd = mallocCheck((size_t)world * sizeof(int));
  for (int r = 0; r < world; r++) peer_fd[r] = -1;
  int arrived = 0, status = 0;

  while (arrived < world - 1) {
    int ready = wait_fd(listen_fd, POLLIN, deadline);
    if (ready <= 0) {
      char missing[256] = "";
      size_t used = 0;
      for (int r = 1; r < world && used + 16 < sizeof(missing); r++)
        if (peer_fd[r] < 0) used += (size_t)snprintf(missing + used, sizeof(missing) - used, "%s%d", used ? ", " : "", r);
      set_err(err, err_len,
              "rendezvous: rank 0 waited %.0f s on %s:%d for the other ranks; %d of %d have not "
              "arrived (missing ranks: %s%s)",
              timeout_s, addr, port, world - 1 - arrived, world - 1, missing,
              used + 16 >= sizeof(missing) ? ", …" : "");
      status = -1;
      break;
    }
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) continue;  // the peer gave up between poll and accept; it retries
    unsigned char hello[RDV_HELLO_BYTES];
    double hello_deadline = SN_MIN(deadline, sn_now_s() + RDV_HELLO_WAIT_S);
    if (transfer_all(fd, hello, sizeof(hello), 0, hello_deadline) != 0 || get_u32(hello) != RDV_MAGIC) {
      close(fd);  // a stranger (or a port scanner) on our port: ignore it
      continue;
    }
    int peer_rank = (int)get_u32(hello + 8), peer_world = (int)get_u32(hello + 12);
    uint64_t peer_bytes = get_u64(hello + 16);
    const char *problem = NULL;
    if (get_u32(hello + 4) != RDV_VERSION) problem = "a different protocol version";
    else if (peer_world != world) problem = "a different world size";
    else if (peer_rank < 1 || peer_rank >= world) problem = "a rank outside the world";
    else if (peer_fd[peer_rank] >= 0) problem = "a rank that already arrived (two jobs on one MASTER_PORT?)";
    else if (peer_bytes != bytes) problem = "a different payload size";
    if (problem) {
      set_err(err, err_len,
              "rendezvous: rank 0 on port %d got rank %d (world %d, %llu bytes) with %s; expected "
              "world %d and %zu bytes",
              port, peer_rank, peer_world, (unsigned long long)peer_bytes, problem, world, bytes);
      close(fd);
      status = -1;
      break;
    }
    peer_fd[peer_rank] = fd;
    arrived++;
  }
  close(listen_fd);  // before replying: no peer of the next round can reach this listener

  for (int r = 1; r < world && status == 0; r++) {
    unsigned char reply[RDV_REPLY_BYTES];
    put_u32(reply, RDV_MAGIC);
    put_u32(reply + 4, RDV_STATUS_OK);
    put_u64(reply + 8, bytes);
    if (transfer_all(peer_fd[r], reply, sizeof(reply), 1, deadline) != 0 ||
        transfer_all(peer_fd[r], (void *)blob, bytes, 1, deadline) != 0) {
      set_err(err, err_len, "rendezvous: rank 0 could not send to rank %d: %s", r, strerror(errno));
      status = -1;
    }
  }
  for (int r = 1; r < world; r++) {
    if (kept && status == 0) kept[r] = peer_fd[r];
    else if (peer_fd[r] >= 0) close(peer_fd[r]);
  }
  free(peer_fd);
  return status;
}

// One connection attempt to any address of addr:port. Returns a connected socket or -1 (errno).
static int connect_once(const char *addr, int port, double deadline, char *why, size_t why_len) {
  char port_str[16];
  snprintf(port_str, sizeof(port_str), "%d", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *list = NULL;
  int gai = getaddrinfo(addr, port_str, &hints, &list);
  if (gai != 0) {
    snprintf(why, why_len, "cannot resolve '%s': %s", addr, gai_strerror(gai));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *a = list; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    int r = connect(fd, a->ai_addr, a->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS) {
      double attempt_deadline = SN_MIN(deadline, sn_now_s() + RDV_CONNECT_ATTEMPT_S);
      int soerr = ETIMEDOUT;
      socklen_t len = sizeof(soerr);
      if (wait_fd(fd, POLLOUT, attempt_deadline) == 1) getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
      errno = soerr;
      r = soerr ? -1 : 0;
    }
    if (r != 0) {
      snprintf(why, why_len, "%s", strerror(errno));
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(list);
  return fd;
}

// kept or NULL: where the connection to rank 0 stays open after a successful round, else closed.
static int peer_join(const char *addr, int port, int rank, int world, void *blob, size_t bytes,
                     double timeout_s, int *kept, char *err, size_t err_len) {
  double deadline = sn_now_s() + timeout_s;
  char why[256] = "no attempt";
  int fd = -1;
  while (fd < 0) {
    fd = connect_once(addr, port, deadline, why, sizeof(why));
    if (fd >= 0) break;
    if (sn_now_s() + RDV_RETRY_S >= deadline) {
      set_err(err, err_len,
              "rendezvous: rank %d could not reach rank 0 at %s:%d within %.0f s (last error: %s); "
              "check MASTER_ADDR/MASTER_PORT and that rank 0 started",
              rank, addr, port, timeout_s, why);
      return -1;
    }
    usleep((useconds_t)(RDV_RETRY_S * 1e6));
  }
  unsigned char hello[RDV_HELLO_BYTES], reply[RDV_REPLY_BYTES];
  put_u32(hello, RDV_MAGIC);
  put_u32(hello + 4, RDV_VERSION);
  put_u32(hello + 8, (uint32_t)rank);
  put_u32(hello + 12, (uint32_t)world);
  put_u64(hello + 16, bytes);
  int status = 0;
  if (transfer_all(fd, hello, sizeof(hello), 1, deadline) != 0 ||
      transfer_all(fd, reply, sizeof(reply), 0, deadline) != 0 || get_u32(reply) != RDV_MAGIC ||
      get_u32(reply + 4) != RDV_STATUS_OK || get_u64(reply + 8) != bytes ||
      transfer_all(fd, blob, bytes, 0, deadline) != 0) {
    if (errno == ETIMEDOUT)
      set_err(err, err_len,
              "rendezvous: rank %d reached rank 0 at %s:%d but got no reply within %.0f s: rank 0 "
              "is still waiting for other ranks (did one fail to start?)",
              rank, addr, port, timeout_s);
    else
      set_err(err, err_len,
              "rendezvous: rank %d lost the connection to rank 0 at %s:%d (%s): rank 0 rejected "
              "this rank or failed; see its log",
              rank, addr, port, strerror(errno));
    status = -1;
  }
  if (kept && status == 0) *kept = fd;
  else close(fd);
  return status;
}

static int rendezvous(const char *addr, int port, int rank, int world_size, void *blob, size_t bytes,
                      double timeout_s, int *kept, char *err, size_t err_len) {
  if (world_size <= 1) return 0;
  if (!addr || !*addr || port <= 0 || port > SN_MAX_PORT) {
    set_err(err, err_len,
            "rendezvous: world size %d needs MASTER_ADDR and MASTER_PORT (got '%s' and %d): the "
            "address and a free port of rank 0's node",
            world_size, addr ? addr : "", port);
    return -1;
  }
  if (rank == 0) return rank0_serve(port, addr, world_size, blob, bytes, timeout_s, kept, err, err_len);
  return peer_join(addr, port, rank, world_size, blob, bytes, timeout_s, kept, err, err_len);
}

int sn_rendezvous(const char *addr, int port, int rank, int world_size, void *blob, size_t bytes,
                  double timeout_s, char *err, size_t err_len) {
  return rendezvous(addr, port, rank, world_size, blob, bytes, timeout_s, NULL, err, err_len);
}

int sn_rendezvous_connect(const char *addr, int port, int rank, int world_size, double timeout_s,
                          int *fds, char *err, size_t err_len) {
  for (int r = 0; r < world_size; r++) fds[r] = -1;
  int *kept = rank == 0 ? fds : &fds[0];
  if (rendezvous(addr, port, rank, world_size, NULL, 0, timeout_s, kept, err, err_len) != 0) return -1;
  // Blocking from here on (the connecting side's socket was non-blocking for its timed connect);
  // no Nagle delay: collectives are request/response.
  for (int r = 0; r < world_size; r++) {
    if (fds[r] < 0) continue;
    int flags = fcntl(fds[r], F_GETFL);
    if (flags >= 0) fcntl(fds[r], F_SETFL, flags & ~O_NONBLOCK);
    int one = 1;
    setsockopt(fds[r], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  return 0;
}
