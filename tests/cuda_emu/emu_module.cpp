// The CUDA op layer (csrc/cuda/cuda_ops.h) on the host emulation: every
// schema of the extension, defined again as the library samplewt_emu, whose
// CPU kernels are the CUDA op wrappers, launchers, planners and kernels run on
// CPU tensors. Also exposes the launch planners.
#include <torch/extension.h>

#include "../op_schemas.h"
#include "cuda_ops.h"

namespace {

using samplewt::cuda::RowArgs;
using samplewt::cuda::ElemArgs;

int g_num_sms = 2;

struct EmuBackend {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  static int guard(const at::Tensor&) { return 0; }
  static int num_sms(const at::Tensor&) { return g_num_sms; }
  static cudaStream_t stream(const at::Tensor&) { return nullptr; }
  static void check(cudaError_t err) {
    TORCH_CHECK(err == cudaSuccess, "emulated CUDA launch failed with error ", int(err));
  }
};

using EmuOps = samplewt::OpWrappers<samplewt::cuda::Device<EmuBackend>>;

// The fields that row and element-wise plans share.
template <class Plan>
py::dict plan_dict(const Plan& p) {
  py::dict d;
  d["run"] = p.run;
  d["vw"] = p.vw;
  d["group"] = p.group;
  d["grid"] = p.grid;
  d["nch"] = p.nch;
  d["chunk"] = p.chunk;
  d["n_denom"] = p.n_denom;
  d["n_loss_parts"] = p.n_loss_parts;
  d["bytes"] = p.bytes;
  return d;
}

// The launch plan of a row loss over rows x cols with the given alignment.
py::dict plan_row(int64_t kind, int64_t rows, int64_t cols, int64_t elem_size, bool aligned,
                  int64_t reduction, bool sample_weight, int num_sms) {
  namespace d = samplewt::cuda::detail;
  RowArgs a;
  a.kind = static_cast<samplewt::RowLoss>(kind);
  a.rows = rows;
  a.cols = cols;
  a.reduction = static_cast<int>(reduction);
  a.input = reinterpret_cast<const void*>(aligned ? 256 : 258);
  a.ld_input = cols;
  a.sample_weight = sample_weight ? reinterpret_cast<const void*>(512) : nullptr;
  a.num_sms = num_sms;
  const d::RowPlan p = d::plan_row_loss(a, static_cast<size_t>(elem_size));
  py::dict out = plan_dict(p);
  out["regime"] = p.regime == d::kRowSmall ? "small" : p.regime == d::kRowBlock ? "block" : "split";
  out["block"] = p.block;
  out["offsets"] = std::vector<size_t>{p.off_denom, p.off_loss, p.off_part, p.off_xy, p.off_stat};
  return out;
}

py::dict plan_elem(int64_t samples, int64_t per_sample, int64_t elem_size, bool aligned,
                   int64_t reduction, bool stats, int num_sms) {
  namespace d = samplewt::cuda::detail;
  ElemArgs a;
  a.samples = samples;
  a.per_sample = per_sample;
  a.reduction = static_cast<int>(reduction);
  a.input = reinterpret_cast<const void*>(aligned ? 256 : 258);
  a.target = reinterpret_cast<const void*>(256);
  a.stats = stats ? reinterpret_cast<float*>(512) : nullptr;
  a.num_sms = num_sms;
  const d::ElemPlan p = d::plan_elem_loss(a, static_cast<size_t>(elem_size));
  py::dict out = plan_dict(p);
  out["regime"] = p.regime == d::kElemRows ? "rows" : "chunk";
  return out;
}

// The backward's scaling on CPU tensors (cuda_ops.h's scale_grad_): false
// where it declined the layout.
bool scale_grad(at::Tensor grad, const at::Tensor& grad_loss, bool rows) {
  return samplewt::cuda::scale_grad_<EmuBackend>(grad, grad_loss, rows);
}

// The scaling's plan (vector width, grid) for numel elements, 16-byte
// aligned or not, with one scale per row of `cols` or one in all.
std::tuple<int, int64_t> plan_scale(int64_t numel, int64_t cols, bool per_row, int64_t elem_size,
                                    bool aligned, int num_sms) {
  samplewt::cuda::ScaleArgs a;
  a.grad = reinterpret_cast<void*>(aligned ? 256 : 258);
  a.numel = numel;
  a.cols = cols;
  a.per_row = per_row;
  a.num_sms = num_sms;
  const auto p = samplewt::cuda::detail::plan_scale_grad(a, static_cast<size_t>(elem_size));
  return {p.vw, p.grid};
}

// Kernels that check the emulator itself: a block sum with and without the
// barrier between the shared-memory writes and reads, and syncs that not
// every thread reaches.
__global__ void selftest_block_sum(const float* in, float* out, int barrier) {
  __shared__ float sh[32];
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  if (barrier) __syncthreads();
  float t = 0.f;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) t += sh[w];
  __syncthreads();  // the next block reuses sh
  if (threadIdx.x == 0) out[blockIdx.x] = t;
}

__global__ void selftest_divergent(int which) {
  if (which == 0 && threadIdx.x < 32) __syncthreads();
  if (which == 1 && threadIdx.x % 32 < 16) __syncwarp();
  if (which == 2) {
    const unsigned b = __ballot_sync(0xffffffffu, threadIdx.x % 2);
    if (b != 0x55555555u * 2u) __syncthreads();  // never: the vote is right
  }
}

at::Tensor selftest_sum(const at::Tensor& in, int64_t block, bool barrier) {
  TORCH_CHECK(in.is_contiguous() && in.scalar_type() == at::kFloat && in.numel() % block == 0);
  at::Tensor out = at::zeros({in.numel() / block}, in.options());
  SWT_LAUNCH(out.numel(), block, nullptr, selftest_block_sum)(in.data_ptr<float>(),
                                                              out.data_ptr<float>(), barrier);
  EmuBackend::check(cudaGetLastError());
  return out;
}

void selftest_sync(int which) {
  SWT_LAUNCH(1, 128, nullptr, selftest_divergent)(which);
  EmuBackend::check(cudaGetLastError());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_num_sms", [](int n) { g_num_sms = n; });
  m.def("plan_row", &plan_row);
  m.def("selftest_sum", &selftest_sum);
  m.def("selftest_sync", &selftest_sync);
  m.def("plan_elem", &plan_elem);
  m.def("scale_grad", &scale_grad);
  m.def("plan_scale", &plan_scale);
}

TORCH_LIBRARY(samplewt_emu, m) { samplewt::define_ops(m); }

// Registered as the CPU kernels, the way ops_cuda.cu registers them for CUDA.
TORCH_LIBRARY_IMPL(samplewt_emu, CPU, m) { EmuOps::register_ops(m); }
