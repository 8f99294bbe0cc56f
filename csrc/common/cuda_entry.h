// The CUDA entry points of every op family, as one table. kernkit._C calls them through
// cuda_entry(device): the nvcc-compiled kernels for CUDA devices, or the same sources compiled for
// the CPU by simt (kernkit._simt hands its table to _C) for device kSimtDevice. A new CUDA entry
// point is one line in KK_CUDA_ENTRY_POINTS.
#pragma once
#include <cstdint>

#include "attention/attention.h"
#include "linear_attn/linear_attn.h"
#include "lowbit/lowbit.h"
#include "norm/rms_norm.h"
#include "scan/scan.h"

#define KK_CUDA_ENTRY_POINTS(X)                  \
  X(rms_norm_fwd_cuda, RmsNormFwdParams)         \
  X(rms_norm_bwd_cuda, RmsNormBwdParams)         \
  X(linear_scan_cuda, LinearScanParams)          \
  X(causal_conv1d_fwd_cuda, CausalConvParams)    \
  X(causal_conv1d_bwd_cuda, CausalConvBwdParams)  \
  X(causal_conv1d_update_cuda, CausalConvParams) \
  X(ternary_linear_cuda, LowbitParams)           \
  X(binary_linear_cuda, LowbitParams)            \
  X(ternary_quantize_cuda, TernaryQuantParams)   \
  X(ternary_dequant_cuda, TernaryDequantParams)  \
  X(act_quant_dequant_cuda, ActDequantParams)    \
  X(selective_scan_fwd_cuda, SelectiveScanParams) \
  X(selective_scan_bwd_cuda, SelectiveScanBwdParams) \
  X(linear_attn_step_cuda, LaStepParams)        \
  X(linear_attn_fwd_cuda, LaParams)             \
  X(linear_attn_bwd_cuda, LaBwdParams)          \
  X(attention_fwd_cuda, AttnFwdParams)          \
  X(attention_bwd_cuda, AttnBwdParams)

namespace kernkit {

constexpr int kCpuDevice = -1;
constexpr int kSimtDevice = -2;  // CPU tensors, CUDA kernels run by simt

struct CudaEntryPoints {
#define KK_ENTRY_FIELD(name, Params) void (*name)(const Params&, int device, intptr_t stream);
  KK_CUDA_ENTRY_POINTS(KK_ENTRY_FIELD)
#undef KK_ENTRY_FIELD
};

// The capsule name _simt's table travels under (checked by _C).
constexpr const char* kSimtCapsuleName = "kernkit._simt.entry_points";

}  // namespace kernkit
