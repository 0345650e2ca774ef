// CPU backend memory: backend memory is host memory and the storage dtype is fp32, so uploads,
// downloads and dtype conversions are plain copies.
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "cpu_ops.h"

// Cache-line (and AVX-512 vector) alignment for every buffer.
#define SN_CPU_ALIGN 64

static void *aligned_alloc_or_die(size_t bytes) {
  void *p = NULL;
  size_t rounded = SN_CEIL_DIV(bytes ? bytes : 1, SN_CPU_ALIGN) * SN_CPU_ALIGN;
  if (posix_memalign(&p, SN_CPU_ALIGN, rounded) != 0 || !p)
    sn_fatal("cpu alloc of %zu bytes failed: out of memory", bytes);
  return p;
}

// SN_CPU_POISON_ALLOC=1 fills every new buffer with NaN bytes, so a read of memory nobody wrote
// (a gradient buffer not zeroed before an accumulating op) shows up as NaN instead of as the
// zeros fresh pages happen to hold.
#define POISON_BYTE 0xFF  // 0xFFFFFFFF is a NaN

static sn_alloc_tracker cpu_tracker = SN_ALLOC_TRACKER_INIT;

void *sn_cpu_alloc(size_t bytes) {
  static int poison = -1;  // benign race: every thread computes the same value
  if (poison < 0) poison = getenv("SN_CPU_POISON_ALLOC") && atoi(getenv("SN_CPU_POISON_ALLOC"));
  void *p = aligned_alloc_or_die(bytes);
  if (poison) memset(p, POISON_BYTE, bytes);
  sn_alloc_tracker_add(&cpu_tracker, p, bytes);
  return p;
}

void sn_cpu_free(void *p) {
  sn_alloc_tracker_remove(&cpu_tracker, p);
  free(p);
}

sn_alloc_stats sn_cpu_memory_stats(void) { return sn_alloc_tracker_stats(&cpu_tracker); }
void sn_cpu_memory_reset_peak(void) { sn_alloc_tracker_reset_peak(&cpu_tracker); }

// MemAvailable and MemTotal of /proc/meminfo (0 when it cannot be read: the plan then has nothing
// to compare with and says so).
void sn_cpu_device_memory(size_t *free_bytes, size_t *total_bytes) {
  *free_bytes = *total_bytes = 0;
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) return;
  char line[256];
  unsigned long long kib;
  while (fgets(line, sizeof line, f)) {
    if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) *free_bytes = (size_t)kib * 1024;
    if (sscanf(line, "MemTotal: %llu kB", &kib) == 1) *total_bytes = (size_t)kib * 1024;
  }
  fclose(f);
}

// The CPU ops' scratch is transient malloc'd memory outside the tracker (see alloc_stats.h).
size_t sn_cpu_workspace_bytes(const sn_workspace_shape *shape) {
  (void)shape;
  return 0;
}

void sn_cpu_memset_zero(void *p, size_t bytes) {
  if (bytes) memset(p, 0, bytes);
}

// memmove rather than memcpy: callers may pass the same buffer (e.g. master == params).
void sn_cpu_copy(void *dst, const void *src, size_t bytes) {
  if (bytes && dst != src) memmove(dst, src, bytes);
}

void sn_cpu_upload_f32(void *dst, const float *host_src, size_t n) {
  sn_cpu_copy(dst, host_src, n * sizeof(float));
}

void sn_cpu_download_f32(float *host_dst, const void *src, size_t n) {
  sn_cpu_copy(host_dst, src, n * sizeof(float));
}

void sn_cpu_storage_to_f32(float *dst, const void *src, size_t n) {
  sn_cpu_copy(dst, src, n * sizeof(float));
}

void sn_cpu_f32_to_storage(void *dst, const float *src, size_t n) {
  sn_cpu_copy(dst, src, n * sizeof(float));
}

void sn_cpu_synchronize(void) {}  // every CPU op has finished when it returns

// ---- per-thread scratch -------------------------------------------------------------------------
typedef struct {
  void *ptr;
  size_t capacity;
} scratch_buffer;

// A thread's slots, made at its first request and freed when it exits (the key's destructor): a
// server's worker threads come and go, each with its own scratch.
static _Thread_local scratch_buffer *thread_scratch;
static pthread_key_t scratch_key;
static pthread_once_t scratch_key_once = PTHREAD_ONCE_INIT;

static void free_thread_scratch(void *slots) {
  scratch_buffer *s = slots;
  for (int i = 0; i < SN_CPU_SCRATCH_SLOTS; i++) free(s[i].ptr);
  free(s);
}
static void make_scratch_key(void) {
  if (pthread_key_create(&scratch_key, free_thread_scratch) != 0) sn_fatal("pthread_key_create failed");
}

void *sn_cpu_scratch(int slot, size_t bytes) {
  if (slot < 0 || slot >= SN_CPU_SCRATCH_SLOTS) sn_fatal("bad cpu scratch slot %d", slot);
  if (!thread_scratch) {
    pthread_once(&scratch_key_once, make_scratch_key);
    thread_scratch = callocCheck(SN_CPU_SCRATCH_SLOTS, sizeof *thread_scratch);
    pthread_setspecific(scratch_key, thread_scratch);
  }
  scratch_buffer *s = &thread_scratch[slot];
  if (bytes > s->capacity) {
    // Grow by half again so a slowly growing sequence of requests does not reallocate each time.
    size_t capacity = SN_MAX(bytes, s->capacity + s->capacity / 2);
    free(s->ptr);
    s->ptr = aligned_alloc_or_die(capacity);
    s->capacity = capacity;
  }
  return s->ptr;
}
