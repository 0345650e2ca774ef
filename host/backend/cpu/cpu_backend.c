// The CPU reference backend's op table: fp32 storage in host memory, OpenMP over rows and tiles.
#include <stdlib.h>

#include "common.h"
#include "cpu_ops.h"

// Host memory in both directions: raw uploads and downloads are copies.
static void cpu_upload(void *dst, const void *host_src, size_t bytes) {
  sn_cpu_copy(dst, host_src, bytes);
}
static void cpu_download(void *host_dst, const void *src, size_t bytes) {
  sn_cpu_copy(host_dst, src, bytes);
}

// No device: "page-locked" host memory is heap memory.
static void *cpu_host_alloc(size_t bytes) { return mallocCheck(bytes ? bytes : 1); }
static void cpu_host_free(void *p) { free(p); }

static const sn_ops cpu_ops = {
    .name = "cpu",
    .storage = SN_DTYPE_F32,
    .storage_size = sizeof(float),

    .alloc = sn_cpu_alloc,
    .free = sn_cpu_free,
    .memset_zero = sn_cpu_memset_zero,
    .copy = sn_cpu_copy,
    .upload = cpu_upload,
    .download = cpu_download,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .upload_async = cpu_upload,
    .download_async = cpu_download,
    .upload_f32 = sn_cpu_upload_f32,
    .download_f32 = sn_cpu_download_f32,
    .storage_to_f32 = sn_cpu_storage_to_f32,
    .f32_to_storage = sn_cpu_f32_to_storage,
    .synchronize = sn_cpu_synchronize,
    .memory_stats = sn_cpu_memory_stats,
    .memory_reset_peak = sn_cpu_memory_reset_peak,
    .device_memory = sn_cpu_device_memory,
    .workspace_bytes = sn_cpu_workspace_bytes,

    .fill_normal = sn_cpu_fill_normal,
    .fill = sn_cpu_fill,
    .dropout = sn_cpu_dropout,

    .add = sn_cpu_add,
    .add_f32 = sn_cpu_add_f32,
    .scale_f32 = sn_cpu_scale_f32,
    .axpy_2d = sn_cpu_axpy_2d,

    .embedding_forward = sn_cpu_embedding_forward,
    .embedding_backward = sn_cpu_embedding_backward,

    .rmsnorm_forward = sn_cpu_rmsnorm_forward,
    .rmsnorm_backward = sn_cpu_rmsnorm_backward,
    .add_rmsnorm_forward = sn_cpu_add_rmsnorm_forward,
    .layernorm_forward = sn_cpu_layernorm_forward,
    .layernorm_backward = sn_cpu_layernorm_backward,
    .add_layernorm_forward = sn_cpu_add_layernorm_forward,

    .matmul = sn_cpu_matmul,
    .matmul_strided = sn_cpu_matmul_strided,
    .bias_backward = sn_cpu_bias_backward,
    .linear_small = sn_cpu_linear_small,

    .rope = sn_cpu_rope,
    .attention_forward = sn_cpu_attention_forward,
    .attention_rope_forward = sn_cpu_attention_rope_forward,
    .decoder_fused_supports = sn_cpu_decoder_fused_supports,
    .decoder_fused_forward = sn_cpu_decoder_fused_forward,
    .attention_backward = sn_cpu_attention_backward,

    .swiglu_forward = sn_cpu_swiglu_forward,
    .swiglu_backward = sn_cpu_swiglu_backward,
    .gelu_forward = sn_cpu_gelu_forward,
    .gelu_backward = sn_cpu_gelu_backward,

    .pool_forward = sn_cpu_pool_forward,
    .pool_backward = sn_cpu_pool_backward,
    .l2norm_forward = sn_cpu_l2norm_forward,
    .l2norm_backward = sn_cpu_l2norm_backward,

    .contrastive_loss = sn_cpu_contrastive_loss,
    .kl_distill_loss = sn_cpu_kl_distill_loss,
    .distill_loss = sn_cpu_distill_loss,
    .lm_head_xent = sn_cpu_lm_head_xent,

    .scores_f32 = sn_cpu_scores_f32,
    .topk_merge = sn_cpu_topk_merge,

    .sum_squares = sn_cpu_sum_squares,
    .adamw = sn_cpu_adamw,
};

const sn_ops *sn_ops_cpu(void) { return &cpu_ops; }
