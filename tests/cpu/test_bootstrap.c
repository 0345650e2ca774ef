// dist/bootstrap.c: launcher detection from the environment (precedence, Slurm's task layout,
// errors naming the variable) and the TCP rendezvous between fork()ed processes on 127.0.0.1.
#define _GNU_SOURCE
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap.h"
#include "common.h"
#include "test_util.h"

#define RDV_WORLD 4
#define RDV_BLOB_BYTES 100
#define RDV_TIMEOUT_S 20.0
#define RDV_BARRIER_ROUNDS 3
#define SHORT_TIMEOUT_S 0.5
#define SHORT_TIMEOUT_BOUND_S 5.0  // a 0.5 s timeout must fail well before this
#define LATE_RANK0_US 300000       // rank 0 starts late: the others must retry

static const char *const LAUNCHER_VARS[] = {
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_TASKS_PER_NODE",
    "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE",
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"};

static void clear_env(void) {
  for (size_t i = 0; i < SN_ARRAY_LEN(LAUNCHER_VARS); i++) unsetenv(LAUNCHER_VARS[i]);
}

// Sets NULL-terminated name/value pairs after clearing every launcher variable.
static void set_env(const char *const *pairs) {
  clear_env();
  for (; pairs[0]; pairs += 2) setenv(pairs[0], pairs[1], 1);
}

static sn_dist_env detect_ok(const char *case_name) {
  sn_dist_env env;
  char err[512] = "";
  int rc = sn_dist_detect_checked(&env, err, sizeof(err));
  CHECK(rc == 0, "%s: unexpected error: %s", case_name, err);
  return env;
}

static void expect_env(const char *case_name, const char *launcher, int rank, int world, int local_rank, int local_size) {
  sn_dist_env e = detect_ok(case_name);
  CHECK(strcmp(e.launcher, launcher) == 0 && e.rank == rank && e.world_size == world &&
            e.local_rank == local_rank && e.local_size == local_size,
        "%s: got %s rank %d/%d local %d/%d, expected %s rank %d/%d local %d/%d", case_name, e.launcher,
        e.rank, e.world_size, e.local_rank, e.local_size, launcher, rank, world, local_rank, local_size);
}

// The detection must fail with a message containing `needle` (the variable's name).
static void expect_error(const char *case_name, const char *needle) {
  sn_dist_env env;
  char err[512] = "";
  int rc = sn_dist_detect_checked(&env, err, sizeof(err));
  CHECK(rc != 0, "%s: accepted an invalid environment", case_name);
  CHECK(strstr(err, needle) != NULL, "%s: error '%s' does not name '%s'", case_name, err, needle);
}

static void test_detect(void) {
  clear_env();
  expect_env("no launcher", "single", 0, 1, 0, 1);

  set_env((const char *const[]){"RANK", "2", "WORLD_SIZE", "4", "LOCAL_RANK", "0", "LOCAL_WORLD_SIZE", "2",
                                "MASTER_ADDR", "node17", "MASTER_PORT", "29500", NULL});
  expect_env("plain env", "env", 2, 4, 0, 2);
  sn_dist_env e = detect_ok("plain env address");
  CHECK(strcmp(e.master_addr, "node17") == 0 && e.master_port == 29500, "MASTER_ADDR/PORT: got %s:%d",
        e.master_addr, e.master_port);

  set_env((const char *const[]){"RANK", "3", "WORLD_SIZE", "4", NULL});
  expect_env("plain env without LOCAL_RANK (one node)", "env", 3, 4, 3, 4);

  set_env((const char *const[]){"OMPI_COMM_WORLD_RANK", "1", "OMPI_COMM_WORLD_SIZE", "2",
                                "OMPI_COMM_WORLD_LOCAL_RANK", "1", "OMPI_COMM_WORLD_LOCAL_SIZE", "2",
                                "SLURM_PROCID", "0", "SLURM_NTASKS", "1", "RANK", "0", "WORLD_SIZE", "1", NULL});
  expect_env("mpirun inside Slurm", "mpirun", 1, 2, 1, 2);

  set_env((const char *const[]){"PMI_RANK", "5", "PMI_SIZE", "8", "MPI_LOCALRANKID", "1", "MPI_LOCALNRANKS", "4",
                                "SLURM_PROCID", "0", "SLURM_NTASKS", "1", NULL});
  expect_env("PMI before Slurm", "pmi", 5, 8, 1, 4);

  set_env((const char *const[]){"SLURM_PROCID", "5", "SLURM_NTASKS", "12", "SLURM_LOCALID", "1", "SLURM_NODEID",
                                "1", "SLURM_TASKS_PER_NODE", "4(x2),4", "RANK", "0", "WORLD_SIZE", "1", NULL});
  expect_env("srun", "slurm", 5, 12, 1, 4);
  setenv("SLURM_NODEID", "2", 1);
  setenv("SLURM_TASKS_PER_NODE", "4(x2),2", 1);
  setenv("SLURM_PROCID", "9", 1);
  setenv("SLURM_NTASKS", "10", 1);
  expect_env("srun, last node", "slurm", 9, 10, 1, 2);
  setenv("SLURM_STEP_NUM_TASKS", "16", 1);
  setenv("SLURM_STEP_TASKS_PER_NODE", "8(x2)", 1);
  setenv("SLURM_NODEID", "1", 1);
  expect_env("srun step inside a bigger job", "slurm", 9, 16, 1, 8);

  // Invalid values: the message names the variable.
  set_env((const char *const[]){"RANK", "abc", "WORLD_SIZE", "4", NULL});
  expect_error("RANK not an integer", "RANK='abc'");
  set_env((const char *const[]){"RANK", "4", "WORLD_SIZE", "4", NULL});
  expect_error("RANK >= WORLD_SIZE", "WORLD_SIZE=4");
  set_env((const char *const[]){"RANK", "-1", "WORLD_SIZE", "4", NULL});
  expect_error("negative RANK", "RANK='-1'");
  set_env((const char *const[]){"RANK", "1", "WORLD_SIZE", "0", NULL});
  expect_error("WORLD_SIZE 0", "WORLD_SIZE='0'");
  set_env((const char *const[]){"OMPI_COMM_WORLD_RANK", "1", NULL});
  expect_error("size missing", "OMPI_COMM_WORLD_SIZE");
  set_env((const char *const[]){"SLURM_PROCID", "1", "SLURM_NTASKS", "2x", NULL});
  expect_error("SLURM_NTASKS junk", "SLURM_NTASKS='2x'");
  set_env((const char *const[]){"SLURM_PROCID", "1", "SLURM_NTASKS", "4", "SLURM_NODEID", "3",
                                "SLURM_TASKS_PER_NODE", "2(x2)", NULL});
  expect_error("node past the layout", "SLURM_TASKS_PER_NODE");
  set_env((const char *const[]){"RANK", "0", "WORLD_SIZE", "2", "LOCAL_RANK", "2", "LOCAL_WORLD_SIZE", "2", NULL});
  expect_error("LOCAL_RANK >= local size", "LOCAL_RANK=2");
  set_env((const char *const[]){"MASTER_PORT", "70000", NULL});
  expect_error("port out of range", "MASTER_PORT=70000");
  set_env((const char *const[]){"MASTER_PORT", "http", NULL});
  expect_error("port not a number", "MASTER_PORT='http'");
  clear_env();
}

// A port nobody listens on right now (the kernel picks it; closed again at once).
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = 0};
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
    sn_fatal("cannot find a free TCP port");
  close(fd);
  return ntohs(a.sin_port);
}

static unsigned char blob_byte(size_t i) { return (unsigned char)(i * 31 + 7); }

// One rank of the job: returns the process exit status (0 = all good).
static int rendezvous_rank(int rank, int port) {
  unsigned char blob[RDV_BLOB_BYTES];
  char err[512];
  memset(blob, 0, sizeof(blob));
  if (rank == 0) {
    usleep(LATE_RANK0_US);
    for (size_t i = 0; i < sizeof(blob); i++) blob[i] = blob_byte(i);
  }
  if (sn_rendezvous("127.0.0.1", port, rank, RDV_WORLD, blob, sizeof(blob), RDV_TIMEOUT_S, err, sizeof(err)) != 0) {
    fprintf(stderr, "rank %d: %s\n", rank, err);
    return 1;
  }
  for (size_t i = 0; i < sizeof(blob); i++)
    if (blob[i] != blob_byte(i)) {
      fprintf(stderr, "rank %d: blob byte %zu is %d, expected %d\n", rank, i, blob[i], blob_byte(i));
      return 1;
    }
  for (int round = 0; round < RDV_BARRIER_ROUNDS; round++)  // reuse of the port as a barrier
    if (sn_rendezvous("127.0.0.1", port, rank, RDV_WORLD, NULL, 0, RDV_TIMEOUT_S, err, sizeof(err)) != 0) {
      fprintf(stderr, "rank %d: barrier %d: %s\n", rank, round, err);
      return 1;
    }
  return 0;
}

static void test_rendezvous(void) {
  int port = free_port();
  pid_t pids[RDV_WORLD];
  for (int r = 0; r < RDV_WORLD; r++) {
    pids[r] = fork();
    if (pids[r] < 0) sn_fatal("fork failed");
    if (pids[r] == 0) _exit(rendezvous_rank(r, port));
  }
  for (int r = 0; r < RDV_WORLD; r++) {
    int status = 0;
    waitpid(pids[r], &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "rendezvous rank %d ended with status %d", r, status);
  }
}

// Alone, each side must give up after the timeout with a message naming what it waited for.
static void test_rendezvous_timeouts(void) {
  int port = free_port();
  char err[512] = "", want[64];
  double start = sn_now_s();
  int rc = sn_rendezvous("127.0.0.1", port, 1, 2, NULL, 0, SHORT_TIMEOUT_S, err, sizeof(err));
  double took = sn_now_s() - start;
  snprintf(want, sizeof(want), "127.0.0.1:%d", port);
  CHECK(rc != 0 && took < SHORT_TIMEOUT_BOUND_S, "peer without rank 0: rc %d after %.1f s", rc, took);
  CHECK(strstr(err, want) && strstr(err, "could not reach rank 0"), "peer timeout message: '%s'", err);

  start = sn_now_s();
  rc = sn_rendezvous("127.0.0.1", port, 0, 3, NULL, 0, SHORT_TIMEOUT_S, err, sizeof(err));
  took = sn_now_s() - start;
  CHECK(rc != 0 && took < SHORT_TIMEOUT_BOUND_S, "rank 0 without peers: rc %d after %.1f s", rc, took);
  CHECK(strstr(err, "missing ranks: 1, 2") != NULL, "rank 0 timeout message: '%s'", err);

  rc = sn_rendezvous("", 0, 1, 2, NULL, 0, SHORT_TIMEOUT_S, err, sizeof(err));
  CHECK(rc != 0 && strstr(err, "MASTER_ADDR"), "missing address: '%s'", err);
}

// A peer that expects a different payload size is refused by rank 0, and both sides say why.
static void test_rendezvous_mismatch(void) {
  int port = free_port();
  pid_t pid = fork();
  if (pid == 0) {
    char blob[16], err[512];
    int rc = sn_rendezvous("127.0.0.1", port, 1, 2, blob, sizeof(blob), RDV_TIMEOUT_S, err, sizeof(err));
    _exit(rc != 0 ? 0 : 1);  // the peer must fail too
  }
  char blob[8] = {0}, err[512] = "";
  int rc = sn_rendezvous("127.0.0.1", port, 0, 2, blob, sizeof(blob), RDV_TIMEOUT_S, err, sizeof(err));
  CHECK(rc != 0 && strstr(err, "payload size"), "size mismatch on rank 0: rc %d '%s'", rc, err);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "size mismatch: the peer did not fail");
}

int main(void) {
  test_detect();
  test_rendezvous();
  test_rendezvous_timeouts();
  test_rendezvous_mismatch();
  return sn_test_finish("test_bootstrap");
}
