// The CUDA backend's op table: bf16 storage, every op from the kernel files.
#include <mutex>

#include "common.cuh"

static sn_ops make_cuda_ops(void) {
  sn_ops o;
  memset(&o, 0, sizeof o);
  o.name = "cuda";
  o.storage = SN_DTYPE_BF16;
  o.storage_size = sizeof(bf16);
  o.alloc = cuda_alloc;
  o.free = cuda_free;
  o.memset_zero = cuda_memset_zero;
  o.copy = cuda_copy;
  o.upload = cuda_upload;
  o.download = cuda_download;
  o.host_alloc = cuda_host_alloc;
  o.host_free = cuda_host_free;
  o.upload_async = cuda_upload_async;
  o.download_async = cuda_download_async;
  o.upload_f32 = cuda_upload_f32;
  o.download_f32 = cuda_download_f32;
  o.storage_to_f32 = cuda_storage_to_f32;
  o.f32_to_storage = cuda_f32_to_storage;
  o.synchronize = cuda_synchronize;
  o.memory_stats = cuda_memory_stats;
  o.memory_reset_peak = cuda_memory_reset_peak;
  o.device_memory = cuda_device_memory;
  o.workspace_bytes = cuda_workspace_bytes;
  o.fill_normal = cuda_fill_normal;
  o.fill = cuda_fill;
  o.dropout = cuda_dropout;
  o.add = cuda_add;
  o.add_f32 = cuda_add_f32;
  o.scale_f32 = cuda_scale_f32;
  o.axpy_2d = cuda_axpy_2d;
  o.embedding_forward = cuda_embedding_forward;
  o.embedding_backward = cuda_embedding_backward;
  o.rmsnorm_forward = cuda_rmsnorm_forward;
  o.rmsnorm_backward = cuda_rmsnorm_backward;
  o.add_rmsnorm_forward = cuda_add_rmsnorm_forward;
  o.layernorm_forward = cuda_layernorm_forward;
  o.layernorm_backward = cuda_layernorm_backward;
  o.add_layernorm_forward = cuda_add_layernorm_forward;
  o.matmul = cuda_matmul;
  o.matmul_strided = cuda_matmul_strided;
  o.bias_backward = cuda_bias_backward;
  o.linear_small = cuda_linear_small;
  o.rope = cuda_rope;
  o.attention_forward = cuda_attention_forward;
  o.attention_rope_forward = cuda_attention_rope_forward;
  o.decoder_fused_supports = cuda_decoder_fused_supports;
  o.decoder_fused_forward = cuda_decoder_fused_forward;
  o.attention_backward = cuda_attention_backward;
  o.swiglu_forward = cuda_swiglu_forward;
  o.swiglu_backward = cuda_swiglu_backward;
  o.gelu_forward = cuda_gelu_forward;
  o.gelu_backward = cuda_gelu_backward;
  o.pool_forward = cuda_pool_forward;
  o.pool_backward = cuda_pool_backward;
  o.l2norm_forward = cuda_l2norm_forward;
  o.l2norm_backward = cuda_l2norm_backward;
  o.contrastive_loss = cuda_contrastive_loss;
  o.distill_loss = cuda_distill_loss;
  o.kl_distill_loss = cuda_kl_distill_loss;
  o.lm_head_xent = cuda_lm_head_xent;
  o.scores_f32 = cuda_scores_f32;
  o.topk_merge = cuda_topk_merge;
  o.sum_squares = cuda_sum_squares;
  o.adamw = cuda_adamw;
  o.graph_begin = cuda_graph_begin;
  o.graph_end = cuda_graph_end;
  o.graph_launch = cuda_graph_launch;
  o.graph_free = cuda_graph_free;
  o.scratch_epoch = cuda_scratch_epoch;
  o.context_new = cuda_context_new;
  o.context_bind = cuda_context_bind;
  o.context_free = cuda_context_free;
  return o;
}

// Free and total device memory, or zeros without a device (planning on a machine without one).
static void device_memory_if_any(size_t *free_bytes, size_t *total_bytes) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the failed query's sticky error
    *free_bytes = *total_bytes = 0;
    return;
  }
  cuda_device_memory(free_bytes, total_bytes);
}

static sn_ops make_plan_ops(void) {
  sn_ops o = make_cuda_ops();
  o.device_memory = device_memory_if_any;
  return o;
}

extern "C" const sn_ops *sn_ops_cuda_for_plan(void) {
  static const sn_ops table = make_plan_ops();
  return &table;
}

extern "C" const sn_ops *sn_ops_cuda(const char **why_not) {
  static std::mutex lock;  // serving threads may open their first handles at once
  static sn_ops table;
  static bool ready = false;
  std::lock_guard<std::mutex> hold(lock);
  if (ready) return &table;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    if (why_not) *why_not = err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device found";
    cudaGetLastError();  // clear the sticky error of the failed query
    return NULL;
  }
  table = make_cuda_ops();
  ready = true;
  return &table;
}
